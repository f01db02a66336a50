"""Sub-quadratic token mixers and sparse attention against full attention, as ratios in one run.

One-layer causal models (dim 128, 4 heads, the default FFN), each differing only in ``model/attention``,
time a training step's forward + backward on random tokens at each sequence length. Runs are
interleaved (every variant once per round, rounds repeated) and the median is reported, so a machine
busy with other work skews all variants alike; the figure to read is each variant's time as a ratio
of full attention's (``mha``) at the same length: below 1, faster.

    python benchmarks/bench_mixers.py                                   # 1024 and 4096 tokens
    python benchmarks/bench_mixers.py --seqs 512 2048 8192 --threads 1
    python benchmarks/bench_mixers.py --variants mha retention mamba2
    python benchmarks/bench_mixers.py --prefix        # prefix decoders, half of each row the prefix
    python benchmarks/bench_mixers.py --documents 8   # each row packs 8 documents, positions restarting

``--prefix`` builds prefix decoders (``model=prefix``) whose first half of each row is the bidirectional
prefix: the sparse patterns then gather their candidates from both sides. Its default variants are the ones
a prefix mask allows (the recurrent and linear mixers read left to right only). ``--documents N`` packs
``N`` documents of random lengths into each row, as training batches do (``data.boundaries=mask``):
attention stays inside a document and positions restart at each one.
"""

import argparse
import statistics
import time

import torch

import zoo

VARIANTS = ["mha", "retention", "mamba2", "performer", "based", "strided", "fixed", "bigbird"]
#: the variants a prefix mask allows
PREFIX_VARIANTS = ["mha", "strided", "fixed", "bigbird"]


def build(variant: str, seq: int, *, arch: str = "causal") -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build([f"model={arch}", f"model/attention={variant}", "model.n_layers=1", "model.vocab_size=256", f"model.max_seq_len={seq}"])


def step_seconds(model: torch.nn.Module, tokens: torch.Tensor, **inputs) -> float:
    start = time.perf_counter()
    model(tokens, **inputs).float().logsumexp(-1).mean().backward()
    return time.perf_counter() - start


def packed_segments(seq: int, documents: int) -> torch.Tensor:
    """``(1, seq)`` document ids of a row packing ``documents`` documents whose lengths are drawn at random (seed 0)."""
    starts = torch.randperm(seq - 1, generator=torch.Generator().manual_seed(0))[: documents - 1] + 1
    return torch.zeros(1, seq, dtype=torch.long).index_fill_(1, starts, 1).cumsum(1)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--variants", nargs="+", default=None, help="default: every mixer (with --prefix, those a prefix allows)")
    parser.add_argument("--prefix", action="store_true", help="prefix decoders, the first half of each row the prefix")
    parser.add_argument("--documents", type=int, default=1, help="documents packed into each row (random lengths, positions restarting)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants or (PREFIX_VARIANTS if args.prefix else VARIANTS)
    if "mha" not in variants:
        variants = ["mha", *variants]
    out = {}
    for seq in args.seqs:
        models = {v: build(v, seq, arch="prefix" if args.prefix else "causal") for v in variants}
        tokens = torch.randint(0, 256, (1, seq))
        inputs = {"prefix_len": torch.tensor([seq // 2])} if args.prefix else {}
        if args.documents > 1:
            inputs["segments"] = packed_segments(seq, args.documents)
        for model in models.values():  # warm-up: first calls allocate
            step_seconds(model, tokens, **inputs)
        times: dict[str, list[float]] = {v: [] for v in models}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for v in order:
                times[v].append(step_seconds(models[v], tokens, **inputs))
        medians = {v: statistics.median(t) for v, t in times.items()}
        out[seq] = medians
        what = "prefix decoders (half the row the prefix)" if args.prefix else "causal"
        what += f", {args.documents} documents a row" if args.documents > 1 else ""
        print(f"\n{seq} tokens, {what}, forward + backward, {torch.get_num_threads()} threads, median of {args.rounds}:")
        print("| variant | ms | / mha |\n|---|---:|---:|")
        for v, s in medians.items():
            print(f"| {v} | {s * 1e3:,.0f} | {s / medians['mha']:.2f} |")
    return out


if __name__ == "__main__":
    main()
