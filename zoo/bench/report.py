"""Reports of a benchmark: ``results.jsonl``, ``summary.md`` (best value per column in bold), plots,
the console table, and W&B.

``results.jsonl`` holds one line per variant and seed with every figure and the full choice of
components. The summary aggregates seeds: mean and 95% CI (t distribution) for trained figures, with
``†`` on a value that differs from the column's best beyond seed noise (Welch's t-test at 5%);
speed figures are measured once per variant. :class:`BenchSummary` (a Hydra callback) does it for a
whole ``-m`` sweep when it ends, from every job's ``results.jsonl``.
"""

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from zoo.bench.plots import all_plots, by_variant, is_number
from zoo.bench.start import SCRATCH, describe
from zoo.bench.stats import Difference, exceeds_noise, paired, summarize, unpaired
from zoo.bench.timing import NOISY_SPREAD
from zoo.run.tracking import log_table, wandb_enabled

RESULTS = "results.jsonl"
#: overrides that pick where or how a job runs, or which of its seeds, not which variant it is: left
#: out of variant names (a study fanned out per seed, ``bench.seeds=[0],[1],[2]``, has one variant per model)
NOT_VARIANT = ("study=", "bench.", "hydra.", "logger", "trainer.device", "trainer.threads", "trainer.keep_freed_memory", "trainer.quiet")
SUMMARY = "summary.md"


@dataclass(frozen=True)
class Column:
    """One column of the summary: a (dotted) key of the rows, a title, which way is better, and
    whether it varies with the seed (then it is aggregated with a CI)."""

    key: str
    title: str
    better: str | None = None  # "min" | "max" | None (a descriptor: never bold)
    seeded: bool = False
    scale: float = 1.0
    digits: str = ".4g"


FIXED = (
    Column("active_params", "params (active)", scale=1e-6, digits=".3g"),
    Column("parameters_trainable", "trainable (M)", scale=1e-6, digits=".3g"),
    Column("flops_total", "MFLOP/token", scale=1e-6, digits=".3g"),
    Column("val_loss", "val loss", "min", True),
    Column("val_bpb", "bits/byte", "min", True),
    Column("continuation.loss", "continuation loss", "min", True),
    Column("train_tokens_per_s", "train tok/s", "max", digits=",.0f"),
    Column("prefill_tokens_per_s", "prefill tok/s", "max", digits=",.0f"),
    Column("decode_tokens_per_s", "decode tok/s", "max", digits=",.0f"),
    Column("decode_latency_s", "decode ms/token", "min", scale=1e3, digits=".3g"),
    Column("kv_cache_bytes", "KV cache KiB", "min", scale=1 / 1024, digits=",.0f"),
    Column("optimizer_state_bytes", "optim state MiB", "min", scale=1 / 2**20, digits=",.2f"),
    Column("peak_memory_bytes", "peak MiB", "min", scale=1 / 2**20, digits=",.0f"),
    Column("mfu_train", "MFU train", "max", scale=100, digits=".1f"),
)


#: speed columns and the relative spread of the repeated timings behind their median
SPREADS = {"train_tokens_per_s": "train_spread", "prefill_tokens_per_s": "prefill_spread"}


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def config_digest(cfg: DictConfig) -> str:
    """What a job's results are a function of: its config, less where it logs and how loudly or on how
    many threads it runs. A finished job is kept on a re-run only when this is unchanged."""
    import hashlib

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("logger", None)
    for key in ("quiet", "threads", "keep_freed_memory"):
        plain.get("trainer", {}).pop(key, None)
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished(job_dir: Path, *, digest: str) -> bool:
    """Whether ``job_dir`` holds the results of a job that ended well with the config whose digest is
    ``digest``: every row ``ok`` (a failed or interrupted job runs again, as does a changed config)."""
    path = Path(job_dir) / RESULTS
    try:
        rows = read_jsonl(path)
    except (OSError, ValueError):  # absent, or cut short mid-write
        return False
    return bool(rows) and all(r.get("status") == "ok" and r.get("config_digest") == digest for r in rows)


