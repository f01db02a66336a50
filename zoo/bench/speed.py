"""Speed of one built model: training, prefill and cached-decode tokens/s, latency, memory, MFU,
and how training and prefill scale with the sequence length.

Every architecture is driven through inputs it makes itself (``model.example``: a prefix decoder's
``prefix_len``, an encoder-decoder's source and target, both counted as tokens) and decoded through
the session it opens (``model.open_session``). Speeds never enter a test's assertions.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.arch.session import position_limit
from zoo.bench.timing import autocast, median, peak_memory, reset_peak_memory, spread, synchronize, time_calls

NA_LENGTH = "n/a (max length)"
NA_FROZEN = "n/a (frozen body: only a task head trains)"


@dataclass
class Workload:
    """One batch of random tokens and how to run the model on it.

    Args:
        forward: ``() -> logits (b, n, vocab)``.
        targets: ``(b, n)`` next-token targets for the loss.
        tokens: tokens one call processes (source plus target for an encoder-decoder).
    """

    forward: Callable[[], torch.Tensor]
    targets: torch.Tensor
    tokens: int


def unwrap(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile``'s wrapper, for its attributes."""
    return getattr(model, "_orig_mod", model)


def max_length(model: nn.Module) -> int | None:
    """The longest sequence the model's position scheme can encode, or ``None`` when unlimited."""
    return position_limit(unwrap(model))


def workload(model: nn.Module, *, batch: int, seq_len: int, device: torch.device, seed: int = 0) -> Workload:
    """Random inputs the model makes for itself (``model.example``), and random targets for its logits."""
    base = unwrap(model)
    gen = torch.Generator().manual_seed(seed)
    example = base.example(batch=batch, length=seq_len, generator=gen)
    inputs = {k: v.to(device) for k, v in example.inputs.items()}
    targets = torch.randint(base.vocab_size, tuple(inputs[example.scored].shape), generator=gen).to(device)
    return Workload(lambda: model(**inputs), targets, example.tokens)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every timed training step, for every variant and peer alike: AdamW with torch's
    fused kernel where the device has one (as zoo-train and HF's Trainer use it)."""
    from zoo.train import fused_by_default

    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_by_default(model) or None)


def train_step(
    model: nn.Module, work: Workload, optimizer: torch.optim.Optimizer, device: torch.device, *, compile: bool = False
) -> Callable[[], None]:
    """One optimizer step on ``work``: forward, cross-entropy, backward, AdamW, zero grads.

    ``compile``: the forward and the loss as one ``torch.compile`` graph, as zoo-train's
    ``trainer.compile=true`` (a compiled model called inside is inlined into it).
    """

    def loss() -> torch.Tensor:
        with autocast(device):
            logits = work.forward()
        return F.cross_entropy(logits.flatten(0, 1).float(), work.targets.flatten())

    if compile:
        loss = torch.compile(loss)

    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_speed(model: nn.Module, *, batch: int, seq_len: int, device: torch.device, steps: int, warmup: int) -> dict:
    """Training tokens/s and seconds per step (median of ``steps``), and the bytes of the optimizer's state
    after them (AdamW: two moments per trainable parameter; a frozen parameter gets no gradient and no
    state); a compiled model trains with its loss compiled too."""
    model.train()
    work = workload(model, batch=batch, seq_len=seq_len, device=device)
    optimizer = adamw(model)
    step = train_step(model, work, optimizer, device, compile=unwrap(model) is not model)
    times = time_calls(step, device=device, repeats=steps, warmup=warmup)
    state = sum(t.nbytes for per_param in optimizer.state.values() for t in per_param.values() if isinstance(t, torch.Tensor))
    return {"train_tokens_per_s": work.tokens / median(times), "train_step_s": median(times), "train_spread": spread(times), "optimizer_state_bytes": state}


def prefill_speed(model: nn.Module, *, batch: int, seq_len: int, device: torch.device, steps: int, warmup: int) -> dict:
    """Inference forward (prefill) tokens/s and seconds per forward."""
    model.eval()
    work = workload(model, batch=batch, seq_len=seq_len, device=device)

    def forward() -> None:
        with torch.inference_mode(), autocast(device):
            work.forward()

    times = time_calls(forward, device=device, repeats=steps, warmup=warmup)
    return {"prefill_tokens_per_s": work.tokens / median(times), "prefill_s": median(times), "prefill_spread": spread(times)}


