"""Sparse attention patterns: which keys a query may see, as a rule on positions that narrows a :class:`Mask`.

The ``pattern`` of an attention layer (``model/attention=strided|fixed|bigbird``). A pattern is a
rule like the sliding window: :meth:`allows` on positions (broadcastable tensors, so the dense
reference, the blocked kernels and FlexAttention's ``mask_mod`` all evaluate the one rule), plus
:meth:`candidates`, a superset of the keys each query may see, listed per query in ``O(keys seen)``,
from which the gathered kernel (:mod:`zoo.attention.gathered`) and FlexAttention's block mask run
the pattern at sub-quadratic cost without ever building an ``n x m`` tensor.

Each pattern answers:

- ``allows(q, k)``: may the query at position ``q`` see the key at ``k`` (broadcastable int64 tensors);
- ``candidates(q (b, n), lo=, hi=, causal=)``: ``(b, n, l)`` key positions that include every key in
  ``[lo, hi]`` the query may see (entries outside ``[lo, hi]`` and repeats are allowed: dropped later);
- ``query_block``: how many neighbouring queries share most of their candidates (gathered together);
- ``dense_below(causal=)``: queries at positions below it may see every key (computed densely);
- ``keys_per_query(n_keys)``: at most how many keys a query sees, for the FLOP count;
- ``parts()``: disjoint patterns whose union is this one, each gathered on its own and merged by their
  softmaxes' log-sum-exps (strided: its near keys and its columns), or just itself;
- ``query_order(q_pos)``: ``(b, n)`` the order in which to cut queries into blocks, or ``None`` for theirs.

Every pattern lets a query see itself, so no row is left empty. The architecture's causal rule
still applies on top (a pattern never widens a mask): under a causal mask each pattern is causal.

Letters: ``b`` batch, ``n`` queries, ``l`` candidate keys of one query.
"""

from dataclasses import dataclass

import torch

from zoo.errors import ConfigError

_KEY = "model.attention.pattern"


def _positive(name: str, value: int, *, zero: bool = False) -> None:
    if not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(f"{_KEY}.{name}", value, f"a {'non-negative' if zero else 'positive'} whole number of tokens")


