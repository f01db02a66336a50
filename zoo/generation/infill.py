"""GLM's blank infilling at generation time (Du et al. 2022, arXiv:2103.10360): a prompt with a blank in.

A prefix decoder trained with ``objective=blank_infilling`` fills blanks from both sides:
``generate(model, prompts, blank_id=<mask>, start_id=[S], eos_id=[E], ...)`` reads each prompt as Part A
and writes the spans, one per blank in order, each ended by ``[E]`` (the prefix decoder's
:class:`~zoo.arch.session.InfillSession` lays the tokens out at the 2D positions training used);
:func:`fill` puts the spans in the blanks. The ids come from the
tokenizer (:func:`zoo.objectives.blank_infilling.infilling_sentinels`).
"""

from collections.abc import Sequence


def fill(prompt: Sequence[int], span: Sequence[int], *, blank_id: int, end_id: int | None) -> list[int]:
    """``prompt`` with its blanks (``blank_id``) replaced by the spans of ``span``, in order: the new tokens
    of :func:`~zoo.generation.generate`, each span ended by ``end_id`` (dropped). A blank the spans did not
    reach (the tokens ran out) stays."""
    spans = split_spans(span, end_id)
    out, filled = [], 0
    for token in prompt:
        if token == blank_id and filled < len(spans):
            out += spans[filled]
            filled += 1
        else:
            out.append(token)
    return out


def split_spans(tokens: Sequence[int], end_id: int | None) -> list[list[int]]:
    """The spans of new tokens, each up to (without) the ``end_id`` that ends it; a last span the tokens
    did not end is kept as far as it got."""
    spans: list[list[int]] = [[]]
    for token in tokens:
        if end_id is not None and token == end_id:
            spans.append([])
        else:
            spans[-1].append(token)
    if not spans[-1] and len(spans) > 1:  # the last span was ended: nothing after its [E]
        spans.pop()
    return spans


def filling(blank_id: int | None, end_id: int | None) -> dict[str, int | None]:
    """``open_session``'s keywords for filling blanks, none when continuing a prompt: an architecture
    that never fills one (a plugin's) need not take them."""
    return {} if blank_id is None else {"blank_id": blank_id, "end_id": end_id}
