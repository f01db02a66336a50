"""The decoding cache of a recurrent mixer (retention, selective SSM): a state of fixed size.

Where attention's :class:`~zoo.attention.cache.KVCache` keeps every key and grows with the text, a
recurrent mixer folds each token into a state whose size does not depend on how many tokens it has
read: the cache *is* that state. It answers what the other caches answer (``seen``, ``nbytes``,
``prepare``, ``truncate``, ``static``), so sessions and the generation loops treat every layer alike.
"""

import torch

from zoo.errors import ConfigError


class StateCache:
    """Named state tensors of one mixer layer (retention: ``state``; the SSM: ``state`` and ``conv``).

    Args:
        owner: the mixer's option name, for the refusals (``retention``, ``mamba2``).

    A tensor is overwritten in place when its shape is unchanged, so its storage stays put from one
    decode step to the next (a compiled step sees the same buffers).
    """

    def __init__(self, *, owner: str) -> None:
        self.owner = owner
        self.tensors: dict[str, torch.Tensor] = {}
        self.seen = 0  # tokens read so far (the next token's index), as KVCache counts them

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    def put(self, name: str, value: torch.Tensor) -> None:
        old = self.tensors.get(name)
        # in place only outside autograd: a state that gradients flow through must stay a new tensor
        if old is not None and old.shape == value.shape and not torch.is_grad_enabled():
            old.copy_(value)
        else:
            self.tensors[name] = value

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens read."""
        self.seen += n

    def nbytes(self) -> int:
        """Bytes of the state: the same after one token or a million."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def prepare(self, *, max_len: int | None, rollback: int) -> None:
        """Nothing to reserve (the state has a fixed size); refuse what a state cannot do: take tokens back."""
        if self.tensors:
            raise ValueError("prepare_cache needs an empty cache (call it right after model.new_cache())")
        if rollback:
            raise ConfigError(
                "model/attention", self.owner,
                "a recurrent state cannot take tokens back, which speculative decoding (generate.draft) needs: use attention with a KV cache",
            )  # fmt: skip

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` tokens: only all of them (the state before a token is not kept)."""
        if n != self.seen:
            raise ValueError(f"a recurrent state ({self.owner}) cannot take back {self.seen - n} tokens: it keeps no history")

    def static(self, *, room: int) -> "StaticStateCache":
        """The same state for compiled decode steps (:mod:`zoo.generation.static`); any ``room`` fits."""
        if not self.tensors:
            raise ValueError("a static cache takes over a prefilled cache: feed the prompt first")
        return StaticStateCache(self)


class StaticStateCache(StateCache):
    """A prefilled :class:`StateCache` that counts tokens in a tensor (``cursor``), as
    :class:`~zoo.attention.static_cache.StaticKVCache` does: a Python int is a value a compiler guards
    on, so every decode step would compile anew. The state's shapes never change and :meth:`put`
    writes in place, so nothing else differs.
    """

    def __init__(self, cache: StateCache) -> None:
        # not StateCache.__init__: it takes over the tensors rather than starting empty
        self.owner, self.tensors = cache.owner, cache.tensors
        device = next(iter(cache.tensors.values())).device
        self.cursor = torch.tensor([cache.seen], device=device)

    @property
    def seen(self) -> int:
        return int(self.cursor)

    def advance(self, n: int) -> None:
        self.cursor.add_(n)
