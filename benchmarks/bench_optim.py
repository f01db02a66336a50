"""AdamW step time: torch's fused kernel against its per-tensor loop and its foreach variant.

The optimizer alone (gradients fixed), on the peer model of ``bench_peers.py`` (7.36M parameters),
timed interleaved over rounds, medians; the ratio is why zoo-train and every benchmark's training
step use the fused kernel on CPU (``zoo.train.optim.fused_by_default``).

    python benchmarks/bench_optim.py [--threads 2] [--rounds 15]
"""

import argparse
import statistics

import torch

from zoo.bench.peers import LlamaShape, build_zoo
from zoo.bench.timing import time_calls

VARIANTS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models, optimizers, times = {}, {}, {name: [] for name in VARIANTS}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = build_zoo(LlamaShape()).to(device)
        for p in models[name].parameters():
            p.grad = torch.randn_like(p)
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4, **kw)
        optimizers[name].step()  # allocate the moments
    for r in range(args.rounds):
        names = list(VARIANTS)
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name] += time_calls(optimizers[name].step, device=device, repeats=1, warmup=0)
    n = sum(p.numel() for p in models["fused"].parameters())
    print(f"AdamW step, {n / 1e6:.2f}M parameters, {device}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    for name, value in ms.items():
        print(f"{name:8s} {value:8.1f} ms   loop / this: {ms['loop'] / value:.2f}x")
    return ms


if __name__ == "__main__":
    main()
