"""Which keys each query may see, as a function of the tokens' positions.

The architecture builds a :class:`Mask` (causal, prefix, bidirectional, padding); a sliding-window
attention narrows it with its window. Kernels turn it into what they need: a dense boolean tensor,
a flag for SDPA's causal fast path, or block bounds for local attention.
"""

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Mask:
    """A mask rule evaluated on positions, not a materialised ``n x m`` tensor.

    Args:
        causal: a query sees keys at its own position or before.
        prefix_len: ``(b,)``; with ``causal``, keys before it are visible to every query (prefix LM).
        window: a query sees only keys less than ``window`` positions away.
        key_valid: ``(b, m)`` booleans, ``False`` for padding keys.
    """

    causal: bool = False
    prefix_len: torch.Tensor | None = None
    window: int | None = None
    key_valid: torch.Tensor | None = None

    def with_window(self, window: int | None) -> "Mask":
        return self if window is None else replace(self, window=window)

    def with_keys(self, key_valid: torch.Tensor | None) -> "Mask":
        return replace(self, key_valid=key_valid)

    @property
    def is_full(self) -> bool:
        """Every query sees every key: no mask at all."""
        return not self.causal and self.window is None and self.key_valid is None

    @property
    def is_plain_causal(self) -> bool:
        return self.causal and self.prefix_len is None and self.window is None and self.key_valid is None

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
        if self.key_valid is not None:
            ok = ok & self.key_valid[:, None, :]
            # A query with no visible key (a row of pure padding) would softmax to NaN; let it see
            # everything instead: its output is padding and is never read.
            ok = ok | ~ok.any(dim=-1, keepdim=True)
        return ok
