"""DistributedDataParallel: two CPU processes under torchrun (Gloo) train as one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed

from zoo.train import run

STEPS = ["trainer.max_steps=3", "trainer.batch_size=8", "model.dropout=0.0"]


def _losses(run_dir):
    return [json.loads(line)["train/loss"] for line in (run_dir / "log.jsonl").read_text().splitlines() if "train/loss" in line]


@pytest.mark.slow  # three processes start; ~20 s on 2 idle cores
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs torch.distributed with Gloo")
def test_two_cpu_processes_match_one(tmp_path, tiny):
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "zoo.train"]
    done = subprocess.run([*cmd, *tiny, *STEPS, f"hydra.run.dir={two}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    one = run([*tiny, *STEPS], out_dir=tmp_path / "one")
    assert _losses(two) == pytest.approx(one.history, rel=1e-4)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=1e-4)
    assert metrics["tokens_seen"] == one.metrics["tokens_seen"]


def test_per_rank_micro_batch_must_divide():
    from zoo.errors import ConfigError
    from zoo.train.settings import Settings

    assert Settings(batch_size=8, grad_accum=2).micro_batch(2) == 2
    with pytest.raises(ConfigError, match="^trainer.batch_size=6"):
        Settings(batch_size=6, grad_accum=2).micro_batch(2)
