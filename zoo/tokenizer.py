"""Tokenizers (config group ``tokenizer``): raw UTF-8 bytes, and a BPE trained on the run's corpus.

Every tokenizer keeps one contract, which the packer (:mod:`zoo.data.packing`) and the objectives
(:mod:`zoo.objectives`) rely on:

- ``encode(text) -> list[int]`` never emits a special token, and ``decode(encode(text)) == text``
  for every string.
- Regular tokens hold ids ``[0, n_regular)``; the specials ``<pad> <bos> <eos> <mask>
  <extra_id_0> ... <extra_id_{n_sentinels-1}>`` follow them, in that order.
- ``vocab_size`` is the embedding size a model needs: every id is below it.
- ``id`` names the tokenizer exactly (caches of tokenised text are keyed by it), ``token_bytes``
  says how many UTF-8 bytes each id stands for (for bits per byte), and ``save(dir)`` /
  :func:`load_tokenizer` carry it with a run or a checkpoint.

``tokenizers`` (Hugging Face) is imported lazily, inside the BPE code only.
"""

import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from zoo.errors import ConfigError, DamagedFile, FileError

#: the specials every tokenizer carries, before its sentinels
SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>")
#: how ``<mask>`` is written in text: the blank a prompt holds for a GLM model to fill (``zoo-generate``)
MASK_TOKEN = SPECIALS[3]
#: zoo's own metadata, saved next to (or instead of) Hugging Face's ``tokenizer.json``
META_FILE = "zoo_tokenizer.json"
#: bump when the BPE recipe changes, so cached tokenizers trained the old way are not reused
BPE_RECIPE = "bpe1"
# GPT-4's (cl100k) split: words keep one leading space or punctuation mark, runs of whitespace stay
# whole except the space before a word, and newlines group; code indentation merges well under it.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def special_tokens(n_sentinels: int) -> list[str]:
    """``<pad> <bos> <eos> <mask>`` then the T5 sentinels ``<extra_id_0..n_sentinels-1>``."""
    return [*SPECIALS, *(f"<extra_id_{i}>" for i in range(n_sentinels))]


def default_cache_dir() -> Path:
    """``$ZOO_CACHE/tokenizers``, else ``~/.cache/zoo/tokenizers``."""
    return Path(os.environ.get("ZOO_CACHE") or "~/.cache/zoo").expanduser() / "tokenizers"


