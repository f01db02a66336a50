"""Experiment loggers: the ``logger`` config group (``wandb``, the default, and ``none``).

W&B runs offline unless the user sets ``WANDB_MODE`` (:func:`zoo.run.tracking.import_wandb`). Offline
runs land in ``<dir>/wandb/offline-run-*`` and ``wandb sync <that folder>`` uploads them later.
"""

import os
from pathlib import Path

from zoo.run.tracking import import_wandb


class Logger:
    """What the training loop calls; this base logs nothing (``logger=none``)."""

    def start(self, *, config: dict, name: str, group: str | None, tags: list[str], out_dir: Path) -> None:
        """Open the run.

        Args:
            config: the resolved config plus ``choices`` (the option chosen in each group).
            name: a readable run name built from the choices.
            group: the sweep this run belongs to, or ``None`` for a single run.
            tags: the command-line overrides.
            out_dir: the run's output folder.
        """

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        """Record ``metrics`` (``"train/loss"``, ``"val/bpb"``, ...) at optimizer step ``step``."""

    def summary(self, metrics: dict) -> None:
        """The run's final numbers."""

    def finish(self, *, failed: bool = False) -> None:
        """Close the run; ``failed`` marks it so in the dashboard."""

    @property
    def info(self) -> dict:
        """Where the run went (for ``metrics.json``)."""
        return {}


class NoLogger(Logger):
    """No experiment tracking: ``metrics.json`` and the console only."""


class WandbLogger(Logger):
    """Weights & Biases, offline by default: needs no account, ``wandb sync`` uploads later.

    Args:
        project: the W&B project.
        entity: the W&B team or user; ``None``: the account's default.
        group: the run group; ``None``: the sweep's name in a multirun, none in a single run.
        tags: extra tags, added to the overrides.
        dir: where ``wandb/`` goes; ``None``: ``$WANDB_DIR``, else the run's output folder.
        job_type: the W&B job type.
        stats_interval: seconds between system-metric samples (W&B's default of 15 s misses short runs).
    """

    def __init__(
        self,
        *,
        project: str = "zoo",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        dir: str | None = None,
        job_type: str = "train",
        stats_interval: float = 5.0,
    ) -> None:
        self.project, self.entity, self.group, self.tags = project, entity, group, list(tags)
        self.dir, self.job_type, self.stats_interval = dir, job_type, stats_interval
        self.run = None

    def start(self, *, config: dict, name: str, group: str | None, tags: list[str], out_dir: Path) -> None:
        wandb = import_wandb()
        folder = self.dir or os.environ.get("WANDB_DIR") or str(out_dir)
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group or group,
            name=name,
            job_type=self.job_type,
            # W&B limits a tag to 64 characters
            tags=[t[:64] for t in [*self.tags, *tags]],
            config=config,
            dir=folder,
            reinit="finish_previous",
            settings=wandb.Settings(x_stats_sampling_interval=self.stats_interval, console="off"),
        )

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self, *, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None

    @property
    def info(self) -> dict:
        run = self.run
        if run is None:
            return {}
        return {"wandb_id": run.id, "wandb_name": run.name, "wandb_group": run.group, "wandb_dir": str(Path(run.dir).parent)}