def lookup(row: dict, key: str):
    value = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def columns(rows: list[dict]) -> list[Column]:
    """The fixed columns that hold a number somewhere, then extrapolation and MQAR columns as found."""
    cols = [c for c in FIXED if any(is_number(lookup(r, c.key)) for r in rows)]
    factors = sorted({k for r in rows for k in (r.get("extrapolation") or {})}, key=lambda k: float(k.rstrip("x")))
    cols += [Column(f"extrapolation.{f}", f"loss @{f}", "min", True) for f in factors]
    cases = list(dict.fromkeys(k for r in rows for k in (r.get("mqar") or {})))
    cols += [Column(f"mqar.{c}", f"MQAR {c}", "max", True, digits=".3f") for c in cases]
    return cols


def cell_values(rows: list[dict], column: Column) -> list[float]:
    values = [lookup(r, column.key) for r in rows]
    numbers = [v for v in values if is_number(v)]
    return numbers if column.seeded else numbers[:1]


def summary_table(rows: list[dict]) -> str:
    """The Markdown table: one line per variant, best value per column in bold, ``†`` beyond noise."""
    groups = by_variant(rows)
    cols = columns(rows)
    values = {v: {c.key: cell_values(rs, c) for c in cols} for v, rs in groups.items()}
    best = {}
    for c in cols:
        means = {v: sum(x) / len(x) for v, vals in values.items() if (x := vals[c.key])}
        if c.better and means:
            best[c.key] = (min if c.better == "min" else max)(means, key=means.get)
    header = ["variant", "seeds", *(c.title for c in cols)]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(cols)]
    for variant, rs in groups.items():
        ok = [r for r in rs if r.get("status", "ok") == "ok"]
        cells = [variant.replace("|", "\\|"), f"{len(ok)}/{len(rs)}"]
        for c in cols:
            vals = values[variant][c.key]
            if not vals:
                raw = next((lookup(r, c.key) for r in rs if isinstance(lookup(r, c.key), str)), None)
                cells.append("n/a" if raw and raw.startswith("n/a") else "")
                continue
            s = summarize([v * c.scale for v in vals])
            text = f"{s.mean:{c.digits}}" + (f" ± {s.half_width:.2g}" if c.seeded and s.n > 1 else "")
            noisy = next((lookup(r, SPREADS[c.key]) for r in rs if c.key in SPREADS and is_number(lookup(r, SPREADS[c.key]))), 0.0)
            if noisy > NOISY_SPREAD:
                text += " ~"
            winner = best.get(c.key)
            if winner == variant:
                text = f"**{text}**"
            elif c.seeded and winner is not None and exceeds_noise(vals, values[winner][c.key]):
                text += " †"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_values(rows: list[dict], key: str) -> dict:
    """``{seed: value}`` of the ok rows holding a number at ``key``."""
    return {r.get("seed"): lookup(r, key) for r in rows if r.get("status", "ok") == "ok" and is_number(lookup(r, key))}


def compare(rows: list[dict], reference: list[dict], key: str) -> tuple[Difference, Difference] | None:
    """The variant's difference to the reference at ``key``: (paired over common seeds, Welch).

    The paired figure is ``None``-free only when both ran the same seeds on the same data (the
    ``data`` record of each seed); otherwise the first element is the Welch figure as well.
    """
    mine, theirs = seed_values(rows, key), seed_values(reference, key)
    if len(mine) < 2 or len(theirs) < 2:
        return None
    welch_diff = unpaired(list(mine.values()), list(theirs.values()))
    common = [seed for seed in mine if seed in theirs]
    data = {seed: r.get("data") for r in reference for seed in [r.get("seed")]}
    same_data = all(r.get("data") is not None and r.get("data") == data.get(r.get("seed")) for r in rows if r.get("seed") in common)
    if len(common) < 2 or not same_data:
        return welch_diff, welch_diff
    return paired([mine[s] for s in common], [theirs[s] for s in common]), welch_diff


