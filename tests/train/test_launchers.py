"""Sweeps through Hydra's launcher plugins: the same jobs and the same summary whoever runs them."""

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from zoo.run import launchers
from zoo.run.launchers import check_launcher, missing_plugin, requested_launcher, threads_per_job
from zoo.testing import interruptible


def test_the_launcher_a_command_names():
    assert requested_launcher(["-m", "model.dim=8", "hydra/launcher=joblib"]) == "joblib"
    assert requested_launcher(["+hydra/launcher=ray"]) == "ray"
    assert requested_launcher(["model/ffn=gelu"]) is None


def test_a_missing_plugin_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(launchers.LAUNCHERS, "joblib", ("joblib", "hydra_plugins.no_such_launcher_here"))
    assert missing_plugin(["hydra/launcher=basic"]) is None
    with pytest.raises(SystemExit) as exit_:
        check_launcher(["-m", "hydra/launcher=joblib"], app="zoo-train")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "zoo-train: hydra/launcher=joblib: its plugin is not installed; pip install 'transformer-zoo[joblib]'"


def test_jobs_on_one_machine_share_its_cores():
    joblib = OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2})
    assert threads_per_job(joblib, cores=8) == 4
    assert threads_per_job(OmegaConf.merge(joblib, {"n_jobs": -1}), cores=8) == 1  # every core a job
    assert threads_per_job(OmegaConf.merge(joblib, {"n_jobs": 16}), cores=8) == 1
    slurm = OmegaConf.create({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 6})
    assert threads_per_job(slurm, cores=64) == 6
    ray = OmegaConf.create({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"remote": {"num_cpus": 3}}})
    assert threads_per_job(ray, cores=8) == 3
    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    assert threads_per_job(basic, cores=8) is None and threads_per_job(None) is None


def _summary(sweep):
    return list(csv.DictReader((sweep / "summary.csv").open()))


SWEEP = ["-m", "model/ffn=swiglu,gelu", "model/norm=rmsnorm,layernorm", "trainer.max_steps=3", "trainer.threads=1"]


def _needs(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


@pytest.mark.slow  # eight short runs
@_needs("hydra_plugins.hydra_joblib_launcher")
def test_a_joblib_sweep_gives_the_basic_launchers_summary(tmp_path, cli, tiny):
    basic, joblib = tmp_path / "basic", tmp_path / "joblib"
    done = cli([*SWEEP, *tiny, f"hydra.sweep.dir={basic}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    done = cli([*SWEEP, *tiny, f"hydra.sweep.dir={joblib}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _summary(basic), _summary(joblib)
    assert [r["variant"] for r in two] == [r["variant"] for r in one] and len(one) == 4
    assert [r["status"] for r in two] == ["ok"] * 4
    # one thread per job in both: the same arithmetic, so the same losses
    assert [float(r["val_loss"]) for r in two] == pytest.approx([float(r["val_loss"]) for r in one], rel=1e-6)


@pytest.mark.slow
@_needs("hydra_plugins.hydra_submitit_launcher")
def test_a_submitit_local_sweep_runs_and_is_summarised(tmp_path, cli, tiny):
    sweep = tmp_path / "sweep"
    done = cli(["-m", "model/ffn=swiglu,gelu", "trainer.max_steps=3", *tiny, f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _summary(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(float(r["val_loss"]) > 0 for r in rows)


@pytest.mark.slow  # starts a local Ray cluster
@_needs("hydra_plugins.hydra_ray_launcher")
def test_a_sweep_on_a_local_ray_cluster_runs_and_is_summarised(tmp_path, cli, tiny):
    sweep = tmp_path / "sweep"
    ray = ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.remote.num_cpus=1"]
    done = cli(["-m", "model/ffn=swiglu,gelu", "trainer.max_steps=3", *tiny, f"hydra.sweep.dir={sweep}", *ray], cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _summary(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(float(r["val_loss"]) > 0 for r in rows)


def ctrl_c_in_job_1(tmp_path, tiny, launcher: list[str]) -> tuple[int, str, list[dict]]:
    """A sweep whose job 1 trains until stopped, Ctrl-C'd as a terminal does (SIGINT to the whole process
    group: the launcher's workers too) once job 1 trains and job 0 (2 steps) has finished, so that the
    signal finds one job running and one done whatever the order the launcher runs them in; the exit
    status, stderr and the summary rows."""
    sweep = tmp_path / "sweep"
    common = [o for o in tiny if not o.startswith("trainer.max_steps=")]
    args = ["-m", "trainer.max_steps=2,100000", *common, f"hydra.sweep.dir={sweep}", *launcher]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "zoo.train", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=interruptible)
    try:
        deadline = time.time() + 300
        def ready() -> bool:
            return any(p.stat().st_size for p in sweep.glob("1-*/log.jsonl")) and any(sweep.glob("0-*/metrics.json"))

        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stderr, _summary(sweep)


@pytest.mark.slow
@_needs("hydra_plugins.hydra_joblib_launcher")
def test_ctrl_c_in_a_joblib_sweep_stops_cleanly_with_the_summary_so_far(tmp_path, tiny):
    status, stderr, rows = ctrl_c_in_job_1(tmp_path, tiny, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert status == 130 and "zoo-train: interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    # job 1 listed even when the launcher stopped its worker before it wrote its metrics.json
    assert [r["job"] for r in rows] == ["0", "1"] and rows[1]["status"] == "interrupted"
    assert rows[0]["status"] == "ok", rows[0].get("error")  # done before the signal, in the other worker


@pytest.mark.slow
@_needs("hydra_plugins.hydra_submitit_launcher")
def test_ctrl_c_in_a_submitit_local_sweep_still_writes_the_summary(tmp_path, tiny):
    status, stderr, rows = ctrl_c_in_job_1(tmp_path, tiny, ["hydra/launcher=submitit_local"])
    # submitit's own controller process prints its KeyboardInterrupt traceback (its code, not zoo's)
    assert status == 130 and "zoo-train: interrupted" in stderr, stderr[-3000:]
    assert [r["job"] for r in rows] == ["0", "1"] and rows[1]["status"] == "interrupted"
