"""Logit parity between a zoo model and a ``transformers`` model with the same weights.

Shipped with the library so that the tests, ``zoo-import --check`` and users share one definition of
"the same model": equal logits for a full forward, for cached token-by-token decoding, and equal
greedy tokens. Every function takes token tensors ``(b, n)``; for an encoder-decoder ``src`` is the
encoder input and ``tokens`` the decoder input.
"""

import copy
from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def zoo_logits(model: nn.Module, tokens: torch.Tensor, *, src: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``(b, n, vocab)`` of a full forward (``src``: an encoder-decoder's source)."""
    return model(tokens) if src is None else model(src, tokens)


@torch.no_grad()
def hf_logits(hf_model: nn.Module, tokens: torch.Tensor, *, src: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``(b, n, vocab)`` of a ``transformers`` model."""
    if hf_model.config.is_encoder_decoder:
        return hf_model(input_ids=src, decoder_input_ids=tokens).logits
    return hf_model(input_ids=tokens).logits


@torch.no_grad()
def incremental_logits(model: nn.Module, tokens: torch.Tensor, *, prefill: int, src: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``(b, n, vocab)`` from a cache: the first ``prefill`` tokens at once, then one at a time."""
    cache = model.new_cache()
    if src is not None:  # an encoder-decoder: the source is encoded once
        memory = model.encode(src)

        def step(t):
            return model.decode(t, memory, cache=cache)
    else:

        def step(t):
            return model(t, cache=cache)

    chunks = [step(tokens[:, :prefill])]
    chunks += [step(tokens[:, i : i + 1]) for i in range(prefill, tokens.shape[1])]
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def greedy(model: nn.Module, tokens: torch.Tensor, *, steps: int, src: torch.Tensor | None = None) -> torch.Tensor:
    """``steps`` greedy tokens ``(b, steps)`` after ``tokens``, decoded with the KV cache."""
    cache = model.new_cache()
    if src is not None:  # an encoder-decoder: the source is encoded once
        memory = model.encode(src)

        def step(t):
            return model.decode(t, memory, cache=cache)
    else:

        def step(t):
            return model(t, cache=cache)

    logits, out = step(tokens), []
    for _ in range(steps):
        out.append(logits[:, -1].argmax(dim=-1, keepdim=True))
        logits = step(out[-1])
    return torch.cat(out, dim=1)


@torch.no_grad()
def hf_greedy(hf_model: nn.Module, tokens: torch.Tensor, *, steps: int, src: torch.Tensor | None = None) -> torch.Tensor:
    """``steps`` tokens of ``generate(do_sample=False)``, never stopping early at an end-of-sequence token."""
    config = copy.deepcopy(hf_model.generation_config)
    # no end-of-sequence token ([]: None would mean "the model's default")
    config.do_sample, config.eos_token_id, config.max_new_tokens = False, [], steps
    config.pad_token_id = 0 if config.pad_token_id is None else config.pad_token_id
    if hf_model.config.is_encoder_decoder:
        config.decoder_start_token_id = int(tokens[0, 0])
        out = hf_model.generate(input_ids=src, decoder_input_ids=tokens, generation_config=config)
    else:
        out = hf_model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), generation_config=config)
    return out[:, tokens.shape[1] :]


def load_hf(folder: str | Path, *, auto_class: str = "AutoModelForCausalLM", attn_implementation: str = "eager") -> nn.Module:
    """A ``transformers`` model from a local folder, in float32 and eval mode, never running remote code."""
    import transformers

    cls = getattr(transformers, auto_class)
    model = cls.from_pretrained(str(folder), attn_implementation=attn_implementation, dtype=torch.float32, trust_remote_code=False)
    return model.eval()


def report(model: nn.Module, hf_model: nn.Module, *, length: int = 16, batch: int = 2, steps: int = 8, seed: int = 0) -> dict[str, float]:
    """Max absolute logit differences (full and cached) and greedy agreement on random tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.vocab_size, (batch, length), generator=g)
    src = model.example(batch=batch, length=length, generator=g).inputs.get("src")  # an encoder-decoder's source
    expected = hf_logits(hf_model, tokens, src=src)
    full = (zoo_logits(model, tokens, src=src) - expected).abs().max().item()
    cached = (incremental_logits(model, tokens, prefill=length // 2, src=src) - expected).abs().max().item()
    same = torch.equal(greedy(model, tokens, steps=steps, src=src), hf_greedy(hf_model, tokens, steps=steps, src=src))
    return {"max_abs_diff": full, "max_abs_diff_cached": cached, "greedy_equal": float(same)}
