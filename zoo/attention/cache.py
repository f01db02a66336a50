"""Key/value caches for incremental decoding.

A cache holds keys already rotated by their positions, so a cached key never needs its position
scheme again; it also keeps each key's position and padding flag for the mask.
"""

import torch


class KVCache:
    """The keys and values of one attention layer, sized by its KV heads (so GQA/MQA save memory).

    Args:
        window: keep only the keys a future query can still see (a rolling buffer, as in Mistral):
            a sliding-window layer's memory stays bounded by its window.

    Shapes: keys and values ``(b, k, m, d)``, positions and validity ``(b, m)``.
    """

    def __init__(self, *, window: int | None = None) -> None:
        self.window = window
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.seen = 0  # tokens appended so far, including those the window dropped

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append new keys/values and return everything a query of this step may attend to."""
        b, _, n, _ = k.shape
        pos = pos.expand(b, n)
        if valid is None and self.valid is not None:
            valid = torch.ones(b, n, dtype=torch.bool, device=k.device)
        if self.k is None:
            self.k, self.v, self.pos, self.valid = k, v, pos, valid
        else:
            if self.valid is None and valid is not None:
                self.valid = torch.ones(self.pos.shape, dtype=torch.bool, device=k.device)
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
            self.pos = torch.cat([self.pos, pos], dim=1)
            self.valid = None if valid is None else torch.cat([self.valid, valid], dim=1)
        self.seen += n
        out = self.k, self.v, self.pos, self.valid
        if self.window is not None and self.k.shape[2] > self.window - 1:
            keep = self.window - 1  # the next query, one position on, sees at most window - 1 old keys
            self.k, self.v, self.pos = self.k[:, :, -keep:], self.v[:, :, -keep:], self.pos[:, -keep:]
            self.valid = None if self.valid is None else self.valid[:, -keep:]
        return out

    def set(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values computed once (cross-attention over the encoder output)."""
        self.k, self.v = k, v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


class LayerCache:
    """The caches of one block: its self-attention and, in an encoder-decoder, its cross-attention."""

    def __init__(self, *, window: int | None = None) -> None:
        self.self_attn = KVCache(window=window)
        self.cross_attn = KVCache()

    def nbytes(self) -> int:
        return self.self_attn.nbytes() + self.cross_attn.nbytes()
