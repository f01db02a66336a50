"""Study throughput: several seeds trained stacked (``zoo.bench.seeds``) against one seed at a time.

The canned studies' model (byte vocabulary, dim 128, 4 layers, 4 heads, GeLU MLP, RoPE; batch 16 x 128,
float32 on CPU). Each round trains ``--seeds`` seeds for ``--steps`` steps both ways, in an order that
alternates between rounds, end to end as a study would (build, train, final evaluation): one at a time
with ``zoo.bench.quality.train_seed`` (the training loop itself) and stacked with
``zoo.bench.seeds.train_together``. Figures are (seeds x training tokens) / wall second, medians
over rounds, and the ratio of each round (median). It also prints the largest difference of the two
ways' final training losses. No assertion on speed.

    python benchmarks/bench_seeds.py                          # 3 seeds, 30 steps, 3 rounds, 2 threads
    python benchmarks/bench_seeds.py --seeds 4 --kernel eager  # the attention's eager kernel (vmaps natively)

On a shared machine the wall clock moves with other work: read the ratio of one run, not the tokens/s.
"""

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import zoo
from zoo.bench.quality import train_seed
from zoo.bench.seeds import train_together

STUDY = [
    "tokenizer=byte", "data.corpus.max_bytes=2000000", "model/ffn=gelu", "model.dim=128", "model.n_layers=4", "model.n_heads=4",
    "model.max_seq_len=128", "trainer.seq_len=128", "trainer.batch_size=16", "trainer.eval_every=0", "trainer.final_eval_batches=4",
    "sched.warmup_steps=5", "logger=none",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kernel", default="auto", help="model.attention.kernel for both ways (auto: SDPA on CPU)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="There is a performance drop")  # SDPA's vmap fallback: measured, not hidden
    cfg = zoo.compose([*STUDY, f"trainer.max_steps={args.steps}", f"trainer.threads={args.threads}", f"model.attention.kernel={args.kernel}"])
    seeds = list(range(args.seeds))
    tokens = args.seeds * args.steps * 16 * 128
    rates: dict[str, list[float]] = {"one at a time": [], "stacked": []}
    ratios, gaps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["one at a time", "stacked"] if r % 2 == 0 else ["stacked", "one at a time"]
            final = {}
            for way in order:
                t0 = time.perf_counter()
                if way == "stacked":
                    rows, _ = train_together(cfg, seeds=seeds)
                else:
                    rows = [train_seed(cfg, seed=s, out_dir=Path(tmp) / f"r{r}s{s}") for s in seeds]
                rates[way].append(tokens / (time.perf_counter() - t0))
                final[way] = [row["curve"][-1][1] for row in rows]
            ratios.append(rates["stacked"][-1] / rates["one at a time"][-1])
            gaps.append(max(abs(a - b) for a, b in zip(final["stacked"], final["one at a time"], strict=True)))
            print(f"round {r}: one at a time {rates['one at a time'][-1]:,.0f}, stacked {rates['stacked'][-1]:,.0f} (seeds x tokens)/s; ratio {ratios[-1]:.2f}")
    print(f"\n{args.seeds} seeds x {args.steps} steps x 16 x 128 tokens, {torch.get_num_threads()} threads, kernel {args.kernel}:")
    for way, values in rates.items():
        print(f"  {way:>14}: {statistics.median(values):,.0f} (seeds x tokens)/s (median of {len(values)})")
    print(f"  stacked / one at a time: {statistics.median(ratios):.2f}x (median of per-round ratios {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"  largest difference of a final training loss, stacked vs alone: {max(gaps):.2e} nats")


if __name__ == "__main__":
    main()
