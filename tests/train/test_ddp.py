"""Data parallelism: two CPU processes under torchrun (Gloo), with DDP or FSDP2, train as one process with the
same global batch; a checkpoint written at one world size resumes at the other."""

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


def _torchrun(args, *, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "zoo.train", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # two torchrun launches of two processes each, and three short runs
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs torch.distributed with Gloo")
def test_fsdp_trains_as_one_process_and_its_checkpoints_move_between_world_sizes(tmp_path, tiny):
    fsdp = ["trainer.strategy=fsdp", "trainer.threads=1"]
    # one process, five steps: the reference
    whole = run([*tiny, *STEPS[1:], "trainer.max_steps=5", "trainer.threads=1"], out_dir=tmp_path / "whole")

    # FSDP at two ranks for three steps, then resumed at one rank for the last two
    two = tmp_path / "two"
    _torchrun([*tiny, *STEPS, *fsdp, f"hydra.run.dir={two}"], cwd=tmp_path)
    assert _losses(two) == pytest.approx(whole.history[:3], rel=1e-4)
    state = json.loads((next((two / "checkpoints").glob("step_*")) / "state.json").read_text())
    assert state["world"] == 2 and state["strategy"] == "fsdp"
    resumed = run([*tiny, *STEPS[1:], "trainer.max_steps=5", "trainer.threads=1", f"trainer.resume={two}"], out_dir=tmp_path / "resumed")
    assert resumed.history == pytest.approx(whole.history[3:], rel=1e-4)

    # the reverse: one process for three steps, resumed under FSDP at two ranks
    one = run([*tiny, *STEPS, "trainer.threads=1"], out_dir=tmp_path / "one")
    back = tmp_path / "back"
    _torchrun([*tiny, *STEPS[1:], "trainer.max_steps=5", *fsdp, f"trainer.resume={one.out_dir}", f"hydra.run.dir={back}"], cwd=tmp_path)
    assert _losses(back)[-2:] == pytest.approx(whole.history[3:], rel=1e-4)
    assert json.loads((back / "metrics.json").read_text())["val_loss"] == pytest.approx(whole.metrics["val_loss"], rel=1e-4)


def test_strategy_is_checked_and_auto_picks_ddp_off_cuda():
    from torch import nn

    from zoo.errors import ConfigError
    from zoo.train.distributed import Dist, pick_strategy

    model = nn.Linear(4, 4)
    assert pick_strategy("auto", model, Dist()) == "ddp" and pick_strategy("fsdp", model, Dist()) == "fsdp"
    with pytest.raises(ConfigError, match="^trainer.strategy='zero3'"):
        pick_strategy("zero3", model, Dist())


def test_per_rank_micro_batch_must_divide():
    from zoo.errors import ConfigError
    from zoo.train.settings import Settings

    assert Settings(batch_size=8, grad_accum=2).micro_batch(2) == 2
    with pytest.raises(ConfigError, match="^trainer.batch_size=6"):
        Settings(batch_size=6, grad_accum=2).micro_batch(2)
