"""A static-shape KV cache for single-token decode steps: the same shapes at every step, so one
compiled graph (``torch.compile``; CUDA graphs on CUDA) serves the whole generation.

:class:`~zoo.attention.cache.KVCache` returns the filled prefix of its buffer, whose length grows by
one each step: a compiled step would see a new shape every call. :class:`StaticKVCache` returns the
*whole* preallocated buffer instead, with a flag per slot saying whether it holds a key; the
attention's :class:`~zoo.attention.mask.Mask` reads that flag as its padding mask, so empty slots
are never attended to. Where the next key goes is a tensor (``cursor``), not a Python int, so nothing
a compiler would specialise on changes between steps either.

It takes over the buffers of a :class:`KVCache` that the prompt was prefilled into (a prompt is
one call of any length, best run eagerly), slot for slot: a full-attention buffer sized for the
prompt plus every new token, or a sliding-window ring whose token ``i`` lives in slot ``i % capacity``
(Mistral, arXiv:2310.06825). Attention over the whole buffer costs what the eager cache costs at
the end of the generation, never more than the ring for a window.

Letters: ``b`` batch, ``k`` KV heads, ``m`` slots, ``d`` head dim.
"""

import torch

from zoo.attention.cache import KVCache, LayerCache
from zoo.errors import ConfigError


class StaticKVCache:
    """A self-attention layer's keys and values in fixed buffers, written one token a step, in place.

    Args:
        k_buf, v_buf: ``(b, k, m, d)`` preallocated keys (already rotated) and values.
        pos_buf: ``(b, m)`` each slot's position (read by the mask and by score biases).
        valid_buf: ``(b, m)`` ``True`` where a slot holds a key that may be attended to (written,
            not padding, not rolled back).
        cursor: ``(1,)`` the index of the next token; it goes in slot ``cursor % m``.

    Shapes: :meth:`update` takes ``k, v (b, k, 1, d)``, ``pos (b, 1)``, ``valid (b, 1) | None`` and
    returns the whole buffers ``k, v (b, k, m, d)``, ``pos (b, m)``, ``valid (b, m)``.
    """

    def __init__(self, *, k_buf: torch.Tensor, v_buf: torch.Tensor, pos_buf: torch.Tensor, valid_buf: torch.Tensor, cursor: torch.Tensor) -> None:
        self.k_buf, self.v_buf, self.pos_buf, self.valid_buf, self.cursor = k_buf, v_buf, pos_buf, valid_buf, cursor

    @classmethod
    def adopt(cls, cache: KVCache, *, room: int) -> "StaticKVCache":
        """Take over the buffers of a prefilled ``cache``, which must have ``room`` free slots left
        (or be a ring, whose slots are reused)."""
        if cache.k_buf is None:
            raise ValueError("a static KV cache takes over a prefilled KVCache: feed the prompt first")
        capacity = cache.capacity
        ring = cache.limit is not None and capacity == cache.limit
        if not ring and cache.seen + room > capacity:
            raise ValueError(f"the KV cache has {capacity - cache.seen} free slots, {room} needed: size it with prepare_cache")
        # empty slots are masked out, but a masked weight of 0 times a NaN left in an uninitialised
        # buffer is still NaN: zero them
        cache.k_buf.narrow(2, cache.filled, capacity - cache.filled).zero_()
        cache.v_buf.narrow(2, cache.filled, capacity - cache.filled).zero_()
        slots = torch.arange(capacity, device=cache.k_buf.device)
        valid = (slots < cache.filled).expand(cache.k_buf.shape[0], -1).clone()
        if cache.valid_buf is not None:
            valid &= cache.valid_buf
        cursor = torch.tensor([cache.seen], device=cache.k_buf.device)
        return cls(k_buf=cache.k_buf, v_buf=cache.v_buf, pos_buf=cache.pos_buf, valid_buf=valid, cursor=cursor)

    @property
    def capacity(self) -> int:
        return self.k_buf.shape[2]

    def nbytes(self) -> int:
        """Bytes of the key and value buffers, as :meth:`KVCache.nbytes` counts them."""
        return sum(t.numel() * t.element_size() for t in (self.k_buf, self.v_buf))

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one token's key and value at the cursor and return the whole buffers."""
        if k.shape[2] != 1:
            raise ValueError(f"a static KV cache takes one token a step, got {k.shape[2]}: prefill the prompt into a KVCache")
        slot = self.cursor % self.capacity
        self.k_buf.index_copy_(2, slot, k)
        self.v_buf.index_copy_(2, slot, v)
        self.pos_buf.index_copy_(1, slot, pos.expand(k.shape[0], 1))
        if valid is None:
            self.valid_buf.index_fill_(1, slot, True)
        else:
            self.valid_buf.index_copy_(1, slot, valid)
        self.cursor.add_(1)
        return self.k_buf, self.v_buf, self.pos_buf, self.valid_buf


def has_static_form(cache: list[LayerCache]) -> bool:
    """Whether every layer's self-attention cache can become static: keys and values, or a cache that
    makes its own static form (a recurrent mixer's state); random-feature attention's running sums cannot."""
    return all(isinstance(layer.self_attn, KVCache) or callable(getattr(layer.self_attn, "static", None)) for layer in cache)


def make_static(cache: list[LayerCache], *, room: int) -> list[LayerCache]:
    """Turn every layer's prefilled self-attention cache into a :class:`StaticKVCache` with ``room``
    more tokens, in place (cross-attention caches are read-only already; a recurrent mixer's state
    makes its own static form); returns ``cache``."""
    if not has_static_form(cache):
        kinds = sorted({type(layer.self_attn).__name__ for layer in cache if not has_static_form([layer])})
        raise ConfigError("generate.compiled", True, f"false: layers caching {', '.join(kinds)} have no static cache")
    for layer in cache:
        own = getattr(layer.self_attn, "static", None)  # a cache that makes its own static form (a recurrent state)
        layer.self_attn = own(room=room) if callable(own) else StaticKVCache.adopt(layer.self_attn, room=room)
    return cache
