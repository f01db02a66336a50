"""The data side of training (config group ``data``): corpora, synthetic tasks, packing, batches.

Every ``data`` option builds an object with ``corpus`` (a text corpus to train a tokenizer on, or
``None``), ``vocab_size`` (a synthetic task's own vocabulary, or ``None``: the tokenizer's) and
``loader(*, split, seq_len, batch_size, seed, tokenizer)`` -> a resumable iterator of batches
``{"tokens": (b, n + 1), "loss_mask": (b, n)}``, plus ``"segment_ids": (b, n + 1)`` where attention
must stop at document boundaries (see :mod:`zoo.data.packing`).
"""

from zoo.data.corpus import Corpus, Document, HFDiskCorpus, StdlibCorpus, TextCorpus, split_of
from zoo.data.packing import PackedDataset, ResumableLoader, TokenData, derive_seed, generator, tokenize_documents
from zoo.data.synthetic import MQAR, Copying

__all__ = [
    "Copying",
    "Corpus",
    "Document",
    "HFDiskCorpus",
    "MQAR",
    "PackedDataset",
    "ResumableLoader",
    "StdlibCorpus",
    "TextCorpus",
    "TokenData",
    "derive_seed",
    "generator",
    "split_of",
    "tokenize_documents",
]
