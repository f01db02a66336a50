"""Runs and sweeps: who a run is (:class:`RunInfo`, named by :mod:`zoo.run.naming`) and a sweep's
summary table. :class:`SweepSummary`, a Hydra callback, gathers every
job's ``metrics.json`` when the sweep ends into ``summary.csv``, ``summary.md`` and a W&B table.
Jobs record their own failures (and return), since Hydra skips ``on_multirun_end`` after a job raises;
the sweep then exits with status 1 once the summary is written, when any job failed or diverged.
"""

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from zoo.config import GROUPS
from zoo.run.naming import default_name, job_name, sweep_group
from zoo.run.tracking import log_table, wandb_enabled

#: groups of the training config, after the model's (``zoo.config.GROUPS``)
TRAIN_GROUPS = ("data", "tokenizer", "objective", "adapter", "optim", "sched", "logger", "trainer", "experiment")
#: overrides that change where or how loudly a run goes, not what it trains: left out of names
NAME_EXCLUDED = ("logger", "trainer.quiet", "trainer.resume", "trainer.device", "trainer.threads")
#: the columns of the sweep summary, in order (then every group's choice)
COLUMNS = (
    "job", "variant", "status", "val_loss", "val_bpb", "val_lzma_bpb", "val_ppl", "val_accuracy", "val_macro_f1", "train_loss",
    "steps", "tokens_per_s", "parameters", "parameters_trainable", "flops_per_token", "wall_s", "error", "name",
)  # fmt: skip


@dataclass
class RunInfo:
    """Who a run is: its name, its sweep group, its overrides and the chosen option of every group."""

    name: str = "run"
    group: str | None = None
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)
    job_num: int | None = None
    multirun: bool = False

    @classmethod
    def from_hydra(cls, hydra: DictConfig) -> "RunInfo":
        """From the ``hydra`` node: ``HydraConfig.get()`` in an app, ``cfg.hydra`` of ``zoo.compose``."""
        from hydra.types import RunMode

        overrides = [str(o) for o in (OmegaConf.select(hydra, "overrides.task", default=None) or [])]
        excluded = set(NAME_EXCLUDED) | set(OmegaConf.select(hydra, "job.config.override_dirname.exclude_keys", default=None) or [])
        named = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in excluded)
        chosen = OmegaConf.select(hydra, "runtime.choices", default=None) or {}
        choices = {g: str(chosen[g]) for g in (*GROUPS, *TRAIN_GROUPS) if chosen.get(g) is not None}
        multirun = OmegaConf.select(hydra, "mode", default=None) == RunMode.MULTIRUN
        job_num = OmegaConf.select(hydra, "job.num", default=None) if multirun else None
        group = sweep_group(OmegaConf.select(hydra, "sweep.dir", default=None)) if multirun else None
        name = job_name(named) or default_name(choices)
        return cls(name=name, group=group, overrides=overrides, choices=choices, job_num=job_num, multirun=multirun)


def collect(sweep_dir: Path) -> list[dict]:
    """Every job's ``metrics.json`` under ``sweep_dir``, in job order. A job that started (its folder,
    ``<number>-<overrides>``, exists) and left none is ``interrupted``: a parallel launcher's worker
    stopped by Ctrl-C, or a killed process, ends before it writes one. A job never started is missing."""
    rows = []
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        job, name = folder.name.split("-", 1)[0], folder.name
        if not job.isdigit():  # wandb/, .submitit/, plots: not a job
            continue
        metrics = folder / "metrics.json"
        try:
            rows.append(json.loads(metrics.read_text()))
        except FileNotFoundError:
            rows.append({"job": int(job), "name": name, "status": "interrupted",
                         "error": "stopped before it wrote metrics.json (killed, or its worker stopped by Ctrl-C)"})  # fmt: skip
        except (OSError, json.JSONDecodeError) as e:
            rows.append({"name": name, "status": "unreadable", "error": str(e)})
    return sorted(rows, key=lambda r: (r.get("job") is None, r.get("job") or 0, r.get("name", "")))


def variants(rows: list[dict]) -> list[str]:
    """Each job named by the overrides that differ between the jobs (``ffn=gelu``), not those all share."""
    per_job = [dict(o.lstrip("+~").split("=", 1) for o in r.get("overrides") or [] if "=" in o) for r in rows]
    keys = dict.fromkeys(k for o in per_job for k in o)
    varying = [k for k in keys if len({o.get(k) for o in per_job}) > 1]
    names = [job_name([f"{k}={o[k]}" for k in varying if k in o]) for o in per_job]
    if len(rows) < 2 or len(set(names)) < len(names):
        return [r.get("name", "") for r in rows]
    return names


def table(rows: list[dict], *, rounded: bool = True) -> tuple[list[str], list[list]]:
    """The summary's header and rows: :data:`COLUMNS`, then each group's choice (numbers to 4 digits if ``rounded``)."""
    rows = [{**r, "variant": v} for r, v in zip(rows, variants(rows))]
    groups = sorted({g for r in rows for g in r.get("choices", {})}, key=lambda g: ((*GROUPS, *TRAIN_GROUPS) + (g,)).index(g))
    header = [*COLUMNS, *groups]
    body = [[_cell(r.get(c), rounded=rounded) for c in COLUMNS] + [r.get("choices", {}).get(g, "") for g in groups] for r in rows]
    return header, body


def write_summary(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.md`` in ``sweep_dir``."""
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    with csv_path.open("w", newline="") as f:
        header, body = table(rows, rounded=False)
        csv.writer(f).writerows([header, *body])
    header, body = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in body]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _cell(value, *, rounded: bool = True):
    if isinstance(value, float) and rounded:
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return "" if value is None else value


#: the folder of the sweep this process launched, while it runs (set by :class:`SweepSummary`)
running_sweep: Path | None = None


def summarise_interrupted() -> None:
    """Ctrl-C stops a sweep before Hydra's end-of-sweep callback: the process that launched it writes
    the summary of the jobs so far (those stopped listed as ``interrupted``; those not started are not
    in it). Here rather than in the job: a parallel launcher's worker may be stopped before it can."""
    rows = collect(running_sweep) if running_sweep is not None and running_sweep.is_dir() else []
    if rows:
        _, md_path = write_summary(running_sweep, rows)
        stopped = ", ".join(str(r.get("job")) for r in rows if r.get("status") == "interrupted") or "none"
        print(f"zoo-train: sweep interrupted in job {stopped}; summary of its {len(rows)} runs so far in {md_path}", file=sys.stderr)


class SweepSummary(Callback):
    """Writes the sweep's summary table when a multirun ends (``hydra.callbacks.summary`` in conf/config.yaml)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global running_sweep
        running_sweep = Path(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global running_sweep
        running_sweep = None  # ended: a later Ctrl-C in this process is not this sweep's
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            return
        csv_path, md_path = write_summary(sweep_dir, rows)
        failed = [r for r in rows if r.get("status") != "ok"]
        print(f"zoo-train: sweep of {len(rows)} runs, {len(failed)} not ok; summary in {md_path}", file=sys.stderr)
        if wandb_enabled(config):
            header, body = table(rows)
            log_table(config, header=header, body=body, name="summary", group=sweep_group(str(sweep_dir)), folder=sweep_dir, job_type="summary")
        if failed:  # the summary is written; a script or CI running the sweep must still see the failure
            sys.exit(1)
