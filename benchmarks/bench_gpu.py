"""The whole GPU check in one call: zoo against a hand-written reference and HF at sizes that load a GPU.

Two Llama-style models (no biases, untied head, RMSNorm, RoPE, SwiGLU), sequence 2048, bf16 autocast
with fp32 master weights and fused AdamW, as zoo-train trains on CUDA:

- ``125m``: vocab 32000, dim 768, 12 layers, 12 heads of 64, SwiGLU 2048, batch 16 (134M parameters);
- ``1b``: vocab 32000, dim 2048, 16 layers, 16 heads of 128, SwiGLU 5632, batch 4 (0.95B parameters).

For each: training and inference tokens/s of zoo (eager and compiled), the reference and HF, timed in
interleaved rounds as ``bench_peers.py`` does (ratios are medians of the rounds' paired ratios), MFU
against the bf16 matmul rate measured in the same process, peak memory of a training step, and the
CUDA kernels one training step and one forward launch (the launches eager zoo adds over the reference).
Then greedy decoding tokens/s at batch 1 and 64 (prompt 128, 128 new tokens) of zoo and HF ``generate``
(its default dynamic cache, and its static cache compiled when ``--hf-static`` is given).

    python benchmarks/bench_gpu.py                        # everything, ~5 minutes on an H200
    python benchmarks/bench_gpu.py --sizes 125m --no-decode
    python benchmarks/bench_gpu.py --json gpu.json

Nothing is asserted; it prints the tables (and writes the JSON). It needs a CUDA device.
"""

import argparse
import json
import time
from dataclasses import asdict

import torch

from zoo.bench import peers
from zoo.bench.launches import kernel_counts
from zoo.bench.timing import autocast, matmul_rate, peak_memory, reset_peak_memory, synchronize

SHAPES = {
    "125m": peers.LlamaShape(vocab_size=32000, dim=768, n_layers=12, n_heads=12, hidden_dim=2048, batch=16, seq_len=2048),
    "1b": peers.LlamaShape(vocab_size=32000, dim=2048, n_layers=16, n_heads=16, hidden_dim=5632, batch=4, seq_len=2048),
}
PEERS = ["zoo", "zoo-compile", "reference", "hf"]


