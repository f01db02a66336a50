"""GLM's blank infilling at generation time (Du et al. 2022, arXiv:2103.10360): a prompt with a blank in.

A prefix decoder trained with ``objective=blank_infilling`` fills a blank from both sides:
``generate(model, prompts, blank_id=<mask>, start_id=[S], eos_id=[E], ...)`` reads each prompt as Part A
and writes the span (the prefix decoder's :class:`~zoo.arch.session.InfillSession` lays the tokens out
at the 2D positions training used); :func:`fill` puts the span in the blank. The ids come from the
tokenizer (:func:`zoo.objectives.blank_infilling.infilling_sentinels`).
"""

from collections.abc import Sequence


def fill(prompt: Sequence[int], span: Sequence[int], *, blank_id: int, end_id: int | None) -> list[int]:
    """``prompt`` with its blank (``blank_id``, once) replaced by ``span``, less the ``end_id`` that ends it."""
    span = list(span)
    if end_id is not None and span and span[-1] == end_id:
        span = span[:-1]
    at = list(prompt).index(blank_id)
    return [*prompt[:at], *span, *prompt[at + 1 :]]
