"""What the recurrent mixers of the ``model/attention`` slot share: which context they serve, which form runs.

A recurrent mixer (:mod:`zoo.attention.retention`, :mod:`zoo.attention.ssm`) reads tokens left to
right into a state, so it serves a causal stack only; within it, padding and packed documents are
honoured (a padded token leaves the state as it was; a document starts from an empty state).
"""

import torch

from zoo.attention.attention import Context
from zoo.attention.recurrence import FORMS, chunked, document_resets
from zoo.errors import ConfigError
from zoo.pos.base import Positions

#: ``model.attention.form``: ``auto`` runs one token by :func:`~zoo.attention.recurrence.scan` (a decode
#: step) and several by :func:`~zoo.attention.recurrence.chunked`
FORM_NAMES = ("auto", *FORMS)


def check_form(form: str, chunk: int) -> None:
    if form not in FORM_NAMES:
        raise ConfigError("model.attention.form", form, f"one of {list(FORM_NAMES)}")
    if chunk <= 0:
        raise ConfigError("model.attention.chunk", chunk, "a positive number of tokens per chunk (64)")


def run_form(form: str, chunk: int, q, k, v, log_decay, *, state, resets) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence in the configured form (``auto``: :func:`scan` for one token, else :func:`chunked`)."""
    if form == "auto":
        form = "scan" if q.shape[2] == 1 else "chunked"
    if form == "chunked":
        return chunked(q, k, v, log_decay, state=state, resets=resets, chunk=chunk)
    return FORMS[form](q, k, v, log_decay, state=state, resets=resets)


def read_context(ctx: Context, owner: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(valid (b, n) | None, resets (b, n) | None)`` of the current tokens, after refusing what a
    left-to-right state cannot express: a prefix or bidirectional mask, a window, a score bias."""
    mask = ctx.mask
    if not mask.causal or mask.prefix_len is not None:
        raise ConfigError("model/attention", owner, "reads tokens left to right: it serves a causal stack (model=causal), not a prefix or bidirectional one")
    if mask.window is not None:
        raise ConfigError("model/attention", owner, f"has no window to narrow (window={mask.window}): its state already forgets by decay")
    if type(ctx.pos).bias is not Positions.bias:
        raise ConfigError("model/pos", type(ctx.pos).__name__, f"biases attention scores, which {owner} has none of: use rope, none, learned or sinusoidal")
    return mask.key_valid, document_resets(mask.q_segment)
