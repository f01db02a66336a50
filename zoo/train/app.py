"""``zoo-train`` (also ``python -m zoo.train``): the Hydra app around :func:`zoo.train.loop.train`.

A single run whose config is wrong prints one line naming the key and exits with status 2; a run
whose loss diverges exits with status 1. In a multirun (``-m``) every job records its outcome in
its ``metrics.json`` and returns, so the other jobs run and the sweep summary is written.
"""

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zoo.errors import ConfigError
from zoo.run.entry import EXIT_FAILED, check_overrides, describe, exit_policy, setup
from zoo.run.launchers import check_launcher, share_cores
from zoo.train.sweep import RunInfo, summarise_interrupted


@hydra.main(config_path="pkg://zoo.conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from zoo.train.loop import train

    hydra_cfg = HydraConfig.get()
    info = RunInfo.from_hydra(hydra_cfg)
    out_dir = Path(hydra_cfg.runtime.output_dir)
    share_cores(hydra_cfg.launcher, configured=cfg.trainer.threads)
    if not info.multirun:
        # inside the task: Hydra would print an escaping exception as several lines and exit 1
        with exit_policy("zoo-train"):
            result = train(cfg, out_dir=out_dir, info=info)
        if result.status == "diverged":
            sys.exit(EXIT_FAILED)
        return result.metrics.get("val_bpb", result.metrics.get("val_loss"))
    try:
        result = train(cfg, out_dir=out_dir, info=info)
    except ConfigError as e:
        print(f"zoo-train: job {info.job_num} ({info.name}) failed: {describe(e)}", file=sys.stderr)
        return None
    except Exception as e:  # a bug, not the user's config: the traceback matters
        (out_dir / "error.txt").write_text(traceback.format_exc())
        print(f"zoo-train: job {info.job_num} ({info.name}) failed: {type(e).__name__}: {e} (see {out_dir / 'error.txt'})", file=sys.stderr)
        return None
    # the value a Hydra sweeper (e.g. Optuna) minimises
    return result.metrics.get("val_bpb", result.metrics.get("val_loss"))


def main() -> None:
    """The console script: the run layer's set-up (zoo.run.entry), then Hydra under its exit policy."""
    check_launcher(sys.argv[1:], app="zoo-train")
    setup()
    with exit_policy("zoo-train"):
        check_overrides(sys.argv[1:], config_name="config")
        try:
            _app()
        except KeyboardInterrupt:
            summarise_interrupted()  # a sweep's jobs so far, whichever launcher ran them
            raise
