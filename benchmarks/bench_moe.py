"""Mixture-of-Experts training speed: zoo's MoE vs HF transformers' Mixtral, and vs a dense zoo model.

The small Llama-sized config of the benchmarks issue with its FFN made a MoE (vocab 8192, dim 256,
4 layers, 4 heads of 64, RMSNorm, RoPE, no biases; 4 SwiGLU experts of hidden 688, top-2), trained on
batch 8 x 256 in float32 on CPU (bf16 autocast on CUDA). A step is forward, cross-entropy plus the
router losses, backward and an AdamW update. Models are timed in interleaved rounds (each round
rotates the order) so a shared machine's drift hits all of them alike; figures are medians.

Peers: ``zoo`` (the MoE), ``zoo-compile`` (the same under ``torch.compile``, as zoo's
``compile=true``), ``hf`` (``MixtralForCausalLM`` with its router loss on, as one trains it; its
default grouped-matmul experts), ``hf-noaux`` (the same without the router loss), ``hf-eager``
(its loop over experts, ``experts_implementation="eager"``, as in transformers 4), ``dense``
(zoo with one SwiGLU of hidden ``top_k * 688``: the MoE's active parameters), ``dense-compile``
(the same under ``torch.compile``).

    python benchmarks/bench_moe.py                      # zoo, hf, dense
    python benchmarks/bench_moe.py --peers zoo zoo-compile hf hf-eager dense --rounds 5

No assertion on speed: it prints tokens/s and the ratios (target: zoo / hf >= 1.2) from
wall-clock medians. ``dense / hf`` is the ceiling of that ratio: no MoE outruns a dense model that
does its active FLOPs in bigger matmuls and without routing. "CPU work" is the process's CPU
seconds per step (all threads), which a busy shared machine disturbs less than the wall clock
(with ``--threads 1`` it is the work done).
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from zoo.bench.speed import adamw
from zoo.objectives import add_aux_loss

VOCAB, DIM, LAYERS, HEADS, HIDDEN, THETA, EPS = 8192, 256, 4, 4, 688, 10000.0, 1e-6


def zoo_overrides(*, seq_len: int, ffn: list[str]) -> list[str]:
    return [
        "model=causal",
        "model/norm=rmsnorm",
        "model/residual=pre",
        "model/pos=rope",
        "model/attention=mha",
        f"model.vocab_size={VOCAB}",
        f"model.dim={DIM}",
        f"model.n_layers={LAYERS}",
        f"model.n_heads={HEADS}",
        f"model.max_seq_len={seq_len}",
        f"model.pos.theta={THETA}",
        f"model.norm.eps={EPS}",
        "model.tie_embeddings=false",
        *ffn,
    ]


def build_zoo_moe(*, seq_len: int, n_experts: int, top_k: int) -> torch.nn.Module:
    import zoo

    ffn = ["model/ffn=moe", f"model.ffn.n_experts={n_experts}", f"model.ffn.router.top_k={top_k}", f"model.ffn.expert.hidden_dim={HIDDEN}"]
    return zoo.build(zoo_overrides(seq_len=seq_len, ffn=ffn))


def build_zoo_dense(*, seq_len: int, top_k: int) -> torch.nn.Module:
    import zoo

    return zoo.build(zoo_overrides(seq_len=seq_len, ffn=["model/ffn=swiglu", f"model.ffn.hidden_dim={top_k * HIDDEN}"]))


def build_hf_mixtral(*, seq_len: int, n_experts: int, top_k: int, aux: bool, experts: str | None = None) -> torch.nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=DIM // HEADS,
        num_local_experts=n_experts, num_experts_per_tok=top_k, max_position_embeddings=seq_len,
        rms_norm_eps=EPS, rope_parameters={"rope_type": "default", "rope_theta": THETA},
        sliding_window=None, tie_word_embeddings=False, output_router_logits=aux,
        router_aux_loss_coef=0.01,
    )
    return MixtralForCausalLM._from_config(config, attn_implementation="sdpa", experts_implementation=experts)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hf_active_params(model: torch.nn.Module, *, n_experts: int, top_k: int) -> int:
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    return n_params(model) - experts + experts * top_k // n_experts


class Peer:
    """A model and its training step (forward, loss, backward, AdamW)."""

    def __init__(self, name: str, model: torch.nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], active: int) -> None:
        self.name, self.model, self.loss, self.active = name, model, loss, active
        self.optimizer = adamw(model)
        self.times: list[float] = []  # wall-clock seconds per step
        self.cpu_times: list[float] = []  # CPU seconds of the process (all threads) per step

    def step(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        with autocast(device):
            loss = self.loss(x, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def autocast(device: torch.device):
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def zoo_loss(model: torch.nn.Module, *, compile: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy plus the router losses (a dense model has none); ``compile``: the forward and the
    loss as one ``torch.compile`` graph, as zoo-train's ``trainer.compile=true``."""

    def loss(x, y):
        return add_aux_loss(model, F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()), {})

    return torch.compile(loss) if compile else loss


