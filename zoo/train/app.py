"""``zoo-train`` (also ``python -m zoo.train``): the Hydra app around :func:`zoo.train.loop.train`.

A single run whose config is wrong prints one line naming the key and exits with status 2; a run
whose loss diverges exits with status 1. In a multirun (``-m``) every job records its outcome in
its ``metrics.json`` and returns, so the other jobs run and the sweep summary is written.
"""

import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zoo.config import register_plugins
from zoo.errors import ConfigError
from zoo.train.launchers import check_launcher, share_cores
from zoo.train.sweep import RunInfo, register_resolvers

EXIT_CONFIG, EXIT_DIVERGED = 2, 1


@hydra.main(config_path="pkg://zoo.conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from zoo.train.loop import train

    hydra_cfg = HydraConfig.get()
    info = RunInfo.from_hydra(hydra_cfg)
    out_dir = Path(hydra_cfg.runtime.output_dir)
    share_cores(hydra_cfg.launcher, configured=cfg.trainer.threads)
    try:
        result = train(cfg, out_dir=out_dir, info=info)
    except ConfigError as e:
        if info.multirun:
            print(f"zoo-train: job {info.job_num} ({info.name}) failed: {e}", file=sys.stderr)
            return None
        print(f"zoo-train: config error: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except Exception as e:  # a bug, not the user's config: the traceback matters
        if not info.multirun:
            raise
        (out_dir / "error.txt").write_text(traceback.format_exc())
        print(f"zoo-train: job {info.job_num} ({info.name}) failed: {type(e).__name__}: {e} (see {out_dir / 'error.txt'})", file=sys.stderr)
        return None
    if result.status == "diverged" and not info.multirun:
        sys.exit(EXIT_DIVERGED)
    # the value a Hydra sweeper (e.g. Optuna) minimises
    return result.metrics.get("val_bpb", result.metrics.get("val_loss"))


def main() -> None:
    """The console script: plugins' configs and zoo's resolvers registered, then Hydra."""
    check_launcher(sys.argv[1:], app="zoo-train")
    register_plugins()
    register_resolvers()
    # before anything imports wandb (see zoo.train.logger)
    os.environ.setdefault("WANDB_MODE", "offline")
    _app()
