"""Sliding-window attention: does its cost grow linearly with the sequence, and beat full attention?

Times one attention call (inference: forward under ``no_grad``; training: forward + backward) of
the sliding-window kernels (``local``, ``flex``, and ``sdpa`` with a dense window mask) against full
causal SDPA, at several sequence lengths. Runs are interleaved (every kernel once per round, rounds
repeated) and the median is reported, so a machine busy with other work skews all kernels alike.

Targets (issue 3): the 4096 call costs <= 4.8x the 1024 call (linear within 1.2x), and at 4096 the
window is >= 2x faster than full causal attention.

    python benchmarks/bench_attention.py                      # CPU, window 256, 4 heads x 64, batch 1
    python benchmarks/bench_attention.py --device cuda --dtype bfloat16
    python benchmarks/bench_attention.py --bias alibi
    python benchmarks/bench_attention.py --threads 1 --clock cpu   # on a machine busy with other jobs
"""

import argparse
import statistics
import time

import torch

from zoo.attention.kernels import KERNEL_SPECS
from zoo.attention.mask import Mask
from zoo.pos import ALiBi, T5RelativeBias


def no_bias(q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
    return None


def make_bias(name: str, n_heads: int, head_dim: int, device: str):
    if name == "none":
        return no_bias
    scheme = {"alibi": ALiBi, "t5": T5RelativeBias}[name]
    return scheme(n_heads * head_dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=1 << 16, causal=True).to(device).bias


def runs(kernel: str, mode: str, device: torch.device) -> bool:
    """Whether ``kernel`` can run in ``mode`` here, as it declares."""
    name = "sdpa" if kernel == "causal" else kernel
    return KERNEL_SPECS[name].refusal(device=device, backward=mode == "train", dropout=0.0) is None


def time_call(fn, mode: str, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    if mode == "train":
        fn().sum().backward()
    else:
        with torch.no_grad():
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def bench(args) -> dict[tuple[int, str, str], float]:
    """Median milliseconds per call, keyed by (sequence length, mode, kernel)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    h, d, w = args.heads, args.head_dim, args.window
    bias = make_bias(args.bias, h, d, args.device)
    results = {}
    for n in args.seqs:
        shape = (args.batch, h, n, d)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        pos = torch.arange(n, device=device)[None]
        window, causal = Mask(causal=True, window=w), Mask(causal=True)

        def call(kernel: str):
            mask = causal if kernel == "causal" else window
            fn = KERNEL_SPECS["sdpa" if kernel == "causal" else kernel].fn
            return lambda: fn(q, k, v, mask=mask, q_pos=pos, k_pos=pos, bias=bias, scale=d**-0.5)

        for mode in args.modes:
            kernels = [kernel for kernel in args.kernels if runs(kernel, mode, device)]
            calls = {kernel: call(kernel) for kernel in kernels}
            for kernel in kernels:  # warm-up: compilation, allocator, caches
                for _ in range(args.warmup):
                    time_call(calls[kernel], mode, device, clock)
            times: dict[str, list[float]] = {kernel: [] for kernel in kernels}
            for _ in range(args.repeats):
                for kernel in kernels:
                    times[kernel].append(time_call(calls[kernel], mode, device, clock))
            for kernel in kernels:
                results[n, mode, kernel] = 1000 * statistics.median(times[kernel])
    return results


def report(results: dict, args) -> None:
    first, last = min(args.seqs), max(args.seqs)
    print(f"\nwindow {args.window}, {args.heads} heads x {args.head_dim}, batch {args.batch}, bias {args.bias}, "
          f"{args.device} {args.dtype}, {torch.get_num_threads()} threads, median {args.clock} time of {args.repeats} interleaved runs (ms)")
    for mode in args.modes:
        kernels = [kernel for kernel in args.kernels if (first, mode, kernel) in results]
        print(f"\n{mode} ({'forward + backward' if mode == 'train' else 'forward, no_grad'})")
        print(f"{'seq':>6} " + " ".join(f"{kernel:>10}" for kernel in kernels))
        for n in args.seqs:
            print(f"{n:>6} " + " ".join(f"{results[n, mode, kernel]:>10.2f}" for kernel in kernels))
        growth = {kernel: results[last, mode, kernel] / results[first, mode, kernel] for kernel in kernels}
        print(f"{last}/{first}".rjust(6) + " " + " ".join(f"{growth[kernel]:>9.2f}x" for kernel in kernels)
              + f"   (linear: {last / first:.1f}x, target <= {1.2 * last / first:.1f}x)")
        if "causal" in kernels:
            full = results[last, mode, "causal"]
            print("vs full".rjust(6) + " " + " ".join(f"{full / results[last, mode, kernel]:>9.2f}x" for kernel in kernels)
                  + f"   (speedup over full causal attention at {last}, target >= 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bias", choices=["none", "alibi", "t5"], default="none")
    parser.add_argument("--kernels", nargs="+", default=["local", "flex", "sdpa", "causal"],
                        help="kernels to time; 'sdpa' is the window as a dense mask, 'causal' full causal SDPA")
    parser.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train", "infer"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time, steadier than wall time on a machine shared with other jobs "
                             "(use with --threads 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report(bench(args), args)


if __name__ == "__main__":
    main()