@torch.inference_mode()
def decode_once(model: nn.Module, *, batch: int, prompt_len: int, new_tokens: int, device: torch.device) -> tuple[float, int]:
    """Seconds to greedily decode ``new_tokens`` after a ``prompt_len`` prefill, and the cache's bytes."""
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(model.vocab_size, (batch, prompt_len), generator=gen).tolist()
    with autocast(device):
        session = model.open_session(prompts, pad_id=0, start_id=0, room=new_tokens)
        token = session.feed(session.prompt)[:, -1:].argmax(-1)
        synchronize(device)
        t0 = time.perf_counter()  # wall clock on every device: a decode step's Python overhead is real cost
        for _ in range(new_tokens):
            token = session.feed(token)[:, -1:].argmax(-1)
        synchronize(device)
        elapsed = time.perf_counter() - t0
    return elapsed, sum(c.nbytes() for c in session.cache)


def decode_speed(model: nn.Module, *, batch: int, prompt_len: int, new_tokens: int, device: torch.device, repeats: int) -> dict:
    """Cached greedy decode tokens/s, latency per token, KV-cache bytes; ``None`` figures for an encoder."""
    model = unwrap(model)
    limit = max_length(model)
    if not getattr(model, "can_generate", False):
        return {"decode_tokens_per_s": None, "decode_latency_s": None, "kv_cache_bytes": None}
    if limit is not None:
        new_tokens = min(new_tokens, limit - prompt_len)
    model.eval()
    runs = [decode_once(model, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, device=device) for _ in range(repeats + 1)]
    seconds = median([r[0] for r in runs[1:]])  # the first run warms the allocator and caches
    return {
        "decode_tokens_per_s": batch * new_tokens / seconds,
        "decode_latency_s": seconds / new_tokens,
        "kv_cache_bytes": runs[-1][1],
    }


def fill_batch(model: nn.Module, *, seq_len: int, device: torch.device, start: int, limit: int = 1024) -> int:
    """The largest batch (doubling from ``start``, up to ``limit``) whose training step fits on a CUDA
    device with a tenth of its memory to spare; ``start`` on any other device."""
    if device.type != "cuda":
        return start
    total = torch.cuda.get_device_properties(device).total_memory
    batch, fits = start, start
    while batch <= limit:
        try:
            training_speed(model, batch=batch, seq_len=seq_len, device=device, steps=1, warmup=0)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        if peak_memory(device) > 0.9 * total:
            break
        fits, batch = batch, 2 * batch
        reset_peak_memory(device)
    return fits


def measure(
    model: nn.Module,
    *,
    device: torch.device,
    batch: int,
    seq_len: int,
    steps: int,
    warmup: int,
    decode_batch: int,
    prompt_len: int,
    new_tokens: int,
    matmul_flops: float,
) -> dict:
    """Every speed figure of one model, with MFU against ``matmul_flops`` (FLOP/s of the device)."""
    reset_peak_memory(device)
    out = {"batch": batch, "seq_len": seq_len}
    if any(p.requires_grad for p in model.parameters()):
        out |= training_speed(model, batch=batch, seq_len=seq_len, device=device, steps=steps, warmup=warmup)
    else:  # a frozen body (adapter=frozen): only a task head, added by the objective when training, trains
        out |= {"train_tokens_per_s": NA_FROZEN, "train_step_s": NA_FROZEN, "optimizer_state_bytes": 0}
    out.update(prefill_speed(model, batch=batch, seq_len=seq_len, device=device, steps=steps, warmup=warmup))
    out["peak_memory_bytes"] = peak_memory(device)
    out.update(decode_speed(model, batch=decode_batch, prompt_len=prompt_len, new_tokens=new_tokens, device=device, repeats=max(1, steps // 2)))
    flops = unwrap(model).flops(seq_len=seq_len).per_token()["total"]
    out["mfu_train"] = 3 * flops * out["train_tokens_per_s"] / matmul_flops if out["train_tokens_per_s"] != NA_FROZEN else NA_FROZEN
    out["mfu_prefill"] = flops * out["prefill_tokens_per_s"] / matmul_flops
    return out


def scaling(
    model: nn.Module, *, device: torch.device, seq_lens: list[int], tokens_per_batch: int, steps: int, warmup: int
) -> list[dict]:
    """Training and prefill tokens/s per sequence length at a fixed number of tokens per batch.

    A length past what the position scheme encodes is reported as ``"n/a (max length)"``.
    """
    limit = max_length(model)
    rows = []
    for n in seq_lens:
        if limit is not None and n > limit:
            rows.append({"seq_len": n, "train_tokens_per_s": NA_LENGTH, "prefill_tokens_per_s": NA_LENGTH})
            continue
        batch = max(1, tokens_per_batch // n)
        row = {"seq_len": n}
        trains = any(p.requires_grad for p in model.parameters())
        row.update(training_speed(model, batch=batch, seq_len=n, device=device, steps=steps, warmup=warmup) if trains else {"train_tokens_per_s": NA_FROZEN})
        row.update(prefill_speed(model, batch=batch, seq_len=n, device=device, steps=steps, warmup=warmup))
        rows.append(row)
    return rows
