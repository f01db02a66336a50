"""Linear recurrences with one decay per head and token: the kernel of the sub-quadratic mixers.

Retention (RetNet) and the selective state space (Mamba-2's SSD) both compute, per head,

    S_t = a_t S_{t-1} + k_t^T v_t        o_t = q_t S_t

with a state ``S`` of ``d x e`` channels and a decay ``0 < a_t <= 1`` (RetNet: a constant per head;
Mamba-2: ``exp(dt_t A)``, chosen by the token). Three forms compute the same outputs and final state:

- :func:`scan`, the recurrence itself, one token at a time: the short reference, and decoding;
- :func:`parallel`, the quadratic form ``o = ((q k^T) * D) v`` with ``D[i, j] = a_{j+1} ... a_i``
  (RetNet's parallel form, arXiv:2307.08621 eq. 5), plus what an initial state adds;
- :func:`chunked`, :func:`parallel` within chunks of ``chunk`` tokens and the state carried from one
  chunk to the next (RetNet's chunkwise form; Mamba-2's SSD, arXiv:2405.21060 section 6): linear
  in the length, in matmuls.

Decays are passed as logarithms (``log a <= 0``) so that products over a span are differences of
cumulative sums. ``resets (b, n)`` clears the state before a token (the first token of a document in
a packed row): tokens before it then reach neither it nor anything after it.

Letters: ``b`` batch, ``h`` heads, ``n`` tokens (``i`` reading, ``j`` written), ``d`` key channels,
``e`` value channels.
"""

import torch
from einops import einsum

State = torch.Tensor  # (b, h, d, e)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def scan(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, *, state: State | None = None, resets: torch.Tensor | None = None
) -> tuple[torch.Tensor, State]:
    """The recurrence, token by token: ``q, k (b, h, n, d)``, ``v (b, h, n, e)``, ``log_decay (b, h, n)``,
    ``state (b, h, d, e)`` before the first token (zero if ``None``) -> ``out (b, h, n, e)``, final state."""
    b, h, n, d = k.shape
    if state is None:
        state = k.new_zeros(b, h, d, v.shape[-1])
    decay = at_least_float32(log_decay).exp().to(v.dtype)
    if resets is not None:
        decay = decay * ~resets[:, None, :]
    out = []
    for t in range(n):
        state = decay[:, :, t, None, None] * state + einsum(k[:, :, t], v[:, :, t], "b h d, b h e -> b h d e")
        out.append(einsum(q[:, :, t], state, "b h d, b h d e -> b h e"))
    return torch.stack(out, dim=2), state


def parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, *, state: State | None = None, resets: torch.Tensor | None = None
) -> tuple[torch.Tensor, State]:
    """All tokens at once through an ``n x n`` decay matrix; arguments and results as :func:`scan`."""
    n = q.shape[2]
    # in float32 at least: a long cumulative sum in bf16 keeps too few bits for the differences below
    cum = at_least_float32(log_decay).cumsum(dim=-1)  # log of a_1 ... a_i
    visible = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[None]  # (1 | b, i, j)
    # run[i]: resets at or before token i; a token j reaches i when no reset lies in (j, i]
    run = None if resets is None else resets.long().cumsum(dim=-1)
    if run is not None:
        visible = visible & (run[:, :, None] == run[:, None, :])
    # masked before exp: a later token's exp(cum_i - cum_j) would overflow, and inf * 0 is NaN
    gap = (cum[..., :, None] - cum[..., None, :]).masked_fill(~visible[:, None], float("-inf"))
    scores = einsum(q, k, "b h i d, b h j d -> b h i j") * gap.exp().to(q.dtype)
    out = einsum(scores, v, "b h i j, b h j e -> b h i e")
    to_end = (cum[..., -1:] - cum).masked_fill(~visible[:, -1][:, None], float("-inf")).exp().to(k.dtype)  # (b, h, j)
    final = einsum(k * to_end[..., None], v, "b h j d, b h j e -> b h d e")
    if state is not None:
        carried = cum.exp().to(q.dtype)  # (b, h, i)
        if run is not None:
            carried = carried * (run[:, None] == 0)
        out = out + einsum(q, state, "b h i d, b h d e -> b h i e") * carried[..., None]
        final = final + state * carried[..., -1, None, None]
    return out, final


def chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    *,
    state: State | None = None,
    resets: torch.Tensor | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, State]:
    """:func:`parallel` within chunks of ``chunk`` tokens, each starting from the state the previous one
    left: ``O(n * chunk)`` time and memory instead of ``O(n^2)``; arguments and results as :func:`scan`."""
    # split, not sliced: a slice's backward writes into a zero tensor of the whole length, once per
    # chunk (quadratic); split's backward is one concatenation
    parts = [t.split(chunk, dim=2) for t in (q, k, v)] + [log_decay.split(chunk, dim=2)]
    resets_parts = [None] * len(parts[0]) if resets is None else resets.split(chunk, dim=1)
    out = []
    for q_c, k_c, v_c, decay_c, resets_c in zip(*parts, resets_parts):
        o, state = parallel(q_c, k_c, v_c, decay_c, state=state, resets=resets_c)
        out.append(o)
    return torch.cat(out, dim=2), state


#: the forms by name (``model.attention.form``)
FORMS = {"scan": scan, "parallel": parallel, "chunked": chunked}


def document_resets(segments: torch.Tensor | None) -> torch.Tensor | None:
    """``(b, n)`` True where a token starts a new document of ``segments (b, n)`` (the row's first token
    continues whatever state came before it), or ``None`` without segments."""
    if segments is None:
        return None
    resets = torch.zeros_like(segments, dtype=torch.bool)
    resets[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return resets


def flops_per_token(*, n_heads: int, key_dim: int, value_dim: int, chunk: int) -> float:
    """Forward FLOPs per token of :func:`chunked`: scores and weighted values over at most ``chunk``
    tokens, the carried state read by each query and each token's ``k^T v`` added to it."""
    return n_heads * (2.0 * chunk * (key_dim + value_dim) + 4.0 * key_dim * value_dim)
