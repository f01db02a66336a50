"""Side by side with the peers: one Llama-style model built by zoo, by a plain-PyTorch reference,
by HF ``transformers`` and by ``x-transformers``, timed in one process, interleaved.

Interleaving (every round runs a step of each peer in turn, a few times, in an order drawn afresh
each round) makes the drift of a shared machine hit every peer alike; each figure is the median over
all rounds, and each ratio the median of the rounds' ratios. A process's own state moves the ratios
too (where its weights and buffers land in memory: a few percent on CPU, more than the drift that
pairing cancels), so :func:`run_in_processes` repeats the comparison in fresh processes and reports
the medians over them. The peers are optional: one that does not import is skipped with a note. All
are built from configs with random weights (nothing is downloaded).
"""

import multiprocessing
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from zoo.bench.speed import Workload, adamw, train_step, unwrap
from zoo.bench.timing import autocast, matmul_rate, median, page_faults, time_calls
from zoo.malloc import keep_freed_memory


@dataclass(frozen=True)
class LlamaShape:
    """The benchmark model and batch: LLaMA's recipe at a CPU-friendly size (no biases, untied head)."""

    vocab_size: int = 8192
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    hidden_dim: int = 688
    batch: int = 8
    seq_len: int = 256
    theta: float = 10000.0
    eps: float = 1e-6


@dataclass
class Peer:
    """A built model and how to get logits ``(b, n, vocab)`` from tokens ``(b, n)``; a ``compiled`` peer
    trains with the loss in its graph."""

    name: str
    model: nn.Module
    logits: Callable[[torch.Tensor], torch.Tensor]

    @property
    def compiled(self) -> bool:
        return unwrap(self.logits) is not self.logits


#: ``(numerator, denominator, target)`` of the ratios the issue asks for, on tokens/s
TARGETS = (
    ("zoo", "reference", 0.97),
    ("zoo", "hf", 1.0),
    ("zoo", "x-transformers", 1.05),
    ("zoo-compile", "hf", 1.10),
)


def zoo_overrides(shape: LlamaShape) -> list[str]:
    return [
        "model=causal",
        "model/norm=rmsnorm",
        "model/residual=pre",
        "model/ffn=swiglu",
        "model/pos=rope",
        "model/attention=mha",
        f"model.vocab_size={shape.vocab_size}",
        f"model.dim={shape.dim}",
        f"model.n_layers={shape.n_layers}",
        f"model.n_heads={shape.n_heads}",
        f"model.ffn.hidden_dim={shape.hidden_dim}",
        f"model.max_seq_len={shape.seq_len}",
        f"model.pos.theta={shape.theta}",
        f"model.norm.eps={shape.eps}",
        "model.tie_embeddings=false",
    ]


def build_zoo(shape: LlamaShape) -> nn.Module:
    import zoo

    return zoo.build(zoo_overrides(shape))


def build_reference(shape: LlamaShape) -> nn.Module:
    from zoo.bench.reference import ReferenceLlama

    return ReferenceLlama(
        vocab_size=shape.vocab_size, dim=shape.dim, n_layers=shape.n_layers, n_heads=shape.n_heads,
        hidden_dim=shape.hidden_dim, max_seq_len=shape.seq_len, theta=shape.theta, eps=shape.eps,
    )


def build_hf(shape: LlamaShape) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.dim, intermediate_size=shape.hidden_dim,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_heads,
        max_position_embeddings=shape.seq_len, rms_norm_eps=shape.eps, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, rope_parameters={"rope_type": "default", "rope_theta": shape.theta},
    )
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


def build_xtransformers(shape: LlamaShape, *, flash: bool = False) -> nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    head_dim = shape.dim // shape.n_heads
    return TransformerWrapper(
        num_tokens=shape.vocab_size,
        max_seq_len=shape.seq_len,
        tie_embedding=False,
        attn_layers=Decoder(
            dim=shape.dim, depth=shape.n_layers, heads=shape.n_heads, attn_dim_head=head_dim,
            rotary_pos_emb=True, rotary_emb_dim=head_dim,  # it rotates half of each head unless told
            ff_glu=True, ff_swish=True, ff_mult=shape.hidden_dim / shape.dim, ff_no_bias=True,
            use_rmsnorm=True, attn_flash=flash,
        ),
    )