@dataclass(frozen=True)
class Strided:
    """Strided factorized attention (Child et al. 2019, arXiv:1904.10509), its two heads' patterns merged.

    A query sees the keys fewer than ``stride`` positions away (the local head) and every key a whole
    number of strides away (the strided head): ``O(n * (stride + n / stride))``, ``O(n sqrt n)`` at
    ``stride ~ sqrt(n)``. GPT-3 alternates such sparse layers with dense ones (``model/layers``).

    Args:
        stride: the local span and the step between the columns a query sees.
    """

    stride: int = 16

    def __post_init__(self) -> None:
        _positive("stride", self.stride)

    @property
    def query_block(self) -> int:
        # gathered whole, neighbouring queries would share no column: one query a block (the gathered
        # kernel takes its two parts instead, FlexAttention the whole rule)
        return 1

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        offset = q - k
        return (offset.abs() < self.stride) | (offset % self.stride == 0)

    def candidates(self, q: torch.Tensor, *, lo: int, hi: int, causal: bool) -> torch.Tensor:
        return torch.cat([part.candidates(q, lo=lo, hi=hi, causal=causal) for part in self.parts()], dim=-1)

    def keys_per_query(self, n_keys: int) -> int:
        return min(n_keys, self.stride + -(-n_keys // self.stride))

    def dense_below(self, *, causal: bool) -> int:
        return 0  # no query sees every key

    def parts(self) -> tuple:
        # neighbouring queries share their near keys, queries of one residue their columns: apart, each
        # is gathered by blocks that share keys, rather than one query at a time
        return StridedNear(self.stride), StridedColumns(self.stride)

    def query_order(self, q_pos: torch.Tensor) -> None:
        return None


@dataclass(frozen=True)
class StridedNear:
    """The near part of :class:`Strided`: keys fewer than ``stride`` positions away."""

    stride: int

    @property
    def query_block(self) -> int:
        return self.stride

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q - k).abs() < self.stride

    def candidates(self, q: torch.Tensor, *, lo: int, hi: int, causal: bool) -> torch.Tensor:
        return q[..., None] + torch.arange(-(self.stride - 1), 1 if causal else self.stride, device=q.device)

    def dense_below(self, *, causal: bool) -> int:
        return 0

    def query_order(self, q_pos: torch.Tensor) -> None:
        return None


@dataclass(frozen=True)
class StridedColumns:
    """The column part of :class:`Strided`: keys a whole number (at least one) of strides away."""

    stride: int

    #: queries of one residue class gathered together: they share every column
    query_block = 64

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        offset = q - k
        return (offset % self.stride == 0) & (offset.abs() >= self.stride)

    def candidates(self, q: torch.Tensor, *, lo: int, hi: int, causal: bool) -> torch.Tensor:
        rows = torch.arange((hi - lo) // self.stride + 1, device=q.device)
        if causal:
            return q[..., None] - self.stride * rows
        # every key of the query's residue class, from the lowest key position on
        return lo + (q[..., None] - lo) % self.stride + self.stride * rows

    def dense_below(self, *, causal: bool) -> int:
        return 0

    def query_order(self, q_pos: torch.Tensor) -> torch.Tensor:
        """Queries by residue modulo the stride, then by position."""
        span = int(q_pos.max() - q_pos.min()) + 1
        return (q_pos % self.stride * span + (q_pos - q_pos.min())).argsort(dim=1, stable=True)


@dataclass(frozen=True)
class Fixed:
    """Fixed factorized attention (Child et al. 2019, arXiv:1904.10509), its two heads' patterns merged.

    Positions are cut into blocks of ``stride``; a query sees its own block and the last ``summary``
    positions of every block (the "summary" columns that carry each block to later ones).

    Args:
        stride: block length (the paper's ``l``).
        summary: summary positions at the end of each block (the paper's ``c``), ``<= stride``.
    """

    stride: int = 16
    summary: int = 2

    def __post_init__(self) -> None:
        _positive("stride", self.stride)
        _positive("summary", self.summary)
        if self.summary > self.stride:
            raise ConfigError(f"{_KEY}.summary", self.summary, f"at most the stride ({self.stride})")

    @property
    def query_block(self) -> int:
        return self.stride  # the queries of one block see the same keys

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q // self.stride == k // self.stride) | (k % self.stride >= self.stride - self.summary)

    def candidates(self, q: torch.Tensor, *, lo: int, hi: int, causal: bool) -> torch.Tensor:
        own = (q // self.stride * self.stride)[..., None] + torch.arange(self.stride, device=q.device)
        blocks = torch.arange(lo // self.stride, hi // self.stride + 1, device=q.device)
        ends = blocks[:, None] * self.stride + torch.arange(self.stride - self.summary, self.stride, device=q.device)
        return torch.cat([own, ends.flatten().expand(*q.shape, -1)], dim=-1)

    def keys_per_query(self, n_keys: int) -> int:
        return min(n_keys, self.stride + self.summary * -(-n_keys // self.stride))

    def dense_below(self, *, causal: bool) -> int:
        return 0  # no query sees every key

    def parts(self) -> tuple:
        return (self,)

    def query_order(self, q_pos: torch.Tensor) -> None:
        return None


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (multiply-xorshift; products stay below 2**62, so no int64 overflow)."""
    x = x & 0x7FFFFFFF
    x = (x * 0x2C1B3C6D) & 0x7FFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x297A2D39) & 0x7FFFFFFF
    return x ^ (x >> 12)


@dataclass(frozen=True)
class BigBird:
    """BigBird's sparse attention (Zaheer et al. 2020, arXiv:2007.14062): window + global + random blocks.

    A query sees the keys fewer than ``window`` positions away, the first ``n_global`` positions (which
    also see every key under a bidirectional mask), and ``random_blocks`` blocks of ``block`` keys.
    The random blocks of query block ``i`` are drawn among blocks ``0 .. i`` by a hash of
    ``(seed, i, draw)``: the pattern is fixed by the seed, never depends on the sequence length, and
    stays the same as decoding extends the sequence (under a bidirectional mask too, where BigBird
    draws among all blocks: here they come from earlier blocks only).

    Args:
        window: keys fewer than this many positions away are seen (BigBird's sliding blocks, per token).
        n_global: the first positions, global tokens (BigBird-ITC).
        random_blocks: random key blocks per query block.
        block: length of a random block.
        seed: fixes the random blocks.
    """

    window: int = 8
    n_global: int = 2
    random_blocks: int = 2
    block: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("window", self.window)
        _positive("n_global", self.n_global, zero=True)
        _positive("random_blocks", self.random_blocks, zero=True)
        _positive("block", self.block)
        if self.random_blocks > 64:
            raise ConfigError(f"{_KEY}.random_blocks", self.random_blocks, "at most 64 random blocks per query block")
        if not isinstance(self.seed, int):
            raise ConfigError(f"{_KEY}.seed", self.seed, "a whole number")

    @property
    def query_block(self) -> int:
        return self.block

    def random_picks(self, q_block: torch.Tensor) -> list[torch.Tensor]:
        """The key blocks query block ``q_block`` draws, one tensor like ``q_block`` per draw."""
        q_block = q_block.clamp(min=0)
        salt = int(_mix(torch.tensor(self.seed)))
        return [_mix(q_block * 64 + draw + salt) % (q_block + 1) for draw in range(self.random_blocks)]

    def allows(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ok = ((q - k).abs() < self.window) | (k < self.n_global) | (q < self.n_global)
        k_block = k // self.block
        for pick in self.random_picks(q // self.block):
            ok = ok | (k_block == pick)
        return ok

    def candidates(self, q: torch.Tensor, *, lo: int, hi: int, causal: bool) -> torch.Tensor:
        near = q[..., None] + torch.arange(-(self.window - 1), 1 if causal else self.window, device=q.device)
        parts = [near, torch.arange(self.n_global, device=q.device).expand(*q.shape, -1)]
        inside = torch.arange(self.block, device=q.device)
        parts += [(pick * self.block)[..., None] + inside for pick in self.random_picks(q // self.block)]
        return torch.cat(parts, dim=-1)

    def dense_below(self, *, causal: bool) -> int:
        """Queries at positions below this see every key (bidirectional global tokens): computed densely."""
        return 0 if causal else self.n_global

    def parts(self) -> tuple:
        return (self,)

    def query_order(self, q_pos: torch.Tensor) -> None:
        return None

    def keys_per_query(self, n_keys: int) -> int:
        return min(n_keys, self.window + self.n_global + self.random_blocks * self.block)


#: what the ``pattern`` of an attention layer (or of one part of it) may be
Pattern = Strided | StridedNear | StridedColumns | Fixed | BigBird