def training_memory(peer: peers.Peer, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> int:
    """Peak bytes allocated by one training step (weights, gradients and AdamW state included)."""
    peer.model.train()
    step = peers.training_step(peer, x, y, device)
    step()
    synchronize(device)
    reset_peak_memory(device)
    step()
    synchronize(device)
    return peak_memory(device)


def compare_size(name: str, shape: peers.LlamaShape, *, names: list[str], device: torch.device, rate: float, args) -> dict:
    built, notes = peers.build_peers(names, shape, device=device)
    tokens = torch.randint(shape.vocab_size, (shape.batch, shape.seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    extra = {}
    for peer in built:  # one at a time: the others' optimizer state is not yet allocated
        extra[peer.name] = {"peak_train_bytes": training_memory(peer, x, y, device)}
        if not peer.compiled:
            extra[peer.name] |= kernel_counts(peer, x, y, device)
    report_names = {}
    results = peers.compare(built, shape=shape, device=device, rounds=args.rounds, steps=args.steps, warmup=args.warmup)
    for peer_name, row in results.items():
        row |= {k: v for k, v in extra[peer_name].items() if not k.endswith("_names")}
        report_names[peer_name] = {k: v for k, v in extra[peer_name].items() if k.endswith("_names")}
    flops = peers.build_zoo(shape).flops(seq_len=shape.seq_len).per_token()["total"]
    peers.add_mfu(results, flops_per_token=flops, matmul_flops=rate)
    report = {"size": name, "shape": asdict(shape), "results": results, "ratios": peers.ratios(results), "notes": notes,
              "flops_per_token": flops, "kernel_names": report_names, "params": {p.name: sum(t.numel() for t in p.model.parameters()) for p in built}}  # fmt: skip
    del built
    torch.cuda.empty_cache()
    return report


def decode_speed(shape: peers.LlamaShape, *, device: torch.device, batches: list[int], prompt_len: int, new_tokens: int, hf_static: bool) -> list[dict]:
    """Greedy decoding tokens/s (new tokens over the whole call, prefill included) of zoo and HF."""
    from zoo.generation import generate

    zoo_model = peers.build_zoo(peers.LlamaShape(**{**asdict(shape), "seq_len": prompt_len + new_tokens})).to(device).eval()
    rows = []
    hf = None
    try:
        hf = peers.build_hf(peers.LlamaShape(**{**asdict(shape), "seq_len": prompt_len + new_tokens})).to(device).eval()
        hf.generation_config.eos_token_id = None
        hf.generation_config.pad_token_id = 0
    except ImportError:
        pass
    for batch in batches:
        prompt = torch.randint(shape.vocab_size, (batch, prompt_len), device=device)
        runs = {"zoo": lambda: generate(zoo_model, prompt, max_new_tokens=new_tokens, temperature=0.0)}
        if hf is not None:
            runs["hf"] = lambda: hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            if hf_static:
                runs["hf-static-compiled"] = lambda: hf.generate(  # transformers compiles a static-cache decode step itself
                    prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, cache_implementation="static"
                )
        for label, fn in runs.items():
            with torch.inference_mode(), autocast(device):
                fn()  # warm-up (compilation, graphs)
                synchronize(device)
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    fn()
                    synchronize(device)
                    times.append(time.perf_counter() - t0)
            seconds = sorted(times)[1]
            rows.append({"peer": label, "batch": batch, "tokens_per_s": batch * new_tokens / seconds, "ms_per_step": 1e3 * seconds / new_tokens})
    return rows


def markdown(env: dict, reports: list[dict], decode: list[dict]) -> str:
    lines = [f"# GPU check: {env['gpu']}, torch {env['torch']}, transformers {env['transformers']}",
             f"bf16 matmul rate measured: {env['matmul_tflops']:.0f} TFLOP/s", ""]  # fmt: skip
    for r in reports:
        s = r["shape"]
        lines += [f"## {r['size']}: {r['params'].get('zoo', 0) / 1e6:.0f}M parameters, batch {s['batch']} x {s['seq_len']}", "",
                  "| peer | train tok/s | infer tok/s | MFU train | MFU infer | peak train GB | kernels train / infer |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, row in r["results"].items():
            kernels = f"{row['train_kernels']} / {row['infer_kernels']}" if "train_kernels" in row else "compiled"
            lines.append(
                f"| {name} | {row['train_tokens_per_s']:,.0f} | {row['infer_tokens_per_s']:,.0f} | {row['mfu_train']:.1%} | "
                f"{row['mfu_infer']:.1%} | {row['peak_train_bytes'] / 1e9:.1f} | {kernels} |"
            )
        lines += ["", "| ratio | train | infer |", "|---|---:|---:|"]
        lines += [f"| {q['ratio']} | {q['train']:.3f} | {q['infer']:.3f} |" for q in r["ratios"]]
        lines += [f"- {n}" for n in r["notes"]] + [""]
    if decode:
        lines += ["## Greedy decoding (125m, prompt 128, 128 new tokens, prefill included)", "",
                  "| peer | batch | tokens/s | ms per token |", "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {d['peer']} | {d['batch']} | {d['tokens_per_s']:,.0f} | {d['ms_per_step']:.2f} |" for d in decode]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--decode-batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--hf-static", action="store_true", help="also HF generate with its static cache, compiled")
    parser.add_argument("--json", help="write the report as JSON to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = "absent"
    rate = matmul_rate(device=device)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": hf_version, "matmul_tflops": rate / 1e12}
    reports = []
    for size in args.sizes:
        t0 = time.perf_counter()
        reports.append(compare_size(size, SHAPES[size], names=args.peers, device=device, rate=rate, args=args))
        print(f"{size}: {time.perf_counter() - t0:.0f} s", flush=True)
    decode = [] if args.no_decode else decode_speed(
        SHAPES["125m"], device=device, batches=args.decode_batches, prompt_len=128, new_tokens=128, hf_static=args.hf_static
    )  # fmt: skip
    print(markdown(env, reports, decode))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "sizes": reports, "decode": decode}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
