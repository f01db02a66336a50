"""Sub-quadratic token mixers and sparse attention against full attention, as ratios in one run.

One-layer causal models (dim 128, 4 heads, the default FFN), each differing only in ``model/attention``,
time a training step's forward + backward on random tokens at each sequence length. Runs are
interleaved (every variant once per round, rounds repeated) and the median is reported, so a machine
busy with other work skews all variants alike; the figure to read is each variant's time as a ratio
of full attention's (``mha``) at the same length: below 1, faster.

    python benchmarks/bench_mixers.py                                   # 1024 and 4096 tokens
    python benchmarks/bench_mixers.py --seqs 512 2048 8192 --threads 1
    python benchmarks/bench_mixers.py --variants mha retention mamba2
"""

import argparse
import statistics
import time

import torch

import zoo

VARIANTS = ["mha", "retention", "mamba2", "performer", "based", "strided", "fixed", "bigbird"]


def build(variant: str, seq: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build([f"model/attention={variant}", "model.n_layers=1", "model.vocab_size=256", f"model.max_seq_len={seq}"])


def step_seconds(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    start = time.perf_counter()
    model(tokens).float().logsumexp(-1).mean().backward()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "mha" not in args.variants:
        args.variants = ["mha", *args.variants]
    out = {}
    for seq in args.seqs:
        models = {v: build(v, seq) for v in args.variants}
        tokens = torch.randint(0, 256, (1, seq))
        for model in models.values():  # warm-up: first calls allocate
            step_seconds(model, tokens)
        times: dict[str, list[float]] = {v: [] for v in models}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for v in order:
                times[v].append(step_seconds(models[v], tokens))
        medians = {v: statistics.median(t) for v, t in times.items()}
        out[seq] = medians
        print(f"\n{seq} tokens, forward + backward, {torch.get_num_threads()} threads, median of {args.rounds}:")
        print("| variant | ms | / mha |\n|---|---:|---:|")
        for v, s in medians.items():
            print(f"| {v} | {s * 1e3:,.0f} | {s / medians['mha']:.2f} |")
    return out


if __name__ == "__main__":
    main()