def mark(d: Difference) -> str:
    """What a reader may conclude: a difference beyond noise, or none."""
    if d.p_value != d.p_value:  # nan: no noise estimate
        return "no estimate"
    return "**beyond noise**" if d.beyond_noise else "within noise"


def differences_table(rows: list[dict], *, key: str = "val_loss", title: str = "val loss") -> str:
    """Per variant, ``key``'s mean and its difference to the reference variant (the sweep's first), with
    the paired 95% half-width and p-value next to Welch's unpaired half-width for the same runs."""
    groups = by_variant(rows)
    if len(groups) < 2:
        return ""
    ref_name, ref_rows = next(iter(groups.items()))
    header = f"| variant | {title} | Δ vs {ref_name} | paired ± (95%) | unpaired ± (95%) | p | verdict | lr | runs |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for variant, rs in groups.items():
        values = list(seed_values(rs, key).values())
        mean = f"{summarize(values).mean:.4g}" if values else ""
        tail = f"{learning_rate(rs)} | {run_flags(rs)} |"
        if variant == ref_name:
            lines.append(f"| {variant} (reference) | {mean} | | | | | | {tail}")
            continue
        found = compare(rs, ref_rows, key)
        if found is None:
            lines.append(f"| {variant} | {mean} | | | | | too few seeds | {tail}")
            continue
        first, welch_diff = found
        pair_hw = f"{first.half_width:.2g}" if first.paired else "n/a (different data)"
        lines.append(
            f"| {variant} | {mean} | {first.mean:+.4f} | {pair_hw} | {welch_diff.half_width:.2g} | {first.p_value:.2g} | {mark(first)} | {tail}"
        )
    return "\n".join(lines)


def compared_on(rows: list[dict]) -> tuple[str, str]:
    """The figure the variants are paired on: the continuation loss where it was scored (it compares across
    objectives, ``bench.continuation``), else the validation loss."""
    if any(is_number(lookup(r, "continuation.loss")) for r in rows):
        return "continuation.loss", "continuation loss"
    return "val_loss", "val loss"


def learning_rate(rows: list[dict]) -> str:
    """The rate the variant trained at: the grid's winner (flagged on an edge) or the config's."""
    tuned = next((r["lr"] for r in rows if isinstance(r.get("lr"), dict)), None)
    if tuned is None:
        return ""
    return f"{tuned['chosen']:g}" + (" (grid edge)" if tuned["on_edge"] else "")


def run_flags(rows: list[dict]) -> str:
    """Seeds that diverged or were still falling steeply at the end (:func:`zoo.bench.quality.convergence`)."""
    diverged = [str(r.get("seed")) for r in rows if r.get("status") == "diverged"]
    falling = [str(r.get("seed")) for r in rows if (r.get("convergence") or {}).get("not_converged")]
    flags = [f"diverged: seed {', '.join(diverged)}"] if diverged else []
    flags += [f"not converged: seed {', '.join(falling)}"] if falling else []
    return "; ".join(flags) or "ok"


def difference_eval_se(rows: list[dict], reference: list[dict]) -> float | None:
    """The evaluation noise of the variant's difference to the reference: the standard error over validation
    batches of the per-batch loss differences, the largest over the seeds both evaluated on the same batches.

    Both are evaluated on the same batches, so the split's own variation (hard and easy files) cancels in
    the difference; what is left is the part of the paired interval the validation split still sets.
    """
    theirs = {r.get("seed"): r for r in reference if r.get("status", "ok") == "ok"}
    worst = None
    for r in rows:
        ref = theirs.get(r.get("seed"))
        a, b = r.get("val_batch_losses"), (ref or {}).get("val_batch_losses")
        if r.get("status", "ok") != "ok" or not a or not b or len(a) != len(b) or len(a) < 2 or r.get("data") != ref.get("data"):
            continue
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        se = summarize(diffs).std / len(diffs) ** 0.5
        worst = se if worst is None else max(worst, se)
    return worst


