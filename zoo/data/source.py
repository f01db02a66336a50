"""What every ``data`` option builds: a source of resumable batches (a text corpus or a synthetic task)."""

from typing import Protocol

from zoo.data.corpus import Corpus
from zoo.data.packing import ResumableLoader


class DataSource(Protocol):
    """A ``data`` option, as training asks it (:mod:`zoo.data` for the batches' shapes).

    Args:
        corpus: the text a tokenizer trains on, or ``None`` (a synthetic task).
        vocab_size: a synthetic task's own vocabulary, or ``None`` (the tokenizer's).
    """

    corpus: Corpus | None
    vocab_size: int | None

    def loader(self, *, split: str, seq_len: int, batch_size: int, seed: int, tokenizer=None) -> ResumableLoader:
        """A resumable iterator of batches of ``batch_size`` rows of ``seq_len + 1`` tokens from ``split``."""
        ...