class Tokenizer:
    """The special-token bookkeeping both tokenizers share (the contract in the module docstring).

    Args:
        n_regular: ids ``[0, n_regular)`` are regular tokens; the specials follow.
        vocab_size: the embedding size; at least ``n_regular`` plus the specials.
        n_sentinels: T5 sentinels ``<extra_id_i>`` for span corruption.
    """

    def __init__(self, *, n_regular: int, vocab_size: int, n_sentinels: int) -> None:
        if n_sentinels < 0:
            raise ConfigError("tokenizer.n_sentinels", n_sentinels, ">= 0")
        self.specials = special_tokens(n_sentinels)
        if vocab_size < n_regular + len(self.specials):
            raise ConfigError("tokenizer.vocab_size", vocab_size, f">= {n_regular + len(self.specials)}")
        self.n_regular, self.vocab_size, self.n_sentinels = n_regular, vocab_size, n_sentinels
        self.special_ids = list(range(n_regular, n_regular + len(self.specials)))
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = self.special_ids[:4]
        self.sentinel_ids = self.special_ids[4:]

    @property
    def id(self) -> str:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def _meta(self) -> dict:
        cls = type(self)
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "vocab_size": self.vocab_size, "n_sentinels": self.n_sentinels, "id": self.id}

    def save(self, path: str | Path) -> None:
        """Write ``zoo_tokenizer.json`` (and whatever the subclass needs) into the folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / META_FILE).write_text(json.dumps(self._meta(), indent=2) + "\n")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id ``b`` is byte ``b``; nothing to train, nothing to download (ByT5, arXiv:2105.13626).

    Args:
        n_sentinels: T5 sentinels after ``<pad> <bos> <eos> <mask>``; ``vocab_size = 260 + n_sentinels``.
    """

    def __init__(self, *, n_sentinels: int = 100) -> None:
        super().__init__(n_regular=256, vocab_size=256 + len(SPECIALS) + n_sentinels, n_sentinels=n_sentinels)

    @classmethod
    def from_corpus(cls, *, corpus: object = None, n_sentinels: int = 100) -> "ByteTokenizer":
        """The config entry point; ``corpus`` is accepted so that every tokenizer builds alike, and unused."""
        return cls(n_sentinels=n_sentinels)

    @classmethod
    def load(cls, path: str | Path) -> "ByteTokenizer":
        return cls(n_sentinels=json.loads((Path(path) / META_FILE).read_text())["n_sentinels"])

    @property
    def id(self) -> str:
        return f"byte-s{self.n_sentinels}"

    @functools.cached_property
    def token_bytes(self) -> torch.Tensor:
        """``(vocab_size,)`` UTF-8 bytes per id: 1 for a byte, 0 for a special."""
        return (torch.arange(self.vocab_size) < 256).long()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD, specials are written by name (``<eos>``)."""
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            out.append(self.specials[i - 256] if i - 256 < len(self.specials) else "")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class BPETokenizer(Tokenizer):
    """Byte-pair encoding trained on the corpus with Hugging Face ``tokenizers``, the LLaMA recipe
    (Touvron et al. 2023, arXiv:2302.13971): every digit is its own token, and a character the
    vocabulary lacks falls back to its UTF-8 bytes ``<0x00>..<0xFF>`` (ids 0-255).

    Exact round trip: there is no normalizer and no character substitution anywhere; the
    pre-tokenizer only *splits* (GPT-4's pattern, then single digits) and the decoder only joins and
    turns byte tokens back into bytes. SentencePiece's ``Metaspace`` would map a real U+2581 ``▁`` to
    a space on decode (and strip a leading space), and GPT-2's ``ByteLevel`` would make byte fallback
    moot and the vocabulary unreadable; neither is needed here.

    Build it with :meth:`train` / :meth:`from_corpus` (cached on disk) or :meth:`load`.

    Args:
        hf: a trained ``tokenizers.Tokenizer`` whose model vocabulary is the regular tokens, with the
            specials added after it.
        vocab_size: the embedding size (the requested size; a small corpus may fill fewer ids).
        n_sentinels: T5 sentinels among the specials.
        from_cache: whether it was read from the training cache (for logs and tests).
    """

    def __init__(self, *, hf, vocab_size: int, n_sentinels: int, from_cache: bool = False) -> None:
        n_regular = hf.get_vocab_size(with_added_tokens=True) - len(special_tokens(n_sentinels))
        super().__init__(n_regular=n_regular, vocab_size=vocab_size, n_sentinels=n_sentinels)
        if [hf.token_to_id(t) for t in self.specials] != self.special_ids:
            raise ValueError("the Hugging Face tokenizer's specials are not at ids [n_regular, ...)")
        # literal "<eos>" in a document is text, not the separator the packer inserts
        hf.encode_special_tokens = True
        self.hf, self.from_cache = hf, from_cache
        self._id = "bpe-" + hashlib.sha256(hf.to_str().encode()).hexdigest()[:12]

    @staticmethod
    def minimum_vocab_size(n_sentinels: int) -> int:
        """The 256 byte tokens plus the specials."""
        return 256 + len(special_tokens(n_sentinels))

    @classmethod
    def train(
        cls,
        *,
        documents: Sequence[str],
        vocab_size: int,
        n_sentinels: int = 100,
        fingerprint: str | None = None,
        cache_dir: str | Path | None = None,
        max_train_bytes: int | None = None,
    ) -> "BPETokenizer":
        """Train on ``documents`` or reuse the copy cached under ``cache_dir``.

        Args:
            documents: the training text, one string per document.
            vocab_size: the embedding size, specials and the 256 byte tokens included.
            n_sentinels: T5 sentinels.
            fingerprint: names ``documents`` in the cache key (a corpus's ``fingerprint``); default
                a hash of the text.
            cache_dir: default :func:`default_cache_dir`.
            max_train_bytes: train on the first documents up to this many bytes only.
        """
        minimum = cls.minimum_vocab_size(n_sentinels)
        if vocab_size < minimum:
            raise ConfigError("tokenizer.vocab_size", vocab_size, f">= {minimum} (256 byte tokens + {minimum - 256} special tokens)")
        documents = _head(documents, max_train_bytes)
        if fingerprint is None:
            fingerprint = _hash_texts(documents)
        key = f"{BPE_RECIPE}-v{vocab_size}-s{n_sentinels}-{fingerprint}" + (f"-b{max_train_bytes}" if max_train_bytes else "")
        cached = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / key
        if (cached / "tokenizer.json").exists():
            try:
                tok = load_tokenizer(cached)
                tok.from_cache = True
                return tok
            except FileError as e:  # a cache entry is ours to rebuild
                print(f"zoo: rebuilding the tokenizer cache entry {cached}: {e}", file=sys.stderr)
                shutil.rmtree(cached, ignore_errors=True)
        tok = cls(hf=_train_hf(documents, vocab_size=vocab_size, n_sentinels=n_sentinels), vocab_size=vocab_size, n_sentinels=n_sentinels)
        _save_atomically(tok, cached)
        return tok

    @classmethod
    def from_corpus(
        cls,
        *,
        corpus,
        vocab_size: int = 8192,
        n_sentinels: int = 100,
        cache_dir: str | Path | None = None,
        max_train_bytes: int | None = None,
    ) -> "BPETokenizer":
        """The config entry point: train on ``corpus.documents("train")``, cached by ``corpus.fingerprint``."""
        return cls.train(
            documents=corpus.documents("train"),
            vocab_size=vocab_size,
            n_sentinels=n_sentinels,
            fingerprint=corpus.fingerprint,
            cache_dir=cache_dir,
            max_train_bytes=max_train_bytes,
        )

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        return cls(hf=HFTokenizer.from_file(str(path / "tokenizer.json")), vocab_size=meta["vocab_size"], n_sentinels=meta["n_sentinels"])

    def save(self, path: str | Path) -> None:
        super().save(path)
        self.hf.save(str(Path(path) / "tokenizer.json"))

    @property
    def id(self) -> str:
        return self._id

    @functools.cached_property
    def token_bytes(self) -> torch.Tensor:
        """``(vocab_size,)`` UTF-8 bytes per id: 1 for ``<0xXX>``, the text's length otherwise, 0 for a special."""
        tokens = (self.hf.id_to_token(i) for i in range(self.n_regular))
        sizes = [1 if _BYTE_TOKEN.fullmatch(t) else len(t.encode("utf-8")) for t in tokens]
        return torch.tensor(sizes + [0] * (self.vocab_size - self.n_regular), dtype=torch.long)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        # byte tokens are registered as special tokens, so they must not be skipped
        return self.hf.decode(list(ids), skip_special_tokens=False)


def tokenizer_classes() -> dict[str, type[Tokenizer]]:
    """zoo's tokenizers by the name ``save`` writes into ``zoo_tokenizer.json``: the only classes
    :func:`load_tokenizer` builds, so a checkpoint's metadata cannot choose a module to import."""
    return {f"{c.__module__}.{c.__qualname__}": c for c in (ByteTokenizer, BPETokenizer)}


def read_meta(path: str | Path) -> dict:
    """``zoo_tokenizer.json`` of the folder ``path``; a damaged file is a one-line :class:`DamagedFile`."""
    file = Path(path) / META_FILE
    try:
        meta = json.loads(file.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        return meta
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(file, str(e), "copy the tokenizer/ folder again from the run it came from") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer saved in the folder ``path`` by ``save``: one of :func:`tokenizer_classes`,
    anything else a one-line :class:`~zoo.errors.FileError` before anything is imported."""
    meta = read_meta(path)
    classes = tokenizer_classes()
    cls = classes.get(meta.get("class"))
    if cls is None:
        raise FileError(Path(path) / META_FILE, "class", meta.get("class"), f"one of zoo's tokenizers: {', '.join(classes)}")
    try:
        return cls.load(path)
    except Exception as e:  # a garbled tokenizer.json, or metadata fields that do not fit
        raise DamagedFile(Path(path), f"{type(e).__name__}: {e}", "copy the tokenizer/ folder again from the run it came from") from None


def _train_hf(documents: Sequence[str], *, vocab_size: int, n_sentinels: int):
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    specials = special_tokens(n_sentinels)
    hf = HFTokenizer(models.BPE(byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"), pre_tokenizers.Digits(individual_digits=True)]
    )
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    budget = vocab_size - len(specials) - 256
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        # given first, the byte tokens take ids 0-255, where byte fallback finds them
        special_tokens=[f"<0x{b:02X}>" for b in range(256)],
        # half of what is left for single characters (the most frequent), half for merges; rarer
        # characters fall back to bytes
        limit_alphabet=min(budget // 2, 1000),
        show_progress=False,
    )
    hf.train_from_iterator(documents, trainer=trainer, length=len(documents))
    hf.add_special_tokens(specials)
    return hf


def _head(documents: Sequence[str], max_bytes: int | None) -> list[str]:
    if max_bytes is None:
        return list(documents)
    out, total = [], 0
    for doc in documents:
        if total >= max_bytes:
            break
        out.append(doc)
        total += len(doc.encode("utf-8"))
    return out


def _hash_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", errors="surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def _save_atomically(tok: Tokenizer, path: Path) -> None:
    # two runs training the same tokenizer at once must not leave a half-written cache entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    tok.save(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process got there first; its copy is the same tokenizer
        shutil.rmtree(tmp, ignore_errors=True)
