"""A 4-job sweep on Hydra's joblib launcher (2 workers) against the basic launcher (one job after another).

The same sweep (``model/ffn`` x ``model/norm``, a small model on the embedded corpus, W&B off), run
through both launchers in turn, ``--rounds`` times, alternating which goes first; each job gets
``cores / workers`` torch threads under joblib (``zoo.run.launchers``) and the machine's cores under
the basic launcher. Prints the wall-time ratio (basic / joblib: above 1, joblib is faster) and checks
that both summaries list the same variants with the same status and validation loss.

    python benchmarks/bench_launchers.py [--steps 60] [--rounds 1]
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["-m", "model/ffn=swiglu,gelu", "model/norm=rmsnorm,layernorm", "experiment=smoke", "logger=none"]


def sweep(folder: Path, *, launcher: list[str], steps: int) -> tuple[float, list[dict]]:
    """Run the sweep into ``folder``; its wall time and its summary rows."""
    cmd = [sys.executable, "-m", "zoo.train", *SWEEP, f"trainer.max_steps={steps}", f"hydra.sweep.dir={folder}", *launcher]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall, list(csv.DictReader((folder / "summary.csv").open()))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per job")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each launcher, alternating the order")
    parser.add_argument("--workers", type=int, default=2, help="joblib's n_jobs")
    args = parser.parse_args(argv)
    launchers = {"basic": [], "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.workers}"]}
    walls: dict[str, list[float]] = {name: [] for name in launchers}
    summaries: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(launchers) if r % 2 == 0 else list(reversed(launchers))
            for name in order:
                wall, rows = sweep(Path(tmp) / f"{name}-{r}", launcher=launchers[name], steps=args.steps)
                walls[name].append(wall)
                summaries[name] = rows
    same = [(a["variant"], a["status"]) == (b["variant"], b["status"]) for a, b in zip(summaries["basic"], summaries["joblib"])]
    gaps = [abs(float(a["val_loss"]) - float(b["val_loss"])) for a, b in zip(summaries["basic"], summaries["joblib"])]
    basic, joblib = statistics.median(walls["basic"]), statistics.median(walls["joblib"])
    print(f"cores: {os.cpu_count()}, jobs: {len(summaries['basic'])} x {args.steps} steps, rounds: {args.rounds}")
    print(f"basic launcher: {basic:.1f} s; joblib ({args.workers} workers): {joblib:.1f} s; ratio basic / joblib: {basic / joblib:.2f}x")
    print(f"summaries: same variants and status: {all(same) and len(same) == 4}; largest val_loss gap: {max(gaps):.2e}")
    print("(the losses differ only by the threads each job had: floating-point sums in another order)")
    return {"basic_s": basic, "joblib_s": joblib, "ratio": basic / joblib, "max_val_loss_gap": max(gaps)}


if __name__ == "__main__":
    main()
