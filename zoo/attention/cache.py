"""Key/value caches for incremental decoding.

A cache holds keys already rotated by their positions, so a cached key never needs its position
scheme again; it also keeps each key's position and padding flag, because masks and score biases
are evaluated on positions, not on slots.

Buffers are preallocated (sized by :meth:`KVCache.reserve`, else grown by doubling) and written in
place, so a decode step copies one key and one value instead of concatenating the whole history. A
sliding-window layer's buffer is a ring bounded by its window: token ``i`` lives in slot
``i % capacity`` and overwrites a key no future query can see (Mistral, arXiv:2310.06825). Slot
order never matters: softmax over keys is order-free and the mask reads each slot's position.

Letters: ``b`` batch, ``k`` KV heads, ``m`` cached keys (slots), ``n`` new tokens, ``d`` head dim.
"""

import torch


class KVCache:
    """The keys and values of one self-attention layer, sized by its KV heads (so GQA/MQA save memory).

    Args:
        window: the layer's sliding window; the buffer then keeps at most ``window + rollback`` keys
            (a rolling buffer), so its memory stays bounded however long the generation runs.
        rollback: how many tokens :meth:`truncate` must be able to take back from a rolling buffer
            (speculative decoding drops rejected draft tokens); unused without a window.

    Shapes: :meth:`update` takes ``k, v (b, k, n, d)``, ``pos, valid (b, n)`` and returns every key a
    query of this step may attend to: ``k, v (b, k, m, d)``, ``pos (b, m)``, ``valid (b, m) | None``.
    """

    def __init__(self, *, window: int | None = None, rollback: int = 0) -> None:
        if window is not None and window <= 0:
            raise ValueError(f"KVCache window must be positive, got {window}")
        self.window, self.rollback = window, rollback
        self.k_buf: torch.Tensor | None = None
        self.v_buf: torch.Tensor | None = None
        self.pos_buf: torch.Tensor | None = None
        # Padding flags per slot; only allocated once some key is padding or a rolled-back ring has
        # holes, so an unpadded batch keeps ``valid=None`` and SDPA's mask-free path.
        self.valid_buf: torch.Tensor | None = None
        self.seen = 0  # tokens appended so far (the next token's index), including those a ring dropped
        self.filled = 0  # slots holding keys (the prefix of the buffer that update returns)
        self.oldest = 0  # the oldest token a ring still holds; older ones were overwritten
        self.reserved = 0

    # -- sizes -----------------------------------------------------------------------------------

    @property
    def limit(self) -> int | None:
        """The most slots this cache will ever hold: ``window + rollback`` for a rolling buffer."""
        return None if self.window is None else self.window + self.rollback

    @property
    def capacity(self) -> int:
        return 0 if self.k_buf is None else self.k_buf.shape[2]

    def reserve(self, n: int) -> None:
        """Allocate room for ``n`` tokens at the first update (e.g. prompt + new tokens), not by doubling."""
        self.reserved = max(self.reserved, n)

    def prepare(self, *, max_len: int | None, rollback: int) -> None:
        """Before the first update: room for ``max_len`` tokens, and ``rollback`` for a ring."""
        if self.k_buf is not None:
            raise ValueError("prepare_cache needs an empty cache (call it right after model.new_cache())")
        self.rollback = rollback
        if max_len is not None:
            self.reserve(max_len)

    def nbytes(self) -> int:
        """Bytes of the key and value buffers (positions and padding flags, per token not per head, excluded)."""
        return sum(t.numel() * t.element_size() for t in (self.k_buf, self.v_buf) if t is not None)

    @property
    def k(self) -> torch.Tensor | None:
        """The cached keys ``(b, k, m, d)`` (a view; slot order, not position order)."""
        return None if self.k_buf is None else self.k_buf.narrow(2, 0, self.filled)

    @property
    def v(self) -> torch.Tensor | None:
        return None if self.v_buf is None else self.v_buf.narrow(2, 0, self.filled)

    @property
    def pos(self) -> torch.Tensor | None:
        return None if self.pos_buf is None else self.pos_buf.narrow(1, 0, self.filled)

    @property
    def valid(self) -> torch.Tensor | None:
        return None if self.valid_buf is None else self.valid_buf.narrow(1, 0, self.filled)

    # -- writing ---------------------------------------------------------------------------------

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append new keys/values and return everything a query of this step may attend to."""
        b, n = k.shape[0], k.shape[2]
        if self.k_buf is None:
            self._allocate(k, v, self.seen + n)
        elif self.k_buf.shape[0] != b:
            raise ValueError(f"KVCache holds a batch of {self.k_buf.shape[0]}, got keys for {b}")
        if valid is not None and self.valid_buf is None:
            self._track_valid()
        start, limit = self.seen, self.limit
        if limit is not None and (start + n > limit or self.oldest > 0):
            return self._roll(k, v, pos, valid)
        if start + n > self.capacity:
            self._grow(start + n)
        self._write(start, k, v, pos, valid)
        self.seen = self.filled = start + n
        return self.k, self.v, self.pos, self.valid

    def _roll(self, k, v, pos, valid):
        """Write into the ring; with several new tokens, return the old keys plus all new ones first:
        the earliest new queries need keys that the last new tokens overwrite."""
        n, cap, start = k.shape[2], self.limit, self.seen
        if self.capacity < cap:
            self._grow(cap)
        self.oldest = max(self.oldest, start + n - cap)
        if n == 1:
            self._write(start % cap, k, v, pos, valid)
            self.seen, self.filled = start + 1, cap
            return self.k, self.v, self.pos, self.valid
        b = k.shape[0]
        old_valid, new_valid = self.valid, valid
        if old_valid is not None and new_valid is None:
            new_valid = torch.ones(b, n, dtype=torch.bool, device=k.device)
        out = (
            torch.cat([self.k, k], dim=2),
            torch.cat([self.v, v], dim=2),
            torch.cat([self.pos, pos.expand(b, n)], dim=1),
            None if old_valid is None else torch.cat([old_valid, new_valid], dim=1),
        )
        keep = min(n, cap)  # only the last ``cap`` new tokens can still be seen later
        pos = pos.expand(b, n)
        first = start + n - keep  # token index of the first kept one; at most two contiguous runs of slots
        done = 0
        while done < keep:
            slot = (first + done) % cap
            run = min(keep - done, cap - slot)
            part = slice(n - keep + done, n - keep + done + run)
            self._write(slot, k[:, :, part], v[:, :, part], pos[:, part], None if valid is None else valid[:, part])
            done += run
        self.seen, self.filled = start + n, cap
        return out

    def _allocate(self, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        b, h, _, d = k.shape
        cap = max(n, self.reserved, 16)
        if self.limit is not None:
            cap = min(cap, self.limit)
        self.k_buf = k.new_empty(b, h, cap, d)
        self.v_buf = v.new_empty(b, h, cap, v.shape[3])
        self.pos_buf = torch.zeros(b, cap, dtype=torch.long, device=k.device)

    def _grow(self, n: int) -> None:
        cap = max(n, 2 * self.capacity)
        if self.limit is not None:
            cap = min(cap, self.limit)
        used = self.filled

        def grown(buf: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(buf.shape)
            shape[dim] = cap
            new = buf.new_zeros(shape) if buf.dtype in (torch.long, torch.bool) else buf.new_empty(shape)
            new.narrow(dim, 0, used).copy_(buf.narrow(dim, 0, used))
            return new

        self.k_buf, self.v_buf = grown(self.k_buf, 2), grown(self.v_buf, 2)
        self.pos_buf = grown(self.pos_buf, 1)
        if self.valid_buf is not None:
            self.valid_buf = grown(self.valid_buf, 1)

    def _track_valid(self) -> None:
        self.valid_buf = torch.ones(self.pos_buf.shape, dtype=torch.bool, device=self.pos_buf.device)

    def _write(self, slot: int, k, v, pos, valid) -> None:
        # narrow + copy_ rather than slice assignment: a decode step is dominated by per-call overhead
        n = k.shape[2]
        self.k_buf.narrow(2, slot, n).copy_(k)
        self.v_buf.narrow(2, slot, n).copy_(v)
        self.pos_buf.narrow(1, slot, n).copy_(pos)
        if self.valid_buf is not None:
            rows = self.valid_buf.narrow(1, slot, n)
            if valid is None:
                rows.fill_(True)
            else:
                rows.copy_(valid)

    # -- rollback --------------------------------------------------------------------------------

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` tokens appended (drop rejected draft tokens).

        A rolling buffer can take back at most ``rollback + 1`` tokens once it has wrapped: older keys
        that the kept tokens still need have been overwritten otherwise.
        """
        if not 0 <= n <= self.seen:
            raise ValueError(f"cannot truncate a cache of {self.seen} tokens to {n}")
        cap = self.limit
        if cap is None or self.oldest == 0 or n == 0:
            self.seen = self.filled = n
            self.oldest = 0 if n == 0 else self.oldest
            return
        # A wrapped ring: the next query, at token ``n``, needs the tokens back to ``n - window + 1``.
        if self.oldest > n - self.window + 1:
            raise ValueError(
                f"a rolling KV cache (window {self.window}, rollback {self.rollback}) cannot take back "
                f"{self.seen - n} tokens: build it with rollback >= {self.seen - n - 1}"
            )
        if self.valid_buf is None:
            self._track_valid()
        for i in range(n, self.seen):
            self.valid_buf[:, i % cap] = False
        self.seen = n


