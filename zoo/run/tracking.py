"""W&B for every entry point: imported offline by default, and one summary-table run per sweep or study.

W&B runs offline unless the user sets ``WANDB_MODE`` (``online`` to upload as it trains): the mode
goes into the environment before ``wandb`` is imported, because an offline ``init`` alone still
lets a telemetry thread reach the network. ``wandb`` is imported lazily (it costs ~0.4 s). The
per-step logger of a training run is :class:`zoo.train.logger.WandbLogger`; what is here serves the
sweep summary of ``zoo-train -m`` and the reports of ``zoo-bench`` alike.
"""

import os
from pathlib import Path


def import_wandb():
    """``wandb``, imported with the offline default in place and its chatter silenced."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    return wandb


def wandb_enabled(config) -> bool:
    """Whether the composed config logs to W&B (``logger=wandb``)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.select(config, "logger._target_", default="")).endswith("WandbLogger")


def log_table(
    config, *, header: list[str], body: list[list], name: str, group: str | None, folder: Path, job_type: str,
    images: dict[str, Path] | None = None,
) -> None:  # fmt: skip
    """One W&B run holding a table (and images), under the ``logger`` group's project, entity, group and dir.

    Args:
        config: the composed config; its ``logger`` node's ``project``, ``entity``, ``group`` and ``dir``
            win over ``group`` and ``folder``.
        folder: where ``wandb/`` goes when neither ``logger.dir`` nor ``$WANDB_DIR`` says.
    """
    from omegaconf import OmegaConf

    wandb = import_wandb()
    logger = OmegaConf.to_container(config.logger, resolve=True)
    with wandb.init(
        project=logger.get("project", "zoo"), entity=logger.get("entity"), group=logger.get("group") or group, name=name,
        job_type=job_type, dir=logger.get("dir") or os.environ.get("WANDB_DIR") or str(folder), reinit="finish_previous",
        settings=wandb.Settings(console="off"),
    ) as run:  # fmt: skip
        run.log({"summary": wandb.Table(columns=header, data=[[str(c) for c in row] for row in body])}
                | {k: wandb.Image(str(p)) for k, p in (images or {}).items()})  # fmt: skip
