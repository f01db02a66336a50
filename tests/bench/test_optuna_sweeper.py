"""Hydra's Optuna sweeper drives zoo-train's learning rate (the ``[optuna]`` extra; skipped without it)."""

import subprocess
import sys

import pytest

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_optuna_searches_the_learning_rate(tmp_path):
    command = [
        sys.executable, "-m", "zoo.train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=minimize",
        "optim.lr=tag(log, interval(1e-4, 1e-2))", "experiment=smoke", "trainer.max_steps=1", "logger=none", f"hydra.sweep.dir={tmp_path}/sweep",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "optim.lr" in best and "best_value" in best
