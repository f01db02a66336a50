"""``python -m zoo.train`` as users run it: sweeps with W&B offline, a failing job, a bad config."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from zoo.run.naming import sweep_group
from zoo.testing import interruptible


@pytest.fixture
def sweep_args(tiny):
    """The tiny run with W&B on and the progress bar left to the sweep's default (off)."""
    return [o for o in tiny if o not in ("logger=none", "trainer.quiet=true")] + ["trainer.max_steps=3"]


@pytest.mark.slow  # four jobs and their W&B runs in a fresh interpreter
def test_sweep_of_four_jobs_makes_four_wandb_runs_in_one_group_and_a_summary(tmp_path, cli, sweep_args):
    sweep = tmp_path / "sweep"
    done = cli(["-m", "model/ffn=swiglu,gelu", "model/norm=rmsnorm,layernorm", f"hydra.sweep.dir={sweep}", *sweep_args], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("-", 1)[0] for p in jobs] == ["0", "1", "2", "3"]
    assert jobs[0].name.startswith("0-ffn=swiglu,norm=rmsnorm,experiment=smoke")  # readable, one level deep
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    assert [m["status"] for m in metrics] == ["ok"] * 4
    assert {(m["choices"]["model/ffn"], m["choices"]["model/norm"]) for m in metrics} == {
        ("swiglu", "rmsnorm"), ("swiglu", "layernorm"), ("gelu", "rmsnorm"), ("gelu", "layernorm")
    }  # fmt: skip
    assert {m["wandb_group"] for m in metrics} == {sweep_group(str(sweep))}
    assert len({m["wandb_id"] for m in metrics}) == 4
    for job in jobs:  # Hydra's record, written by the run once it holds its folder
        assert "model/ffn" in (job / ".hydra" / "overrides.yaml").read_text() and (job / ".hydra" / "config.yaml").exists()

    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    ids = {m["wandb_id"] for m in metrics}
    train_runs = [r for r in runs if r.name.rsplit("-", 1)[1] in ids]
    assert len(train_runs) == 4 and len(runs) == 5  # and the summary table's own run
    for run in runs:  # the group is recorded in each offline run, ready for `wandb sync`
        assert sweep_group(str(sweep)).encode() in next(run.glob("*.wandb")).read_bytes()

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"} and all(float(r["val_bpb"]) > 0 for r in rows)
    assert [r["variant"] for r in rows] == ["ffn=swiglu,norm=rmsnorm", "ffn=swiglu,norm=layernorm", "ffn=gelu,norm=rmsnorm", "ffn=gelu,norm=layernorm"]
    assert (sweep / "summary.md").read_text().count("| ok |") == 4


def test_a_failing_job_is_reported_while_the_others_finish(tmp_path, cli, sweep_args):
    sweep = tmp_path / "sweep"
    # model.dim=32 splits into 2 or 4 heads, not 3: job 1 fails, jobs 0 and 2 train
    done = cli(["-m", "model.n_heads=2,3,4", f"hydra.sweep.dir={sweep}", *sweep_args, "logger=none"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]  # after the summary: the sweep had a failure
    assert "job 1" in done.stderr and "model.n_heads" in done.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "model.n_heads" in rows[1]["error"] and rows[0]["val_loss"] and rows[2]["val_loss"]


def test_ctrl_c_in_a_sweep_still_writes_the_summary_of_the_jobs_so_far(tmp_path, sweep_args):
    sweep = tmp_path / "sweep"
    common = [o for o in sweep_args if not o.startswith("trainer.max_steps=")]
    args = ["-m", "trainer.max_steps=2,100000", f"hydra.sweep.dir={sweep}", *common, "logger=none"]  # job 1 runs until stopped
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "zoo.train", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        deadline = time.time() + 240
        while not any(p.stat().st_size for p in sweep.glob("1-*/log.jsonl")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)  # job 1 is training
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "sweep interrupted in job 1" in stderr, stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "interrupted"]


def test_a_bad_config_is_one_line_and_exit_status_2(tmp_path, cli, tiny):
    done = cli([*tiny, "objective=span_corruption"], cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "objective='span_corruption': needs model=encdec, not model=causal" in done.stderr
