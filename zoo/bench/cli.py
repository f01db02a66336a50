"""``zoo-bench``: the Hydra app over ``conf/bench.yaml`` (every group of ``conf/``, plus ``study``).

A single run benchmarks one composition and writes its report into Hydra's output folder; a
``-m`` sweep (or a study, which is a canned sweep) benchmarks each job the same way and
:class:`~zoo.bench.report.BenchSummary` writes one report over all of them when it ends. A user's
config mistake prints one line and exits with status 2 (in a sweep, the job records it and the
others run). ``study=peers`` runs the side-by-side peer comparison instead.
"""

import json
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zoo.errors import ConfigError
from zoo.run.entry import check_overrides, exit_policy, setup
from zoo.run.naming import sweep_group
from zoo.run.tracking import log_table, wandb_enabled


def variant_name(overrides: list[str], choices: dict[str, str]) -> str:
    """The variant's label: its overrides, shortened (``pos=alibi``), or its components when none."""
    from zoo.bench.report import NOT_VARIANT, short
    from zoo.run.naming import default_name, job_name

    named = [short(o) for o in overrides if not o.lstrip("+~").startswith(NOT_VARIANT)]
    return job_name(named) or default_name(choices)


def run_peers(cfg: DictConfig, out_dir: Path) -> None:
    """``study=peers``: the interleaved comparison, written as ``peers.json`` and ``peers.md``."""
    import torch

    from zoo.bench import peers
    from zoo.bench.timing import pick_device

    options = dict(OmegaConf.to_container(cfg.bench.peers, resolve=True))
    threads = int(cfg.trainer.threads or torch.get_num_threads())
    device = pick_device(str(cfg.trainer.device))
    shape = peers.LlamaShape(**options.pop("shape", {}))
    report = peers.run_in_processes(
        options.pop("processes"), threads=threads, keep_memory=bool(cfg.trainer.keep_freed_memory), shape=shape,
        device=device, **options,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = peers.markdown(report)
    (out_dir / "peers.md").write_text(f"# zoo-bench: peers ({device.type}, {threads} threads)\n\n{text}\n")
    print(text)
    if wandb_enabled(cfg):
        header = ["peer", *next(iter(report["results"].values()))]
        body = [[name, *row.values()] for name, row in report["results"].items()]
        # the ratios as rows too: "zoo / hf", train ratio, inference ratio, target, padded to the header
        body += [[r["ratio"], r["train"], r["infer"], f">= {r['target']}", *[""] * (len(header) - 4)] for r in report["ratios"]]
        log_table(cfg, header=header, body=body, name="peers", group=None, folder=out_dir, job_type="bench")


def run_job(cfg: DictConfig, *, out_dir: Path, overrides: list[str], chosen: dict[str, str], multirun: bool, group: str | None) -> None:
    """Benchmark one variant; report it (a single run) or leave its rows for the sweep's report."""
    from zoo.bench import report
    from zoo.bench.run import run_variant

    variant = variant_name(overrides, chosen)
    digest = report.config_digest(cfg)
    if multirun and report.finished(out_dir, digest=digest):
        # a study run again into its own folder (hydra.sweep.dir=...) runs only the jobs it lacks
        print(f"zoo-bench: {variant}: finished already, kept {out_dir / report.RESULTS} (delete it to run again)", file=sys.stderr)
        return
    try:
        rows = run_variant(cfg, out_dir=out_dir, variant=variant, overrides=overrides, choices=chosen)
    except ConfigError as e:
        if not multirun:
            raise
        rows = [{"variant": variant, "status": "failed", "error": str(e), "choices": chosen, "overrides": overrides}]
        print(f"zoo-bench: {variant} failed: {e}", file=sys.stderr)
    except Exception as e:  # a bug, not the user's config: keep the traceback, let the sweep go on
        if not multirun:
            raise
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text(traceback.format_exc())
        rows = [{"variant": variant, "status": "failed", "error": f"{type(e).__name__}: {e}", "choices": chosen, "overrides": overrides}]
        print(f"zoo-bench: {variant} failed: {type(e).__name__}: {e} (see {out_dir / 'error.txt'})", file=sys.stderr)
    rows = [{**row, "config_digest": digest} for row in rows]
    if multirun:
        report.write_jsonl(rows, out_dir / report.RESULTS)  # the sweep's report gathers these
        if wandb_enabled(cfg):
            report.log_wandb(cfg, rows=rows, paths={}, name=variant, group=group, folder=out_dir)
        return
    paths = report.write_report(rows, out_dir, title=f"zoo-bench: {variant}", command=" ".join(sys.argv), notes=report.study_notes(cfg))
    print(report.summary_table(rows))
    print(f"zoo-bench: report in {paths['summary']}", file=sys.stderr)
    if wandb_enabled(cfg):
        report.log_wandb(cfg, rows=rows, paths=paths, name=variant, group=group, folder=out_dir)


@hydra.main(config_path="pkg://zoo.conf", config_name="bench", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from hydra.types import RunMode

    from zoo.run.launchers import share_cores

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    share_cores(hc.launcher, configured=cfg.trainer.threads)
    if OmegaConf.select(cfg, "bench.peers", default=None):
        run_peers(cfg, out_dir)
        return
    multirun = hc.mode == RunMode.MULTIRUN
    # every group's choice, the training groups' included: the full description of the variant
    chosen = {g: str(v) for g, v in hc.runtime.choices.items() if v is not None and not g.startswith("hydra/")}
    overrides = [str(o) for o in hc.overrides.task]
    with exit_policy("zoo-bench"):  # inside the task: Hydra would print an escaping error as several lines
        run_job(cfg, out_dir=out_dir, overrides=overrides, chosen=chosen, multirun=multirun, group=sweep_group(hc.sweep.dir) if multirun else None)


def main() -> None:
    """The console script: plugins' configs and zoo's resolvers registered, W&B offline by default."""
    from zoo.run.launchers import check_launcher

    check_launcher(sys.argv[1:], app="zoo-bench")
    setup()
    args = sys.argv[1:]
    if {"-m", "--multirun"} & set(args) and not any(a.lstrip("+~").startswith("study=") for a in args):
        # a study is a sweep: it would multiply the user's own sweep
        print("zoo-bench: a sweep and no study named: benchmarking your sweep alone (study=none)", file=sys.stderr)
        sys.argv.append("study=none")
    with exit_policy("zoo-bench"):
        check_overrides(sys.argv[1:], config_name="bench")
        _app()