def hf_loss(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(x, y):
        out = model(input_ids=x, use_cache=False)
        ce = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())
        if getattr(out, "aux_loss", None) is not None:
            ce = ce + model.config.router_aux_loss_coef * out.aux_loss
        return ce

    return loss


def build_peer(name: str, args: argparse.Namespace) -> Peer:

    kw = dict(seq_len=args.seq_len, top_k=args.top_k)
    family = name.removesuffix("-compile")
    if family in ("zoo", "dense"):
        model = build_zoo_moe(n_experts=args.n_experts, **kw) if family == "zoo" else build_zoo_dense(**kw)
        return Peer(name, model, zoo_loss(model, compile=family != name), model.param_counts()["active_params"])
    if name in ("hf", "hf-noaux", "hf-eager"):
        experts = "eager" if name == "hf-eager" else None
        model = build_hf_mixtral(n_experts=args.n_experts, aux=name != "hf-noaux", experts=experts, **kw)
        return Peer(name, model, hf_loss(model), hf_active_params(model, n_experts=args.n_experts, top_k=args.top_k))
    raise SystemExit(f"unknown peer {name!r}: zoo, zoo-compile, hf, hf-noaux, hf-eager, dense, dense-compile")


def peer_versions() -> str:
    try:
        import transformers

        return f"transformers {transformers.__version__}"
    except ImportError:
        return "transformers absent"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", nargs="+", default=["zoo", "hf", "dense"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--n-experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    peers = []
    for name in args.peers:
        try:
            peers.append(build_peer(name, args))
        except ImportError as e:
            print(f"{name} skipped: {e.name or e} is not importable")
    load = os.getloadavg()[0]
    for p in peers:
        p.model.to(device).train()
    tokens = torch.randint(VOCAB, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for p in peers:
        for _ in range(args.warmup):
            p.step(x, y, device)
    for r in range(args.rounds):
        for p in peers[r % len(peers):] + peers[: r % len(peers)]:
            for _ in range(args.steps):
                synchronize(device)
                wall, cpu = time.perf_counter(), time.process_time()
                p.step(x, y, device)
                synchronize(device)
                p.times.append(time.perf_counter() - wall)
                p.cpu_times.append(time.process_time() - cpu)
    n_tokens = args.batch * args.seq_len
    print(f"device {device}, torch {torch.__version__}, {peer_versions()}, threads {torch.get_num_threads()}, "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}" if device.type == "cpu" else f"device {device}")
    print(f"batch {args.batch} x {args.seq_len}, {args.n_experts} experts top-{args.top_k}, {args.rounds} rounds x {args.steps} steps, medians")
    print(f"{'model':12s} {'params':>11s} {'active':>11s} {'step ms':>9s} {'tokens/s':>9s} {'CPU s/step':>11s}")
    speed, cpu = {}, {}
    for p in peers:
        step = statistics.median(p.times)
        speed[p.name], cpu[p.name] = n_tokens / step, statistics.median(p.cpu_times)
        print(f"{p.name:12s} {n_params(p.model):11,d} {p.active:11,d} {step * 1e3:9.1f} {speed[p.name]:9.0f} {cpu[p.name]:11.2f}")
    notes = {
        ("zoo", "hf"): " (target >= 1.2)",
        # the dense model does the MoE's active FLOPs in bigger matmuls, with no routing: no MoE beats it
        ("dense", "hf"): " (the ceiling of any MoE with these active parameters)",
        ("dense-compile", "hf"): " (the ceiling under torch.compile)",
    }
    pairs = [
        ("zoo", "hf"), ("zoo-compile", "hf"), ("zoo", "hf-noaux"), ("zoo", "hf-eager"), ("zoo", "dense"),
        ("dense", "hf"), ("zoo-compile", "dense-compile"), ("dense-compile", "hf"),
    ]  # fmt: skip
    for num, den in pairs:
        if num in speed and den in speed:
            note = notes.get((num, den), "")
            print(f"{num} / {den}: training tokens/s {speed[num] / speed[den]:.2f}x{note}, CPU work {cpu[den] / cpu[num]:.2f}x")
    return speed


if __name__ == "__main__":
    main()