def peer_names(name: str, n_layers: int) -> dict[str, str]:
    """``{zoo parameter: peer parameter}`` for the reference and HF: with zoo's weights copied in,
    they compute the same function (the check that the comparison compares like with like)."""
    if name == "reference":
        top = {"embed.weight": "embed.weight", "stack.norm.weight": "norm", "lm_head.weight": "lm_head.weight"}
        layer = {"norms.0.weight": "attn_norm", "norms.1.weight": "ffn_norm"}
        prefix, attn, ffn = "layers.", "", ""
    elif name == "hf":
        top = {"embed.weight": "model.embed_tokens.weight", "stack.norm.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}
        layer = {"norms.0.weight": "input_layernorm.weight", "norms.1.weight": "post_attention_layernorm.weight"}
        prefix, attn, ffn = "model.layers.", "self_attn.", "mlp."
    else:
        raise ValueError(f"no weight mapping for peer {name!r}")
    out = dict(top)
    for i in range(n_layers):
        src, dst = f"stack.layers.{i}.", f"{prefix}{i}."
        out.update({src + k: dst + v for k, v in layer.items()})
        out.update({f"{src}attn.{p}_proj.weight": f"{dst}{attn}{p}_proj.weight" for p in ("q", "k", "v", "o")})
        out.update({f"{src}ffn.{p}_proj.weight": f"{dst}{ffn}{p}_proj.weight" for p in ("gate", "up", "down")})
    return out


@torch.no_grad()
def copy_weights(zoo_model: nn.Module, name: str, peer_model: nn.Module) -> None:
    """Copy zoo's weights into the reference or the HF model (every peer parameter must be covered)."""
    mapping = peer_names(name, len(zoo_model.stack.layers))
    src = zoo_model.state_dict()
    dst = dict(peer_model.named_parameters())
    missing = set(dst) - set(mapping.values())
    if missing:
        raise ValueError(f"{name}: parameters without a zoo counterpart: {sorted(missing)}")
    for zoo_key, peer_key in mapping.items():
        dst[peer_key].copy_(src[zoo_key])


def _peer(name: str, shape: LlamaShape, *, xt_flash: bool) -> Peer:
    if name in ("zoo", "zoo-compile"):
        model = build_zoo(shape)
        return Peer(name, model, torch.compile(model) if name == "zoo-compile" else model)
    if name == "reference":
        model = build_reference(shape)
        return Peer(name, model, model)
    if name == "hf":
        model = build_hf(shape)
        return Peer(name, model, lambda x: model(input_ids=x, use_cache=False).logits)
    if name == "x-transformers":
        model = build_xtransformers(shape, flash=xt_flash)
        return Peer(name, model, model)
    raise ValueError(f"unknown peer {name!r}: one of zoo, zoo-compile, reference, hf, x-transformers")


def build_peers(names: list[str], shape: LlamaShape, *, device: torch.device, xt_flash: bool = False) -> tuple[list[Peer], list[str]]:
    """The peers that import, moved to ``device``, and a note for each one skipped."""
    peers, notes = [], []
    for name in names:
        try:
            peer = _peer(name, shape, xt_flash=xt_flash)
        except ImportError as e:
            notes.append(f"{name} skipped: {e.name or e} is not importable (pip install 'transformer-zoo[peers]')")
            continue
        peer.model.to(device)
        peers.append(peer)
    return peers, notes


def training_step(peer: Peer, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Callable[[], None]:
    """One timed training step of ``peer`` on tokens ``x`` and targets ``y``: forward, cross-entropy,
    backward, AdamW (a compiled peer's loss compiled with its model)."""
    work = Workload(lambda: peer.logits(x), y, x.numel())
    return train_step(peer.model, work, adamw(peer.model), device, compile=peer.compiled)


def compare(
    peers: list[Peer], *, shape: LlamaShape, device: torch.device, rounds: int, steps: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Training and inference tokens/s of each peer, interleaved over ``rounds`` rounds of ``steps``.

    A round times ``steps`` steps of each peer in turn, training then inference, in an order drawn
    afresh each round. Each peer's row holds the medians over every round, and its median step of
    each round (``train_rounds_s``, ``infer_rounds_s``) for the paired ratios of :func:`ratios`, and
    the median of the process's minor page faults per step (``train_page_faults``, ``infer_page_faults``):
    on CPU, which peers' big buffers glibc maps afresh each step depends on how the heap is
    fragmented at that moment, and a peer pays ~30 ms on 2 cores for a fresh 64 MB buffer.
    """
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(shape.vocab_size, (shape.batch, shape.seq_len + 1), generator=gen).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    n_tokens = shape.batch * shape.seq_len
    train, infer = {}, {}
    for p in peers:
        train[p.name] = training_step(p, x, y, device)

        def forward(p=p) -> None:
            with torch.inference_mode(), autocast(device):
                p.logits(x)

        infer[p.name] = forward
    times = {p.name: {"train": [], "infer": []} for p in peers}  # per round: the steps' seconds
    faults = {p.name: {"train": [], "infer": []} for p in peers}  # per step
    for p in peers:  # warm-up, alternating modes as the rounds do: torch.compile compiles both graphs here
        for _ in range(warmup):
            p.model.train()
            time_calls(train[p.name], device=device, repeats=0, warmup=1)
            p.model.eval()
            time_calls(infer[p.name], device=device, repeats=0, warmup=1)
    shuffle = random.Random(0)
    for _ in range(rounds):
        order = shuffle.sample(peers, len(peers))  # not a rotation: under one, a peer always follows the same one
        for mode, calls in (("train", train), ("infer", infer)):
            for p in order:
                times[p.name][mode].append([])
            for _ in range(steps):  # one step of each peer in turn: a pair is seconds apart, not a round
                for p in order:
                    p.model.train(mode == "train")
                    before = page_faults()
                    times[p.name][mode][-1] += time_calls(calls[p.name], device=device, repeats=1)
                    faults[p.name][mode].append(page_faults() - before)
    out = {}
    for name, t in times.items():
        row = out[name] = {}
        for mode in ("train", "infer"):
            every = [s for round_steps in t[mode] for s in round_steps]
            row[f"{mode}_tokens_per_s"] = n_tokens / median(every)
            row[f"{mode}_step_s"] = median(every)
            row[f"{mode}_rounds_s"] = [median(round_steps) for round_steps in t[mode]]
            row[f"{mode}_page_faults"] = float(median(faults[name][mode]))
    return out


def add_mfu(results: dict[str, dict[str, float]], *, flops_per_token: float, matmul_flops: float) -> None:
    """MFU of each peer: the same model's FLOPs (LM head included) times its tokens/s over the matmul rate."""
    for row in results.values():
        row["mfu_train"] = 3 * flops_per_token * row["train_tokens_per_s"] / matmul_flops
        row["mfu_infer"] = flops_per_token * row["infer_tokens_per_s"] / matmul_flops


def ratios(results: dict[str, dict]) -> list[dict]:
    """The target ratios that both sides of were measured: value per mode and whether it meets the target.

    A ratio is the median over rounds of the round's ratio (the two peers' median steps in that round):
    paired within a round, the machine's drift between rounds cancels, which it does not in the ratio
    of the peers' overall medians.
    """
    rows = []
    for num, den, target in TARGETS:
        if num in results and den in results:
            row = {"ratio": f"{num} / {den}", "target": target}
            for mode in ("train", "infer"):
                pairs = zip(results[num][f"{mode}_rounds_s"], results[den][f"{mode}_rounds_s"], strict=True)
                value = median([den_s / num_s for num_s, den_s in pairs])
                row[mode] = value
                row[f"{mode}_met"] = value >= target
            rows.append(row)
    return rows


def run(
    *,
    names: list[str],
    shape: LlamaShape,
    device: torch.device,
    rounds: int,
    steps: int,
    warmup: int,
    matmul_flops: float,
    xt_flash: bool = False,
) -> dict:
    """Build, time and compare the peers; everything a report needs, as plain data."""
    peers, notes = build_peers(names, shape, device=device, xt_flash=xt_flash)
    results = compare(peers, shape=shape, device=device, rounds=rounds, steps=steps, warmup=warmup)
    flops = build_zoo(shape).flops(seq_len=shape.seq_len).per_token()["total"]
    add_mfu(results, flops_per_token=flops, matmul_flops=matmul_flops)
    return {
        "shape": shape.__dict__,
        "results": results,
        "ratios": ratios(results),
        "notes": notes,
        "matmul_flops": matmul_flops,
        "flops_per_token": flops,
        "params": {p.name: sum(t.numel() for t in p.model.parameters()) for p in peers},
    }


def run_in_processes(processes: int, *, threads: int | None = None, keep_memory: bool = False, **kwargs) -> dict:
    """:func:`run` in ``processes`` fresh processes, one after the other, merged by :func:`merge`.

    Each process sets ``threads`` and, with ``keep_memory``, :func:`~zoo.malloc.keep_freed_memory`,
    and measures its own matmul rate; ``kwargs`` are :func:`run`'s other arguments.
    """
    spawn = multiprocessing.get_context("spawn")  # a fork would inherit the parent's heap
    reports = []
    for _ in range(processes):
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            reports.append(pool.submit(_fresh_run, threads, keep_memory, kwargs).result())
    return merge(reports)


def _fresh_run(threads: int | None, keep_memory: bool, kwargs: dict) -> dict:
    if threads:
        torch.set_num_threads(threads)
    kept = keep_memory and keep_freed_memory()
    return run(**kwargs, matmul_flops=matmul_rate(device=kwargs["device"])) | {"keep_freed_memory": kept}


def merge(reports: list[dict]) -> dict:
    """One report from several processes' reports of the same comparison.

    Every number of a peer's row is the median over the processes; a ratio is the median of the
    processes' ratios, each process's value kept in ``train_runs`` and ``infer_runs``.
    """
    first = reports[0]
    results = {}
    for name, row in first["results"].items():
        rows = [r["results"][name] for r in reports]
        results[name] = {k: median([x[k] for x in rows]) for k, v in row.items() if isinstance(v, float)}
    ratios = []
    for i, row in enumerate(first["ratios"]):
        out = {"ratio": row["ratio"], "target": row["target"]}
        for mode in ("train", "infer"):
            runs = [r["ratios"][i][mode] for r in reports]
            value = median(runs)
            out |= {mode: value, f"{mode}_met": value >= row["target"], f"{mode}_runs": runs}
        ratios.append(out)
    return first | {"results": results, "ratios": ratios, "processes": len(reports),
                    "matmul_flops": median([r["matmul_flops"] for r in reports])}  # fmt: skip


def markdown(report: dict) -> str:
    """The peers' table and the ratios' table, in Markdown."""
    lines = ["| peer | params | train tok/s | infer tok/s | MFU train | MFU infer | page faults / step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["results"].items():
        lines.append(
            f"| {name} | {report['params'][name] / 1e6:.2f}M | {row['train_tokens_per_s']:,.0f} | "
            f"{row['infer_tokens_per_s']:,.0f} | {row['mfu_train']:.1%} | {row['mfu_infer']:.1%} | "
            f"{row['train_page_faults']:,.0f} / {row['infer_page_faults']:,.0f} |"
        )
    lines += ["", "| ratio | target | train | infer |", "|---|---:|---:|---:|"]
    mark = {True: "ok", False: "MISSED"}

    def cell(r: dict, mode: str) -> str:
        runs = r.get(f"{mode}_runs")
        spread = f"; processes: {', '.join(f'{x:.3f}' for x in runs)}" if runs and len(runs) > 1 else ""
        return f"{r[mode]:.3f} ({mark[r[f'{mode}_met']]}{spread})"

    for r in report["ratios"]:
        lines.append(f"| {r['ratio']} | >= {r['target']:.2f} | {cell(r, 'train')} | {cell(r, 'infer')} |")
    if report.get("processes", 1) > 1:
        lines += ["", f"Medians over {report['processes']} processes, each paired within its rounds."]
    lines += ["", f"matmul rate: {report['matmul_flops'] / 1e9:.0f} GFLOP/s; "
              f"model: {report['flops_per_token'] / 1e6:.1f} MFLOP/token forward (LM head included); "
              f"malloc: {'freed memory kept for reuse (zoo.malloc)' if report.get('keep_freed_memory') else 'the system default'}"]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines)
