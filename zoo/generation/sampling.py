"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Letters: ``b`` batch, ``v`` vocabulary.
"""

from collections.abc import Sequence

import torch

from zoo.errors import ConfigError


def check_sampling(*, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a :class:`ConfigError` naming the option when a sampling setting cannot work."""
    if temperature < 0:
        raise ConfigError("generate.temperature", temperature, ">= 0 (0 is greedy decoding)")
    if top_k is not None and top_k < 1:
        raise ConfigError("generate.top_k", top_k, ">= 1, or null for no top-k filter")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError("generate.top_p", top_p, "in (0, 1], or null for no nucleus filter")


def restrict(logits: torch.Tensor, allowed: Sequence[Sequence[int] | None] | None) -> torch.Tensor:
    """``logits (b, v)`` with every id outside row ``i``'s ``allowed[i]`` at ``-inf``; a row whose
    ``allowed`` is ``None``, or ``allowed=None``, is kept whole (token healing's first step)."""
    if allowed is None or all(a is None for a in allowed):
        return logits
    keep = torch.ones_like(logits, dtype=torch.bool)
    for row, ids in enumerate(allowed):
        if ids is not None:
            keep[row] = False
            keep[row, list(ids)] = True
    return logits.masked_fill(~keep, float("-inf"))


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the top ``top_k`` and outside the nucleus of mass ``top_p``.

    Top-k (Fan et al. 2018, arXiv:1805.04833) keeps the ``top_k`` largest logits (ties with the
    ``k``-th are kept too). Top-p (Holtzman et al. 2019, arXiv:1904.09751) keeps the smallest set of
    most likely tokens whose probability reaches ``top_p``: a token stays when the mass of the tokens
    ranked above it is still below ``top_p``, so the most likely token always stays.

    Shapes: ``(..., v) -> (..., v)``.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ranked, order = logits.sort(dim=-1, descending=True)
        probs = ranked.float().softmax(dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs
        drop = torch.zeros_like(mass_above, dtype=torch.bool).scatter(-1, order, mass_above >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def probabilities(
    logits: torch.Tensor, *, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution sampling draws from: ``softmax(filter(logits / temperature))`` in float32.

    Shapes: ``(..., v) -> (..., v)``; needs ``temperature > 0``.
    """
    return filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)


def draw(probs: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs (b, v)``: ``(b,)``."""
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token of each row of ``logits (b, v)``: the argmax at temperature 0, else a sample.

    Shapes: ``(b, v) -> (b,)``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p), generator=generator)


def seeded_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` when given; else a new one on ``device`` seeded with ``seed``; else ``None`` (global RNG)."""
    if generator is not None or seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(seed)
