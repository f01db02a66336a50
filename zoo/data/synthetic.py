"""Synthetic tasks that probe one capability each, served as the same batches as packed text.

A task has its own vocabulary (``vocab_size``: the model must be built with it), needs no tokenizer
(``corpus`` is ``None``), and scores only the answer positions (``loss_mask``), so the causal LM
objective's loss and accuracy are the task's. Token 0 is filler in every task.

Batches (as in :mod:`zoo.data.packing`): ``tokens (b, n + 1)``, ``loss_mask (b, n)`` over the targets
``tokens[:, 1:]``, and no ``segment_ids`` (a row is one example). Batch ``index`` of ``epoch`` is
drawn from a generator seeded with ``(seed, split, epoch, index)``: training sees fresh examples every
epoch, validation the same ones every pass.
"""

import torch

from zoo.data.packing import Batch, ResumableLoader, generator
from zoo.errors import ConfigError


def _random_subset(b: int, size: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``(b, k)``: per row, ``k`` distinct values of ``range(size)`` in random order."""
    return torch.rand(b, size, generator=g).argsort(dim=1)[:, :k]


class _Task:
    """Serving shared by the tasks: :meth:`loader` over the task's ``sample``."""

    corpus = None

    def __init__(self, *, vocab_size: int, batches_per_epoch: int, val_batches: int) -> None:
        for key, value in (("data.batches_per_epoch", batches_per_epoch), ("data.val_batches", val_batches)):
            if value <= 0:
                raise ConfigError(key, value, "> 0")
        self.vocab_size, self.batches_per_epoch, self.val_batches = vocab_size, batches_per_epoch, val_batches

    def sample(self, *, batch_size: int, seq_len: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def loader(
        self,
        *,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int,
        tokenizer=None,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
    ) -> ResumableLoader:
        """Batches of ``split``, as :meth:`zoo.data.TokenData.loader`; ``tokenizer``, ``shuffle`` and
        ``drop_last`` are accepted for the common signature and ignored (every batch is fresh and full)."""
        train = split == "train"

        def make_batch(*, seed: int, epoch: int, index: int) -> Batch:
            return self.sample(batch_size=batch_size, seq_len=seq_len, generator=generator(type(self).__name__, seed, split, epoch if train else 0, index))

        self.sample(batch_size=1, seq_len=seq_len, generator=torch.Generator())  # sizes fail here, not mid-run
        return ResumableLoader(make_batch=make_batch, batches_per_epoch=self.batches_per_epoch if train else self.val_batches, seed=seed)


class MQAR(_Task):
    """Multi-query associative recall (Arora et al. 2023, Zoology, arXiv:2312.04927).

    A row is ``n_pairs`` key-value pairs ``k1 v1 k2 v2 ...``, then ``n_queries`` distinct keys asked
    again, each followed by its value, in random two-token slots of an otherwise filler (0) region.
    The loss counts only the values of the queries (the target after each queried key). Keys come
    from ``[1, vocab_size // 2)``, values from ``[vocab_size // 2, vocab_size)``, both distinct
    within a row. (Zoology spaces queries by a power law; here slots are uniform.)

    Args:
        vocab_size: tokens of the task.
        n_pairs: key-value pairs per row; ``2 * (n_pairs + n_queries) <= seq_len + 1``.
        n_queries: keys asked (``<= n_pairs``); ``None``: all of them.
        batches_per_epoch: training batches per epoch.
        val_batches: batches in the validation split.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 8192,
        n_pairs: int = 16,
        n_queries: int | None = None,
        batches_per_epoch: int = 1000,
        val_batches: int = 16,
    ) -> None:
        super().__init__(vocab_size=vocab_size, batches_per_epoch=batches_per_epoch, val_batches=val_batches)
        n_queries = n_pairs if n_queries is None else n_queries
        if n_pairs <= 0:
            raise ConfigError("data.n_pairs", n_pairs, "> 0")
        if not 0 < n_queries <= n_pairs:
            raise ConfigError("data.n_queries", n_queries, f"in [1, n_pairs={n_pairs}]")
        if n_pairs > vocab_size // 2 - 1:
            raise ConfigError("data.vocab_size", vocab_size, f">= {2 * (n_pairs + 1)} for {n_pairs} distinct keys and values")
        self.n_pairs, self.n_queries = n_pairs, n_queries

    def __repr__(self) -> str:
        return f"MQAR(vocab_size={self.vocab_size}, n_pairs={self.n_pairs}, n_queries={self.n_queries})"

    def sample(self, *, batch_size: int, seq_len: int, generator: torch.Generator) -> Batch:
        """One batch (module docstring); ``seq_len`` model inputs per row."""
        b, p, q, half = batch_size, self.n_pairs, self.n_queries, self.vocab_size // 2
        slots = (seq_len + 1 - 2 * p) // 2
        if slots < q:
            raise ConfigError("data.n_pairs", p, f"2 * (n_pairs + n_queries) <= seq_len + 1 = {seq_len + 1}")
        keys = _random_subset(b, half - 1, p, generator) + 1
        values = _random_subset(b, self.vocab_size - half, p, generator) + half
        asked = _random_subset(b, p, q, generator)
        at = 2 * p + 2 * _random_subset(b, slots, q, generator)  # where each queried key goes
        tokens = torch.zeros(b, seq_len + 1, dtype=torch.long)
        tokens[:, : 2 * p] = torch.stack([keys, values], dim=2).flatten(1)
        tokens.scatter_(1, at, keys.gather(1, asked))
        tokens.scatter_(1, at + 1, values.gather(1, asked))
        # target t is token t + 1: the answer is the target at the query key's own position
        loss_mask = torch.zeros(b, seq_len, dtype=torch.bool).scatter_(1, at, True)
        return {"tokens": tokens, "loss_mask": loss_mask}


class Copying(_Task):
    """Copying: ``copy_len`` random tokens, a separator, then the same tokens again (Graves et al. 2014, arXiv:1410.5401).

    The loss counts only the copy. Token 0 is filler (after the copy, when the row is longer), 1 the
    separator, and the tokens to copy are drawn from ``[2, vocab_size)``.

    Args:
        vocab_size: tokens of the task (> 2).
        copy_len: tokens to copy; ``None``: ``seq_len // 2``, the most a row holds.
        batches_per_epoch, val_batches: as in :class:`MQAR`.
    """

    SEPARATOR = 1

    def __init__(self, *, vocab_size: int = 64, copy_len: int | None = None, batches_per_epoch: int = 1000, val_batches: int = 16) -> None:
        super().__init__(vocab_size=vocab_size, batches_per_epoch=batches_per_epoch, val_batches=val_batches)
        if vocab_size <= 2:
            raise ConfigError("data.vocab_size", vocab_size, "> 2 (0 is filler, 1 the separator)")
        if copy_len is not None and copy_len <= 0:
            raise ConfigError("data.copy_len", copy_len, "> 0, or null for seq_len // 2")
        self.copy_len = copy_len

    def __repr__(self) -> str:
        return f"Copying(vocab_size={self.vocab_size}, copy_len={self.copy_len})"

    def sample(self, *, batch_size: int, seq_len: int, generator: torch.Generator) -> Batch:
        """One batch (module docstring); ``seq_len`` model inputs per row."""
        n = seq_len // 2 if self.copy_len is None else self.copy_len
        if 2 * n > seq_len or n == 0:
            raise ConfigError("data.copy_len", self.copy_len, f"in [1, seq_len // 2 = {seq_len // 2}]")
        data = torch.randint(2, self.vocab_size, (batch_size, n), generator=generator)
        tokens = torch.zeros(batch_size, seq_len + 1, dtype=torch.long)
        tokens[:, :n], tokens[:, n], tokens[:, n + 1 : 2 * n + 1] = data, self.SEPARATOR, data
        # targets t = n .. 2n - 1 are the copied tokens n + 1 .. 2n
        loss_mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
        loss_mask[:, n : 2 * n] = True
        return {"tokens": tokens, "loss_mask": loss_mask}
