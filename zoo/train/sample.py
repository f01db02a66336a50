"""The text a language model writes at the end of its run (:func:`zoo.generation.generate`)."""

import torch
from torch import nn

from zoo.generation import generate
from zoo.generation.healing import encode_prompt
from zoo.arch.session import position_limit
from zoo.train.settings import SampleSettings


def can_sample(model: nn.Module, tokenizer) -> bool:
    """Decoders that continue a text prompt (causal and prefix LMs), with a tokenizer."""
    return tokenizer is not None and model.can_generate and model.continues_prompt


def room_for(model: nn.Module, prompt_len: int, wanted: int) -> int:
    """New tokens that fit after the prompt: learned positions stop at their table's length."""
    limit = position_limit(model)
    return max(wanted if limit is None else min(wanted, limit - prompt_len), 0)


@torch.no_grad()
def sample(model: nn.Module, tokenizer, *, settings: SampleSettings, seed: int = 0, objective=None) -> str:
    """``settings.prompt`` and its continuation, up to ``<eos>``, written as the run's ``objective`` continues
    a text (a GLM model fills a blank at the prompt's end: ``Objective.continuation_prompt``); its own
    generator, so the training RNG never moves."""
    prompt = encode_prompt(tokenizer, settings.prompt, heal=settings.heal)
    ids, how = objective.continuation_prompt(prompt.ids) if objective is not None else (prompt.ids, {})
    n_new = room_for(model, len(ids), settings.max_new_tokens)
    if n_new == 0:
        return settings.prompt
    eos_id = how.pop("eos_id", tokenizer.eos_id)
    out = generate(
        model, [ids], max_new_tokens=n_new, temperature=settings.temperature, top_k=settings.top_k,
        eos_id=eos_id, seed=seed, allowed_first=[prompt.allowed], **how,
    )  # fmt: skip
    return prompt.text + tokenizer.decode([t for t in out.tokens[0] if t != eos_id])
