"""Kept freed memory against glibc's default: training and prefill tokens/s of zoo-train's default model.

``trainer.keep_freed_memory`` (``zoo/malloc.py``) is process-wide and cannot be undone, so the two
settings run in fresh processes, alternating (system, kept, system, kept, ...), and a ratio is the
median over pairs of the kept process's tokens/s over its partner's. The model is zoo-train's default
with the vocabulary its tokenizer learns (8192), at its batch (16 x 256), float32 on CPU.

    python benchmarks/bench_malloc.py                 # 3 pairs, 2 threads
    python benchmarks/bench_malloc.py --pairs 5 --steps 8
"""

import argparse
import json
import subprocess
import sys

import torch

from zoo.bench.timing import median, pick_device


def measure(keep: bool, *, threads: int, batch: int, seq_len: int, steps: int) -> dict:
    """Training and prefill tokens/s in this (fresh) process, with or without kept memory."""
    import zoo
    from zoo.bench.speed import prefill_speed, training_speed
    from zoo.malloc import keep_freed_memory

    torch.set_num_threads(threads)
    kept = keep and keep_freed_memory()
    model = zoo.build(["model.vocab_size=8192", f"model.max_seq_len={seq_len}"])
    device = pick_device("cpu")
    speed = training_speed(model, batch=batch, seq_len=seq_len, device=device, steps=steps, warmup=2)
    speed |= prefill_speed(model, batch=batch, seq_len=seq_len, device=device, steps=steps, warmup=2)
    return speed | {"kept": kept}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="pairs of fresh processes (system, then kept)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps and forwards per process (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--one", choices=["system", "kept"], help=argparse.SUPPRESS)  # a child process: measure, print JSON
    args = parser.parse_args(argv)
    sizes = ["--threads", str(args.threads), "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
    if args.one:
        print(json.dumps(measure(args.one == "kept", threads=args.threads, batch=args.batch, seq_len=args.seq_len, steps=args.steps)))
        return {}

    runs = {False: [], True: []}
    for _ in range(args.pairs):
        for keep in (False, True):
            child = [sys.executable, __file__, "--one", "kept" if keep else "system", *sizes]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            runs[keep].append(json.loads(out.splitlines()[-1]))
    print(f"# kept freed memory / system malloc, {args.pairs} pairs of processes, {args.threads} threads, "
          f"batch {args.batch} x {args.seq_len}\n")  # fmt: skip
    print("| figure | system (median) | kept (median) | kept / system (median of pairs) |\n|---|---:|---:|---:|")
    out = {}
    for key in ("train_tokens_per_s", "prefill_tokens_per_s"):
        ratio = median([k[key] / s[key] for s, k in zip(runs[False], runs[True], strict=True)])
        system, kept = median([r[key] for r in runs[False]]), median([r[key] for r in runs[True]])
        print(f"| {key} | {system:,.0f} | {kept:,.0f} | {ratio:.3f} |")
        out[key] = ratio
    if not all(r["kept"] for r in runs[True]):
        print("- freed memory was not kept (not glibc, or another allocator preloaded): the ratio compares like with like")
    return out


if __name__ == "__main__":
    main()