class MemoryCache:
    """Cross-attention keys and values over the encoder output: computed once, then only read."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def set(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v) if t is not None)


class LayerCache:
    """The caches of one block: its self-attention and, in an encoder-decoder, its cross-attention.

    Args:
        window, rollback: of the self-attention's :class:`KVCache`.
        self_attn: the self-attention slot's own cache instead (a recurrent mixer's
            :class:`~zoo.attention.state_cache.StateCache`, random-feature attention's running sums).
    """

    def __init__(self, *, window: int | None = None, rollback: int = 0, self_attn=None) -> None:
        self.self_attn = KVCache(window=window, rollback=rollback) if self_attn is None else self_attn
        self.cross_attn = MemoryCache()

    def nbytes(self) -> int:
        return self.self_attn.nbytes() + self.cross_attn.nbytes()


def cache_nbytes(cache: list[LayerCache]) -> int:
    """Bytes of keys and values held by a model's cache (from ``model.new_cache()``)."""
    return sum(layer.nbytes() for layer in cache)


def prepare_cache(cache: list[LayerCache], *, max_len: int | None = None, rollback: int = 0) -> list[LayerCache]:
    """Size an empty cache before its first update: room for ``max_len`` tokens, ``rollback`` for rings."""
    for layer in cache:
        layer.self_attn.prepare(max_len=max_len, rollback=rollback)
    return cache


def truncate_cache(cache: list[LayerCache], n: int) -> None:
    """Keep the first ``n`` tokens of every layer's self-attention cache."""
    for layer in cache:
        layer.self_attn.truncate(n)
