"""Autoregressive generation with the KV cache: prefill the prompts in one pass, then one token a step.

Letters: ``b`` batch, ``v`` vocabulary.
"""

from collections.abc import Sequence

import torch
from torch import nn

from zoo.attention.static_cache import has_static_form
from zoo.errors import ConfigError
from zoo.generation.infill import filling
from zoo.generation.prompts import Prompts, as_lists, evaluating
from zoo.generation.result import Generation, trim_at_eos
from zoo.generation.sampling import check_sampling, next_token, restrict, seeded_generator
from zoo.generation.speculative import speculative_generate
from zoo.generation.static import StaticDecoder, compile_pays


def generate(
    model: nn.Module,
    prompts: Prompts,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    start_id: int = 0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    draft: nn.Module | None = None,
    n_draft: int = 4,
    compiled: bool | None = None,
    allowed_first: Sequence[Sequence[int] | None] | None = None,
    blank_id: int | None = None,
) -> Generation:
    """Generate up to ``max_new_tokens`` after each prompt, with the model's KV cache.

    Prompts of different lengths are batched with left padding, per-sequence positions and padding
    masks, so each row gets what it would alone. A causal LM continues its prompt, a prefix LM reads
    the prompt bidirectionally (its prefix), an encoder-decoder encodes the prompt as its source and
    decodes from ``start_id``. An encoder-only model raises the ConfigError of ``new_cache()``.
    With ``blank_id``, a prefix LM trained with ``objective=blank_infilling`` fills each prompt's blanks
    instead (GLM, arXiv:2103.10360): the new tokens are the spans, in the blanks' order, each written
    after ``start_id`` (``[S]``) and ended by ``eos_id`` (``[E]``); :func:`zoo.generation.infill.fill`
    puts them in the blanks.

    Args:
        model: a zoo model that can generate (``model.can_generate``).
        prompts: lists of token ids, or a ``(b, n)`` tensor.
        max_new_tokens: the most tokens to add to each prompt.
        temperature: 0 is greedy decoding; otherwise logits are divided by it and sampled.
        top_k, top_p: keep only the ``top_k`` most likely tokens / the nucleus of mass ``top_p``.
        eos_id: a sequence that produces it stops (it is kept in the output); ``None`` never stops early.
        pad_id: the id used for padding (masked out; never attended to).
        start_id: the decoder's first token of an encoder-decoder; the token that starts a span when infilling.
        seed, generator: randomness for sampling (``generator`` wins); unseeded uses torch's global RNG.
        draft: a smaller model for speculative decoding (Leviathan et al. 2023, arXiv:2211.17192);
            the output is distributed as without it (token for token equal when greedy).
        n_draft: tokens the draft proposes per round.
        compiled: decode steps over a static-shape KV cache, compiled with ``torch.compile`` (CUDA
            graphs on CUDA) (:mod:`zoo.generation.static`): the same tokens, without the per-operator
            overhead, after a compilation of seconds. ``None``: only where it was measured to pay
            (:func:`~zoo.generation.static.compile_pays`). Not with a ``draft``.
        allowed_first: per prompt, the ids its first new token may take (``None``: any): token healing
            (:mod:`zoo.generation.healing`) writes a backed-off prompt token again this way.
        blank_id: the blank each prompt holds once or more, to fill (the tokenizer's ``<mask>``); ``None``:
            continue the prompts. Decodes on the eager cache (``compiled`` must be false or null); several
            blanks in a prompt need ``eos_id`` (``[E]``).

    Returns: a :class:`Generation`; ``tokens[i]`` are the new tokens of prompt ``i``.
    """
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    if max_new_tokens < 0:
        raise ConfigError("generate.max_new_tokens", max_new_tokens, ">= 0")
    rows = as_lists(prompts)
    if draft is not None and compiled:
        raise ConfigError(
            "generate.compiled", compiled,
            "false or null with a draft: speculative decoding feeds several tokens a call and takes them back, "
            "which the static one-token step does not do (it runs on the eager cache)",
        )  # fmt: skip
    if draft is not None:
        return speculative_generate(
            model, draft, rows, max_new_tokens=max_new_tokens, n_draft=n_draft, temperature=temperature, top_k=top_k,
            top_p=top_p, eos_id=eos_id, pad_id=pad_id, start_id=start_id, seed=seed, generator=generator,
            allowed_first=allowed_first, blank_id=blank_id,
        )
    with evaluating(model), torch.inference_mode():
        session = model.open_session(rows, pad_id=pad_id, start_id=start_id, room=max_new_tokens, **filling(blank_id, eos_id))
        ends_needed = torch.as_tensor(session.ends_needed, device=session.device)
        gen = seeded_generator(seed, generator, session.device)
        b = len(rows)
        out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=session.device)
        if max_new_tokens == 0:
            return Generation(tokens=[[] for _ in rows])
        logits = restrict(session.feed(session.prompt)[:, -1], allowed_first)
        steps = max_new_tokens - 1
        if compiled or (compiled is None and session.static_steps and compile_pays(steps=steps) and has_static_form(session.cache)):
            session = StaticDecoder(session, room=steps)
        done = torch.zeros(b, dtype=torch.bool, device=session.device)
        ended = torch.zeros(b, dtype=torch.long, device=session.device)  # end tokens so far: a row with several blanks needs one per span
        calls = 0
        for t in range(max_new_tokens):
            token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
            if eos_id is not None:
                token = token.masked_fill(done, pad_id)
                ended += token == eos_id
                done |= ended >= ends_needed
            out[:, t] = token
            if t + 1 == max_new_tokens or (eos_id is not None and bool(done.all())):
                break
            logits = session.feed(token[:, None])[:, -1]
            calls += 1
        return Generation(tokens=trim_at_eos(out[:, : t + 1], eos_id, ends=ends_needed.expand(b).tolist()), target_calls=calls)


def greedy_reference(model: nn.Module, prompt: Sequence[int], *, max_new_tokens: int, start_id: int = 0) -> list[int]:
    """Greedy decoding without any cache: a full forward over the whole sequence at every step.

    The slow, obviously-correct reference the cached decoders are tested against.
    """
    new: list[int] = []
    with evaluating(model), torch.inference_mode():
        for _ in range(max_new_tokens):
            new.append(int(model.uncached_next_logits(prompt, new, start_id=start_id).argmax()))
    return new
