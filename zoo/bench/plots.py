"""The report's pictures (matplotlib, Agg backend, imported lazily): loss vs tokens per variant,
speed vs quality with its Pareto front, extrapolation curves, and tokens/s vs sequence length.

Each function takes the per-seed result rows of :mod:`zoo.bench.report`, writes one small PNG and
returns its path, or ``None`` when the rows hold nothing to draw.
"""

import math
from pathlib import Path

from zoo.bench.stats import summarize


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log2_axis(ax, values: list[float], suffix: str = "") -> None:
    """A log2 x axis labelled with the values themselves (``256``, ``2x``), not powers of two."""
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{v:g}{suffix}" for v in ticks])
    ax.minorticks_off()


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    fig.clf()
    _pyplot().close(fig)
    return path


def by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by variant, in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    return groups


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def loss_curves(rows: list[dict], path: Path) -> Path | None:
    """Training loss against tokens seen: the mean over seeds, shaded between the seeds' min and max."""
    groups = {v: [r["curve"] for r in rs if r.get("curve")] for v, rs in by_variant(rows).items()}
    groups = {v: cs for v, cs in groups.items() if cs}
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, curves in groups.items():
        n = min(len(c) for c in curves)
        tokens = [curves[0][i][0] for i in range(n)]
        losses = [[c[i][1] for c in curves] for i in range(n)]
        (line,) = ax.plot(tokens, [sum(v) / len(v) for v in losses], label=variant, lw=1.2)
        if len(curves) > 1:
            ax.fill_between(tokens, [min(v) for v in losses], [max(v) for v in losses], color=line.get_color(), alpha=0.15, lw=0)
    ax.set(xlabel="training tokens", ylabel="training loss (nats/token)", title="Loss vs tokens (mean over seeds, band: min-max)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both speed (higher) and loss (lower), by speed."""
    front = [i for i, (s, q) in enumerate(points) if not any(s2 >= s and q2 <= q and (s2, q2) != (s, q) for s2, q2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def speed_quality(rows: list[dict], path: Path, *, speed_key: str = "train_tokens_per_s", quality_key: str = "val_loss") -> Path | None:
    """Validation loss (mean, 95% CI bars) against training tokens/s, the Pareto front joined."""
    labels, points, errors = [], [], []
    for variant, rs in by_variant(rows).items():
        speeds = [r.get(speed_key) for r in rs if is_number(r.get(speed_key))]
        losses = [r.get(quality_key) for r in rs if is_number(r.get(quality_key))]
        if speeds and losses:
            s = summarize(losses)
            labels.append(variant)
            points.append((speeds[0], s.mean))
            errors.append(0.0 if s.n < 2 else s.half_width)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y), e in zip(labels, points, errors, strict=True):
        ax.errorbar([x], [y], yerr=[e], fmt="o", capsize=3, label=label)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=0.8, label="Pareto front")
    ax.set(xlabel="training tokens/s", ylabel=f"{quality_key} (mean, 95% CI)", title="Speed vs quality")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def extrapolation(rows: list[dict], path: Path) -> Path | None:
    """Validation loss against evaluation length / training length, per variant (mean over seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for variant, rs in by_variant(rows).items():
        factors = sorted({k for r in rs for k in (r.get("extrapolation") or {})}, key=lambda k: float(k.rstrip("x")))
        xs, ys = [], []
        for f in factors:
            values = [r["extrapolation"][f] for r in rs if is_number((r.get("extrapolation") or {}).get(f))]
            if values:
                xs.append(float(f.rstrip("x")))
                ys.append(sum(values) / len(values))
        if xs:
            stops = " (stops: max length)" if len(xs) < len(factors) else ""
            ax.plot(xs, ys, "o-", label=variant + stops, lw=1.2)
            drawn = True
    if not drawn:
        _pyplot().close(fig)
        return None
    _plain_log2_axis(ax, [x for line in ax.get_lines() for x in line.get_xdata()], "x")
    ax.set(xlabel="evaluation length / training length", ylabel="validation loss (nats/token)", title="Length extrapolation")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def scaling(rows: list[dict], path: Path) -> Path | None:
    """Training (solid) and prefill (dashed) tokens/s against sequence length, per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for variant, rs in by_variant(rows).items():
        points = [p for p in (rs[0].get("scaling") or []) if is_number(p.get("train_tokens_per_s"))]
        if not points:
            continue
        xs = [p["seq_len"] for p in points]
        (line,) = ax.plot(xs, [p["train_tokens_per_s"] for p in points], "o-", label=f"{variant} train", lw=1.2)
        ax.plot(xs, [p["prefill_tokens_per_s"] for p in points], "s--", color=line.get_color(), label=f"{variant} prefill", lw=1.0)
        drawn = True
    if not drawn:
        _pyplot().close(fig)
        return None
    _plain_log2_axis(ax, [x for line in ax.get_lines() for x in line.get_xdata()])
    ax.set_yscale("log")
    ax.set(xlabel="sequence length", ylabel="tokens/s", title="Throughput vs sequence length (fixed tokens per batch)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def all_plots(rows: list[dict], folder: Path) -> dict[str, Path]:
    """Every plot the rows support, as ``{name: path}`` under ``folder``."""
    made = {
        "loss_vs_tokens": loss_curves(rows, folder / "loss_vs_tokens.png"),
        "speed_vs_quality": speed_quality(rows, folder / "speed_vs_quality.png"),
        "extrapolation": extrapolation(rows, folder / "extrapolation.png"),
        "tokens_per_s_vs_seq_len": scaling(rows, folder / "tokens_per_s_vs_seq_len.png"),
    }
    return {name: p for name, p in made.items() if p is not None}
