"""Hydra launchers for sweeps: which plugin each ``hydra/launcher`` option needs, and threads per job.

A sweep (``zoo-train -m``, a ``zoo-bench`` study) runs its jobs through whichever Hydra launcher the
command names: ``basic`` (one after another, in this process), ``joblib`` (parallel processes on this
machine), ``submitit_local`` / ``submitit_slurm`` (processes, or SLURM jobs) or ``ray`` (a Ray
cluster). zoo writes nothing launcher-specific: every job writes into the sweep folder and the
summary is built from those folders when the sweep ends, whoever ran the jobs.
"""

import importlib.util
import os
import sys

#: ``hydra/launcher`` option -> (the pyproject extra that installs it, the plugin's module)
LAUNCHERS = {
    "joblib": ("joblib", "hydra_plugins.hydra_joblib_launcher"),
    "submitit_local": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    "submitit_slurm": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    "ray": ("ray", "hydra_plugins.hydra_ray_launcher"),
}


def requested_launcher(argv: list[str]) -> str | None:
    """The ``hydra/launcher`` option a command line names, if any."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and value:
            return value
    return None


def missing_plugin(argv: list[str]) -> str | None:
    """One line saying which extra to install when the command names a launcher whose plugin is absent."""
    name = requested_launcher(argv)
    if name not in LAUNCHERS:
        return None
    extra, module = LAUNCHERS[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # hydra_plugins itself is absent
        found = False
    if found:
        return None
    return f"hydra/launcher={name}: its plugin is not installed; pip install 'transformer-zoo[{extra}]'"


def check_launcher(argv: list[str], *, app: str) -> None:
    """Exit with status 2 and one line before Hydra starts when the named launcher is not installed."""
    message = missing_plugin(argv)
    if message is not None:
        print(f"{app}: {message}", file=sys.stderr)
        sys.exit(2)


def parallel_jobs(launcher, *, cores: int) -> int | None:
    """How many jobs of a sweep run at once on one machine under ``launcher`` (the ``hydra.launcher``
    node), or ``None`` when jobs do not share this machine's cores (basic launcher, SLURM)."""
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    if "JoblibLauncher" in target:
        n_jobs = int(launcher.get("n_jobs", -1) or -1)
        # joblib's convention: -1 is every core, -2 every core but one, ...
        return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return None  # submitit and Ray give each job its own cores (below); basic runs one job at a time


def threads_per_job(launcher, *, cores: int | None = None) -> int | None:
    """torch threads for one job: the cores it is given (submitit's ``cpus_per_task``, Ray's
    ``num_cpus``), or this machine's cores divided among the jobs joblib runs at once; ``None``
    where the launcher says nothing (torch's default then)."""
    if launcher is None:
        return None
    cores = cores or os.cpu_count() or 1
    given = launcher.get("cpus_per_task", None)
    if given is None and "ray" in launcher:
        given = ((launcher.get("ray") or {}).get("remote") or {}).get("num_cpus")
    if given:
        return max(1, int(given))
    jobs = parallel_jobs(launcher, cores=cores)
    return max(1, cores // jobs) if jobs else None


def share_cores(launcher, *, configured: int | None) -> None:
    """Set torch's threads to this job's share of the cores, unless the user set ``trainer.threads``:
    jobs side by side then share the cores rather than fight over them."""
    threads = threads_per_job(launcher)
    if threads and configured is None:
        import torch

        torch.set_num_threads(threads)
