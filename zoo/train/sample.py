"""The text a language model writes at the end of its run.

Decoding is :func:`zoo.generation.generate` (KV cache, temperature, top-k); where that package is
absent, a short greedy/temperature loop over the model's cache stands in.
"""

import torch
from torch import nn

from zoo.train.settings import SampleSettings


def can_sample(model: nn.Module, tokenizer) -> bool:
    """Decoders that continue a text prompt: causal and prefix LMs with a tokenizer."""
    return tokenizer is not None and getattr(model, "can_generate", False) and getattr(model, "arch", "") in ("causal", "prefix")


def room_for(model: nn.Module, prompt_len: int, wanted: int) -> int:
    """New tokens that fit after the prompt: learned positions stop at ``model.max_seq_len``."""
    limits = [m.max_positions for m in model.modules() if getattr(m, "max_positions", None) is not None]
    return max(min([wanted, *(limit - prompt_len for limit in limits)]), 0)


@torch.no_grad()
def sample(model: nn.Module, tokenizer, *, settings: SampleSettings, seed: int = 0) -> str:
    """``settings.prompt`` and its continuation, up to ``<eos>``; its own generator, so the training RNG never moves."""
    ids = tokenizer.encode(settings.prompt) or [tokenizer.bos_id]
    n_new = room_for(model, len(ids), settings.max_new_tokens)
    if n_new == 0:
        return settings.prompt
    try:
        from zoo.generation import generate
    except ImportError:
        new = _local_generate(model, ids, n_new=n_new, settings=settings, seed=seed, eos_id=tokenizer.eos_id)
    else:
        out = generate(model, [ids], max_new_tokens=n_new, temperature=settings.temperature, top_k=settings.top_k, eos_id=tokenizer.eos_id, seed=seed)
        new = out.tokens[0]
    return settings.prompt + tokenizer.decode([t for t in new if t != tokenizer.eos_id])


def _local_generate(model: nn.Module, ids: list[int], *, n_new: int, settings: SampleSettings, seed: int, eos_id: int) -> list[int]:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    extra = {"prefix_len": torch.tensor([len(ids)], device=device)} if model.arch == "prefix" else {}
    was_training, cache, out = model.training, model.new_cache(), []
    model.eval()
    try:
        logits = model(torch.tensor([ids], device=device), cache=cache, **extra)[0, -1].float().cpu()
        for _ in range(n_new):
            if settings.temperature == 0:
                token = int(logits.argmax())
            else:
                if settings.top_k is not None and settings.top_k < logits.shape[0]:
                    logits = logits.masked_fill(logits < logits.topk(settings.top_k).values[-1], float("-inf"))
                token = int(torch.multinomial(torch.softmax(logits / settings.temperature, -1), 1, generator=gen))
            if token == eos_id:
                break
            out.append(token)
            logits = model(torch.tensor([[token]], device=device), cache=cache, **extra)[0, -1].float().cpu()
    finally:
        model.train(was_training)
    return out
