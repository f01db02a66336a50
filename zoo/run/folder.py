"""A run folder belongs to one run.

While a run writes into its folder it holds an exclusive lock on ``<folder>/.zoo.lock`` (``flock``:
the kernel drops it when the process dies, so a killed run never leaves a stale lock). A second run
into a held folder is refused with one line. A fresh run into a folder that already holds a run's
checkpoints is refused too, unless it resumes that run (``trainer.resume=auto``) or is told to start
over (``trainer.overwrite=true``): re-running a command must not delete the earlier run's checkpoint
at its first save. Temporary files that killed writes left behind are cleaned once the lock is held.

Hydra's own record of a run (``.hydra/``: config, Hydra config, overrides) is written here, once the
lock is held (:func:`record_hydra`): Hydra writes it before any of zoo's code runs, so a refused second
run would overwrite the record of the run that holds the folder (``hydra.output_subdir: null``).
"""

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoo.errors import ConfigError
from zoo.run.checkpoint import CHECKPOINTS, LATEST, clean_stale

LOCK = ".zoo.lock"
#: what a run writes into its folder, and ``trainer.overwrite=true`` clears before starting over
RUN_FILES = (CHECKPOINTS, "log.jsonl", "metrics.json")


class FolderTaken(ConfigError):
    """The folder is another run's: held by a live run, or holding checkpoints this run would overwrite."""


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "?"
    except OSError:
        return "?"


def is_held(folder: str | Path) -> bool:
    """Whether a live process holds ``folder``'s lock (this process's own lock counts)."""
    path = Path(folder) / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def has_checkpoints(folder: str | Path) -> bool:
    root = Path(folder) / CHECKPOINTS
    return (root / LATEST).exists() or any(root.glob("step_*"))


@contextmanager
def claim(folder: str | Path, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for one run while the ``with`` block runs.

    Args:
        folder: the run folder (created if missing).
        resume: the run continues the checkpoints already in ``folder``.
        overwrite: the run starts over: the previous run's checkpoints, log and metrics are deleted.

    Raises: :class:`FolderTaken` when a live run holds the folder, or when it holds checkpoints and
    neither ``resume`` nor ``overwrite`` is set.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderTaken(
            "hydra.run.dir", str(folder), f"another run (pid {_holder(folder / LOCK)}) is writing into this folder; wait for it or choose another folder"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        clean_stale(folder)
        if has_checkpoints(folder) and not resume:
            if not overwrite:
                raise FolderTaken(
                    "trainer.resume", None,
                    f"{folder} already holds a run's checkpoints: pass trainer.resume=auto to continue that run, "
                    "trainer.overwrite=true to delete it and start over, or choose another hydra.run.dir",
                )  # fmt: skip
            for name in RUN_FILES:
                path = folder / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        yield folder
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record_hydra(folder: str | Path, cfg) -> None:
    """Write ``folder/.hydra/{config,hydra,overrides}.yaml`` as Hydra would, in a Hydra app; else nothing.

    Call it only while holding ``folder`` (:func:`claim`); ``cfg`` is the task's config as Hydra passed it.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    record = Path(folder) / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.instance().cfg
    for name, node in (("config", cfg), ("hydra", hydra_cfg), ("overrides", hydra_cfg.hydra.overrides.task)):
        OmegaConf.save(node, record / f"{name}.yaml")
