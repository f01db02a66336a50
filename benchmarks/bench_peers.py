"""zoo side by side with its peers: training and inference tokens/s of one Llama-style model.

The model of the benchmarks issue (vocab 8192, dim 256, 4 layers, 4 heads of 64, SwiGLU hidden 688,
RMSNorm, RoPE, no biases, untied head; batch 8 x 256, float32 on CPU) built by zoo (eager and
``torch.compile``), by a hand-written plain-PyTorch reference (``zoo/bench/reference.py``), by HF
``transformers`` (``LlamaForCausalLM``, SDPA) and by ``x-transformers``. A training step is forward,
cross-entropy, backward and AdamW; inference is a forward under ``torch.inference_mode``. Peers are
timed in one process in interleaved rounds (a step of each in turn, in an order shuffled each round),
so a shared machine's drift hits all alike; figures are medians over every round, ratios the medians of
the rounds' ratios. Every peer runs on the system's ``malloc``, as a fresh process of any of them does,
unless ``--keep-freed-memory`` sets zoo-train's default for all of them (``zoo/malloc.py``). MFU divides the model's FLOPs (LM head included,
attention scores dense) by the fp32 matmul rate measured in the same run.

    python benchmarks/bench_peers.py                          # every peer, 2 threads
    python benchmarks/bench_peers.py --peers zoo reference --rounds 10
    python benchmarks/bench_peers.py --check                  # first prove the peers compute zoo's function
    python benchmarks/bench_peers.py --profile zoo reference  # where each step's time goes
    python benchmarks/bench_peers.py --profile zoo hf --profile-mode infer
    python benchmarks/bench_peers.py --keep-freed-memory      # every peer on zoo-train's malloc setting
    python benchmarks/bench_peers.py --host-bound --peers zoo reference hf   # the per-operator host cost
    python benchmarks/bench_peers.py --count-ops zoo reference   # operators per step (CUDA kernels on a GPU)

``--host-bound`` shrinks the model until arithmetic is negligible (dim 64, 4 heads of 16, SwiGLU 176,
vocab 512, one sequence of 32 tokens): each step then costs what its operators cost the host (Python,
module calls, dispatch), the regime of a small model on a GPU, where the host must launch kernels faster
than the GPU runs them. It is the CPU-side proxy for eager zoo's 0.78-0.90x the reference on a GPU.

Targets (tokens/s ratios): zoo / reference >= 0.97, zoo / hf >= 1.0, zoo / x-transformers >= 1.05,
zoo-compile / hf >= 1.10. Nothing is asserted: it prints the tables. ``zoo-bench study=peers`` runs
the same comparison as a Hydra app.
"""

import argparse
import json

import torch

from zoo.bench import peers
from zoo.bench.launches import kernel_counts
from zoo.bench.timing import pick_device
from zoo.malloc import keep_freed_memory

ALL = ["zoo", "zoo-compile", "reference", "hf", "x-transformers"]
#: a model whose operators cost the host more than their arithmetic (``--host-bound``)
HOST_BOUND = peers.LlamaShape(vocab_size=512, dim=64, n_layers=4, n_heads=4, hidden_dim=176, batch=1, seq_len=32)


def check(shape: peers.LlamaShape) -> None:
    """The reference and HF, with zoo's weights copied in, give zoo's logits."""
    zoo_model = peers.build_zoo(shape)
    tokens = torch.randint(shape.vocab_size, (2, shape.seq_len))
    with torch.no_grad():
        expected = zoo_model(tokens)
        for name in ("reference", "hf"):
            try:
                model = peers.build_reference(shape) if name == "reference" else peers.build_hf(shape)
            except ImportError:
                print(f"check: {name} skipped (not importable)")
                continue
            peers.copy_weights(zoo_model, name, model)
            out = model(tokens) if name == "reference" else model(input_ids=tokens, use_cache=False).logits
            print(f"check: {name} max |logits - zoo's| = {(out - expected).abs().max().item():.2e}")