def noise_notes(rows: list[dict]) -> list[str]:
    """Evaluation noise (standard error over validation batches), of each variant's loss and of its difference
    to the reference variant, against seed noise, per variant."""
    out = []
    groups = by_variant(rows)
    ref_name, ref_rows = next(iter(groups.items()), (None, []))
    for variant, rs in groups.items():
        ses = [r["val_loss_se"] for r in rs if is_number(r.get("val_loss_se"))]
        values = list(seed_values(rs, "val_loss").values())
        if ses and len(values) > 1:
            seed_sd = summarize(values).std
            line = f"{variant}: evaluation noise (s.e. over validation batches) {max(ses):.2g} nats; seed noise (s.d. over seeds) {seed_sd:.2g}"
            diff_se = difference_eval_se(rs, ref_rows) if variant != ref_name else None
            if diff_se is not None:
                line += f"; evaluation noise of its difference to {ref_name} (same batches) {diff_se:.2g}"
            out.append(line)
    return out


def failures(rows: list[dict]) -> list[str]:
    return [f"- {r['variant']} (seed {r.get('seed')}): {r.get('status')}: {r.get('error', '')}" for r in rows if r.get("status", "ok") != "ok"]


def write_report(rows: list[dict], folder: Path, *, title: str, command: str | None = None, notes: list[str] = ()) -> dict[str, Path]:
    """``results.jsonl``, ``summary.md`` and the plots in ``folder``; returns their paths."""
    folder = Path(folder)
    paths = {"results": write_jsonl(rows, folder / RESULTS)}
    images = all_plots(rows, folder / "plots")
    parts = [f"# {title}", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    env = next((r.get("env") for r in rows if r.get("env")), None)
    if env:
        parts += ["Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    parts += [summary_table(rows), "", "Mean ± 95% CI half-width over seeds (t distribution) for trained figures; "
              "**bold**: best of the column; †: differs from the best beyond seed noise (Welch's t-test, 5%). "
              "Speed is measured once per variant (median of repeated steps; ~: their spread, (max - min) / median, "
              "exceeds 20%: the machine was busy, read the figure as rough).", ""]  # fmt: skip
    key, title = compared_on(rows)
    diffs = differences_table(rows, key=key, title=title)
    if diffs:
        parts += ["## Differences to the reference", "", diffs, "", f"Compared on: {title}" + (" (each row's end given its start, the same tokens under every objective; "
                  "bench.continuation)" if key != "val_loss" else "") + ". Δ: mean over seeds of (variant - reference); paired: "
                  "t-interval of the per-seed differences (same seeds, same batches, shared weights starting equal); "
                  "unpaired: Welch's interval over the same runs; p: the paired test's two-sided p-value (Welch's where "
                  "the data differ). Beyond noise: p < 0.05. lr: the rate the variant trained at when screened "
                  "(grid edge: the best may lie outside the grid). runs: seeds that diverged, or whose loss still fell "
                  "steeply at the end (not converged: a longer budget may change the order). See docs/methodology.md.", ""]  # fmt: skip
    starts = {v: describe(rs[0].get("start"), [r.get("init") for r in rs], rs[0].get("pretrain")) for v, rs in by_variant(rows).items() if any(r.get("start") for r in rs)}
    if any(not line.startswith(SCRATCH) for line in starts.values()):
        parts += ["Started from (trainer.init_from; fresh optimizer and schedule): " + "; ".join(f"{v}: {line}" for v, line in starts.items()), ""]
    budgets = {r["variant"]: r.get("budget") for r in rows if r.get("budget")}
    matches = {r["variant"]: r.get("match") for r in rows if r.get("match")}
    if matches:
        parts += ["Size matching: " + "; ".join(f"{v}: {m}" for v, m in matches.items()), ""]
    if budgets:
        parts += ["Training budget: " + "; ".join(f"{v}: {b}" for v, b in budgets.items()), ""]
    parts += [f"- {n}" for n in notes] + [f"- Noise: {n}" for n in noise_notes(rows)] + failures(rows)
    parts += ["", *(f"![{name}](plots/{p.name})" for name, p in images.items())]
    paths["summary"] = folder / SUMMARY
    paths["summary"].write_text("\n".join(parts).rstrip() + "\n")
    paths.update(images)
    return paths


def collect(sweep_dir: Path) -> list[dict]:
    """The rows of every job's ``results.jsonl`` under ``sweep_dir``, in job order."""
    files = sorted(Path(sweep_dir).glob(f"*/{RESULTS}"), key=lambda p: (int(p.parent.name.split("-")[0]) if p.parent.name.split("-")[0].isdigit() else 1 << 30, p.parent.name))
    return [row for f in files for row in read_jsonl(f)]


def short(override: str) -> str:
    """``study/arch_variant@_global_=encdec`` -> ``arch=encdec``; others as zoo-train shortens them."""
    return re.sub(r"^[+~]*study/(\w+?)(_variant)?(@_global_)?=", r"\1=", override)


def relabel(rows: list[dict]) -> list[dict]:
    """Name each variant of a sweep by the overrides that differ between its jobs (``pos=alibi``),
    not by those every job shares (``trainer.max_steps=5``)."""
    from zoo.run.naming import job_name

    def split(override: str) -> tuple[str, str]:
        key, _, value = override.partition("=")
        return key.lstrip("+~"), value

    per_job = {r["variant"]: dict(split(o) for o in r.get("overrides") or [] if not o.lstrip("+~").startswith(NOT_VARIANT)) for r in rows}
    if len(per_job) < 2:
        return rows
    keys = dict.fromkeys(k for o in per_job.values() for k in o)
    varying = [k for k in keys if len({o.get(k) for o in per_job.values()}) > 1]
    names = {v: job_name([short(f"{k}={o[k]}") for k in varying if k in o]) or v for v, o in per_job.items()}
    if len(set(names.values())) < len(names):  # two jobs differ only in what was dropped: keep the full names
        return rows
    return [{**r, "variant": names[r["variant"]]} for r in rows]


def log_wandb(config: DictConfig, *, rows: list[dict], paths: dict[str, Path], name: str, group: str | None, folder: Path) -> None:
    """A W&B run (offline unless ``WANDB_MODE`` says otherwise) with the summary table and the plots."""
    table = [line.strip("|").split("|") for line in summary_table(rows).splitlines()]
    header, body = [h.strip() for h in table[0]], [[c.strip() for c in r] for r in table[2:]]
    images = {f"plots/{k}": p for k, p in paths.items() if str(p).endswith(".png")}
    log_table(config, header=header, body=body, images=images, name=name, group=group, folder=folder, job_type="bench")


class BenchSummary(Callback):
    """When a ``zoo-bench -m`` sweep ends: one report over all its jobs, printed and logged."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = relabel(collect(sweep_dir))
        if not rows:
            print(f"zoo-bench: no results under {sweep_dir}", file=sys.stderr)
            return
        study = OmegaConf.select(config, "hydra.runtime.choices.study", default=None) or "sweep"
        paths = write_report(rows, sweep_dir, title=f"zoo-bench: {study}", command=" ".join(sys.argv), notes=study_notes(config))
        print(summary_table(rows))
        print(f"zoo-bench: {len(by_variant(rows))} variants; report in {paths['summary']}", file=sys.stderr)
        if wandb_enabled(config):
            log_wandb(config, rows=rows, paths=paths, name=f"summary-{study}", group=sweep_dir.name, folder=sweep_dir)


def study_notes(config: DictConfig) -> list[str]:
    """The study's published expectation (``bench.expectation``), to read the table against."""
    expectation = OmegaConf.select(config, "bench.expectation", default=None)
    return [f"Expectation: {expectation}"] if expectation else []
