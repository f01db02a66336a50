"""Which keys each query may see, as a function of the tokens' positions.

The architecture builds a :class:`Mask` (causal, prefix, bidirectional, padding, documents); a
sliding-window attention narrows it with its window, a sparse attention with its pattern
(:mod:`zoo.attention.sparse`). Kernels turn it into what they need: a dense
boolean tensor, a flag for SDPA's causal fast path, block bounds for local attention, or a
FlexAttention ``mask_mod``.
"""

from dataclasses import dataclass, replace

import torch

from zoo.attention.sparse import Pattern


@dataclass(frozen=True)
class Mask:
    """A mask rule evaluated on positions, not a materialised ``n x m`` tensor.

    Args:
        causal: a query sees keys at its own position or before.
        prefix_len: ``(b,)``; with ``causal``, keys before it are visible to every query (prefix LM).
        window: a query sees only keys less than ``window`` positions away.
        key_valid: ``(b, m)`` booleans, ``False`` for padding keys.
        q_segment, k_segment: ``(b, n)``, ``(b, m)`` document ids of the queries and keys of a packed
            row: a query sees only keys of its own document (document masking; Zhao et al. 2024,
            arXiv:2402.13991). Both or neither. Within a document the other rules apply to the
            positions as given, so they stay exact when positions restart at each document.
        pattern: a sparse pattern (strided, fixed, BigBird) that also narrows what each query sees.
    """

    causal: bool = False
    prefix_len: torch.Tensor | None = None
    window: int | None = None
    key_valid: torch.Tensor | None = None
    q_segment: torch.Tensor | None = None
    k_segment: torch.Tensor | None = None
    pattern: Pattern | None = None

    def with_window(self, window: int | None) -> "Mask":
        return self if window is None else replace(self, window=window)

    def with_pattern(self, pattern: Pattern | None) -> "Mask":
        return self if pattern is None else replace(self, pattern=pattern)

    def with_keys(self, key_valid: torch.Tensor | None) -> "Mask":
        return replace(self, key_valid=key_valid)

    def within(self, segments: torch.Tensor) -> "Mask":
        """This rule inside each document of ``segments (b, n)``, for self-attention over those tokens."""
        return replace(self, q_segment=segments, k_segment=segments)

    @property
    def is_full(self) -> bool:
        """Every query sees every key: no mask at all."""
        return (
            not self.causal and self.window is None and self.key_valid is None and self.q_segment is None and self.pattern is None
        )

    @property
    def looks_back_only(self) -> bool:
        """Every key a query may see sits at its position or before: causal, with no bidirectional prefix
        (a sparse pattern's candidates then need only one side)."""
        return self.causal and self.prefix_len is None

    @property
    def is_plain_causal(self) -> bool:
        return (
            self.causal
            and self.prefix_len is None
            and self.window is None
            and self.key_valid is None
            and self.q_segment is None
            and self.pattern is None
        )

    def allows(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Booleans ``(b, n, m)``: may the query at ``q_pos (b, n)`` see the key at ``k_pos (b, m)``."""
        offset = q_pos[:, :, None] - k_pos[:, None, :]
        ok = torch.ones_like(offset, dtype=torch.bool)
        if self.causal:
            ok = offset >= 0
            if self.prefix_len is not None:
                ok = ok | (k_pos[:, None, :] < self.prefix_len[:, None, None])
        if self.window is not None:
            ok = ok & ((offset < self.window) if self.causal else (offset.abs() < self.window))
        if self.pattern is not None:
            ok = ok & self.pattern.allows(q_pos[:, :, None], k_pos[:, None, :])
        if self.q_segment is not None:
            # a query always sees itself, so document masking alone leaves no row empty
            ok = ok & (self.q_segment[:, :, None] == self.k_segment[:, None, :])
        if self.key_valid is not None:
            ok = ok & self.key_valid[:, None, :]
            # A query with no visible key (a row of pure padding) would softmax to NaN; let it see
            # everything instead: its output is padding and is never read.
            ok = ok | ~ok.any(dim=-1, keepdim=True)
        return ok
