"""Token healing: a prompt that stops where the training text never stopped a token.

A BPE that splits words with their leading space (``" name"``) sees a bare ``" "`` token almost only
before digits (``\\p{N}`` takes no space in zoo's split), so the prompt ``"def "`` ends in a token the
model learned to follow with a number, and the sample is digits. Token healing (the fix ``guidance``
popularised) backs the prompt off its last token and lets the model write that text again: the first
new token must be one whose text starts with the removed text (``" "`` -> ``" name"``, ``" ("``, ...).
The continuation then starts on a boundary the model has seen, and the prompt's text is kept.

Imports only torch; a tokenizer is anything with ``encode``, ``decode``, ``n_regular`` and ``bos_id``.
"""

import functools
from dataclasses import dataclass

#: what ``decode`` writes for bytes that are not whole UTF-8 characters: such text cannot be matched
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class TextPrompt:
    """A text prompt's tokens, backed off their last token when healed.

    Attributes:
        ids: the prompt's tokens, less the last when healed (``[bos_id]`` when nothing is left).
        text: the text those tokens stand for: the prompt's text less ``removed``.
        removed: the last token's text, which the first new token must start with ("" when not healed).
        allowed: the ids the first new token may take; ``None``: any (the prompt was not healed).
    """

    ids: list[int]
    text: str
    removed: str = ""
    allowed: list[int] | None = None


@functools.lru_cache(maxsize=8)
def token_texts(tokenizer) -> tuple[str, ...]:
    """The text of every regular token, by id (computed once per tokenizer: a few ms for 4k ids)."""
    return tuple(tokenizer.decode([i]) for i in range(tokenizer.n_regular))


def encode_prompt(tokenizer, text: str, *, heal: bool = True) -> TextPrompt:
    """``text`` encoded (``[bos_id]`` when empty); with ``heal``, backed off its last token, with the
    tokens that may write that token's text again. Not healed: an empty prompt, or one whose last token
    is a special or part of a character (a byte token that decodes to U+FFFD)."""
    ids = tokenizer.encode(text)
    texts = token_texts(tokenizer) if heal and ids else ()
    removed = texts[ids[-1]] if ids and ids[-1] < len(texts) else ""
    if not removed or REPLACEMENT in removed or not text.endswith(removed):
        return TextPrompt(ids=ids or [tokenizer.bos_id], text=text)
    allowed = [i for i, t in enumerate(texts) if t.startswith(removed)]
    return TextPrompt(ids=ids[:-1] or [tokenizer.bos_id], text=text[: -len(removed)], removed=removed, allowed=allowed)