def profile(names: list[str], shape: peers.LlamaShape, *, device: torch.device, steps: int, mode: str = "train", rows: int = 18) -> None:
    """torch.profiler's top ``rows`` operators (-1: all) of ``steps`` training steps (or inference
    forwards) of each named peer: the steps the comparison times (a compiled peer's loss compiled with it).
    On CPU a compiled peer's fused kernels are rows of their own (``graph_0_cpp_fused_...``), not one
    opaque row per graph."""
    from torch._inductor import config as inductor_config
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    built, notes = peers.build_peers(names, shape, device=device)
    print(*notes, sep="\n")
    tokens = torch.randint(shape.vocab_size, (shape.batch, shape.seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for peer in built:
        peer.model.train(mode == "train")
        train = peers.training_step(peer, x, y, device)

        def step(peer=peer, train=train) -> None:
            if mode == "infer":
                with torch.inference_mode():
                    peer.logits(x)
            else:
                train()

        with inductor_config.patch({"cpp.enable_kernel_profile": device.type == "cpu"}):  # compiles in the first step
            for _ in range(2):
                step()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step()
        print(f"\n## {peer.name}: {steps} {'training steps' if mode == 'train' else 'inference forwards'}\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def count_ops(names: list[str], shape: peers.LlamaShape, *, device: torch.device) -> None:
    """Operators one training step and one inference forward of each named peer call (on a GPU, the CUDA
    kernels they launch), and the operators whose counts differ from the first peer's."""
    built, notes = peers.build_peers(names, shape, device=device)
    print(*notes, sep="\n")
    tokens = torch.randint(shape.vocab_size, (shape.batch, shape.seq_len + 1), device=device)
    counts = {p.name: kernel_counts(p, tokens[:, :-1], tokens[:, 1:], device) for p in built}
    unit = "CUDA kernels" if device.type == "cuda" else "aten operators"
    print(f"| peer | {unit} / training step | / inference forward |\n|---|---:|---:|")
    print("\n".join(f"| {name} | {c['train_kernels']} | {c['infer_kernels']} |" for name, c in counts.items()))
    first, *others = counts
    for mode in ("train", "infer"):
        base = counts[first][f"{mode}_kernel_names"]
        for other in others:
            theirs = counts[other][f"{mode}_kernel_names"]
            diff = {k: (base.get(k, 0), theirs.get(k, 0)) for k in sorted(base.keys() | theirs.keys()) if base.get(k, 0) != theirs.get(k, 0)}
            print(f"\n{mode}, {first} against {other}: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in diff.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", nargs="+", default=ALL, choices=ALL)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes the comparison runs in, one after the other (medians over them)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per process (the order is shuffled each round)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per peer per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per peer first (compilation included)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads, the same for every peer")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--host-bound", action="store_true", help="a tiny model, timed for its per-operator host cost (ignores --batch, --seq-len)")
    parser.add_argument("--xt-flash", action="store_true", help="x-transformers with attn_flash=True (its SDPA path)")
    parser.add_argument("--check", action="store_true", help="prove the reference and HF compute zoo's function first")
    parser.add_argument("--profile", nargs="*", metavar="PEER", help="profile a training step of these peers instead")
    parser.add_argument("--count-ops", nargs="*", metavar="PEER", help="count the operators of a step of these peers instead")
    parser.add_argument("--profile-mode", choices=["train", "infer"], default="train", help="what --profile runs")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory for reuse, for every peer (zoo.malloc; zoo-train's default)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    shape = HOST_BOUND if args.host_bound else peers.LlamaShape(batch=args.batch, seq_len=args.seq_len)
    if args.check:
        check(shape)
    if args.count_ops is not None:
        count_ops(args.count_ops or ["zoo", "reference"], shape, device=device)
        return
    if args.profile is not None:
        if args.keep_freed_memory:
            keep_freed_memory()
        profile(args.profile or ["zoo", "reference"], shape, device=device, steps=3, mode=args.profile_mode)
        return
    report = peers.run_in_processes(
        args.processes, threads=args.threads, keep_memory=args.keep_freed_memory, names=args.peers, shape=shape,
        device=device, rounds=args.rounds, steps=args.steps, warmup=args.warmup, xt_flash=args.xt_flash,
    )  # fmt: skip
    print(f"# peers on {device.type}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(peers.markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
