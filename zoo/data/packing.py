"""Tokenise a corpus once, pack it into fixed-length rows, and serve shuffled, resumable batches.

Every batch, from text or from a synthetic task, is a dict of tensors:

- ``tokens``: ``(b, n + 1)`` long; inputs are ``tokens[:, :-1]``, next-token targets ``tokens[:, 1:]``.
- ``loss_mask``: ``(b, n)`` bool, aligned with the targets; ``False`` where a target must not count.
- ``segment_ids``: ``(b, n + 1)`` long, the document index of each token counted from the row's
  first document (an ``<eos>`` belongs to the document it ends), for attention that respects
  document boundaries.

Rows overlap by one token (row ``i`` is ``stream[i*n : i*n + n + 1]``), so each token of the stream
is a target exactly once.
"""

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from zoo.errors import ConfigError

Batch = dict[str, torch.Tensor]
BOUNDARIES = ("cross", "mask")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (ints, strings), stable across processes and platforms."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


class ResumableLoader:
    """Batches ``make_batch(seed=, epoch=, index=)`` for ``index`` in ``range(batches_per_epoch)``, resumable mid-epoch.

    A batch is a pure function of ``(seed, epoch, index)``, so the state is three plain ints.
    Iterating yields the rest of the current epoch, then moves the state to the next epoch; a
    training loop runs ``while True: for batch in loader: ...``. :meth:`state_dict` taken after a
    batch was yielded points at the batch after it. One iterator at a time: they share the state.

    Args:
        make_batch: builds batch ``index`` of ``epoch`` under ``seed``.
        batches_per_epoch: batches in one epoch (> 0).
        seed: the data seed.
    """

    def __init__(self, *, make_batch: Callable[..., Batch], batches_per_epoch: int, seed: int) -> None:
        if batches_per_epoch <= 0:
            raise ValueError("a loader needs at least one batch per epoch")
        self.make_batch, self.batches_per_epoch = make_batch, batches_per_epoch
        self.seed, self.epoch, self.position = seed, 0, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        while self.position < self.batches_per_epoch:
            batch = self.make_batch(seed=self.seed, epoch=self.epoch, index=self.position)
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def reset(self) -> None:
        """Back to the first batch of epoch 0 (an evaluation pass starts here every time)."""
        self.epoch, self.position = 0, 0

    def state_dict(self) -> dict[str, int]:
        """Plain ints (JSON / safetensors-metadata friendly)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "batches_per_epoch": self.batches_per_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["batches_per_epoch"]) != self.batches_per_epoch:
            raise ValueError(
                f"the saved loader had {state['batches_per_epoch']} batches per epoch, this one has {self.batches_per_epoch}: "
                "the data, seq_len or batch_size changed, so the run cannot resume the same stream"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])


def tokenize_documents(documents: Sequence[str], *, tokenizer, chunk: int = 1024) -> torch.Tensor:
    """One int32 stream of every document's tokens, each followed by ``tokenizer.eos_id``.

    Args:
        documents: the texts.
        tokenizer: anything with ``encode_batch`` and ``eos_id`` (:mod:`zoo.tokenizer`).
        chunk: documents per ``encode_batch`` call (bounds the memory of the Python lists).

    Returns: ``(total,)`` int32.
    """
    parts = []
    for start in range(0, len(documents), chunk):
        ids = tokenizer.encode_batch(documents[start : start + chunk])
        parts.append(torch.tensor([t for doc in ids for t in (*doc, tokenizer.eos_id)], dtype=torch.int32))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)


class PackedDataset:
    """Fixed-length rows of ``seq_len + 1`` tokens cut from a token stream (GPT-2-style packing).

    Args:
        stream: ``(total,)`` token ids, documents separated by ``eos_id``.
        seq_len: model inputs per row, ``n``.
        eos_id: the separator.
        boundaries: ``"cross"``: the stream is one text (every target counts, one segment);
            ``"mask"``: a target whose input is an ``<eos>`` (the next document's first token, which
            the previous document cannot predict) is masked out of the loss, and ``segment_ids``
            count documents.

    Indexing with ``(b,)`` long row indices (or one int) gives a batch (module docstring).
    """

    def __init__(self, *, stream: torch.Tensor, seq_len: int, eos_id: int, boundaries: str = "mask") -> None:
        if boundaries not in BOUNDARIES:
            raise ConfigError("data.boundaries", boundaries, f"one of {', '.join(BOUNDARIES)}")
        if seq_len <= 0:
            raise ConfigError("seq_len", seq_len, "> 0")
        self.seq_len, self.eos_id, self.boundaries = seq_len, eos_id, boundaries
        n_rows = max((len(stream) - 1) // seq_len, 0)
        self.rows = stream[: n_rows * seq_len + 1].unfold(0, seq_len + 1, seq_len) if n_rows else stream.new_zeros(0, seq_len + 1)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: torch.Tensor | int) -> Batch:
        tokens = self.rows[torch.as_tensor(index).reshape(-1)].long()
        is_eos = tokens == self.eos_id
        if self.boundaries == "cross":
            return {"tokens": tokens, "loss_mask": torch.ones_like(tokens[:, 1:], dtype=torch.bool), "segment_ids": torch.zeros_like(tokens)}
        segment_ids = is_eos.cumsum(1) - is_eos.long()  # exclusive count: an <eos> stays in its document
        return {"tokens": tokens, "loss_mask": ~is_eos[:, :-1], "segment_ids": segment_ids}

    def loader(self, *, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = True) -> ResumableLoader:
        """Batches of rows; with ``shuffle``, a fresh permutation per epoch drawn from ``(seed, epoch)``.

        ``drop_last`` keeps every batch ``batch_size`` rows (training); otherwise the last is smaller.
        """
        if batch_size <= 0:
            raise ConfigError("batch_size", batch_size, "> 0")
        n = len(self)
        n_batches = n // batch_size if drop_last else -(-n // batch_size)
        if n_batches == 0:
            raise ConfigError("batch_size", batch_size, f"<= {n}, the rows of {self.seq_len + 1} tokens this split packs into")
        order_cache: dict[tuple[int, int], torch.Tensor] = {}

        def make_batch(*, seed: int, epoch: int, index: int) -> Batch:
            if (seed, epoch) not in order_cache:
                order_cache.clear()
                order_cache[seed, epoch] = torch.randperm(n, generator=generator("rows", seed, epoch)) if shuffle else torch.arange(n)
            return self[order_cache[seed, epoch][index * batch_size : (index + 1) * batch_size]]

        return ResumableLoader(make_batch=make_batch, batches_per_epoch=n_batches, seed=seed)


class TokenData:
    """A text corpus served as packed token rows: the ``data`` config of every text corpus.

    Tokenises each split once per tokenizer, kept in memory and, with ``cache_dir``, on disk as
    ``<corpus fingerprint>-<tokenizer id>-<split>.pt``.

    Args:
        corpus: a corpus (:mod:`zoo.data.corpus`): ``documents(split)`` and ``fingerprint``.
        boundaries: ``"mask"`` or ``"cross"``, as in :class:`PackedDataset`.
        cache_dir: folder for the tokenised splits; ``None``: memory only.
    """

    #: text has no vocabulary of its own: the tokenizer's ``vocab_size`` sizes the model
    vocab_size = None

    def __init__(self, *, corpus, boundaries: str = "mask", cache_dir: str | Path | None = None) -> None:
        if boundaries not in BOUNDARIES:
            raise ConfigError("data.boundaries", boundaries, f"one of {', '.join(BOUNDARIES)}")
        self.corpus, self.boundaries = corpus, boundaries
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._streams: dict[tuple[str, str], torch.Tensor] = {}

    def stream(self, *, split: str, tokenizer) -> torch.Tensor:
        """``(total,)`` int32 tokens of ``split``, documents separated by ``<eos>``; tokenised once."""
        key = (split, tokenizer.id)
        if key not in self._streams:
            path = self.cache_dir / f"{self.corpus.fingerprint}-{tokenizer.id}-{split}.pt" if self.cache_dir else None
            cached = _read_cache(path) if path is not None and path.exists() else None
            if cached is not None:
                self._streams[key] = cached
            else:
                self._streams[key] = tokenize_documents(self.corpus.documents(split), tokenizer=tokenizer)
                if path is not None:
                    _save_atomically(self._streams[key], path)
        return self._streams[key]

    def dataset(self, *, split: str, seq_len: int, tokenizer) -> PackedDataset:
        return PackedDataset(stream=self.stream(split=split, tokenizer=tokenizer), seq_len=seq_len, eos_id=tokenizer.eos_id, boundaries=self.boundaries)

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
        """Batches of ``split``; ``shuffle`` and ``drop_last`` default to ``split == "train"``."""
        if tokenizer is None:
            raise ConfigError("tokenizer", None, "text data needs a tokenizer")
        train = split == "train"
        return self.dataset(split=split, seq_len=seq_len, tokenizer=tokenizer).loader(
            batch_size=batch_size, seed=seed, shuffle=train if shuffle is None else shuffle, drop_last=train if drop_last is None else drop_last
        )

    def __repr__(self) -> str:
        return f"TokenData(corpus={self.corpus!r}, boundaries={self.boundaries!r})"


def _read_cache(path: Path) -> torch.Tensor | None:
    """A cached token stream, or ``None`` (with one line saying so) when the entry is damaged or not
    ours: it is rebuilt then. ``weights_only`` refuses any pickled object that is not a tensor."""
    try:
        stream = torch.load(path, weights_only=True)
        if not isinstance(stream, torch.Tensor) or stream.dim() != 1 or stream.dtype != torch.int32:
            raise ValueError(f"a {type(stream).__name__}, not a 1-d int32 tensor")
        return stream
    except Exception as e:  # truncated zip, a pickle weights_only refuses, another object
        detail = " ".join(str(e).split())[:120]
        print(f"zoo: rebuilding the token cache entry {path}: damaged or not a token stream ({type(e).__name__}: {detail})", file=sys.stderr)
        return None


def _save_atomically(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # written aside then renamed: a concurrent run never reads a half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        torch.save(tensor.clone(), f)
    os.replace(tmp, path)
