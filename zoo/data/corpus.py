"""Text corpora: named documents, a fixed train/validation split by document, and a fingerprint.

A corpus is anything with ``documents(split) -> list[str]`` (``split`` is ``"train"`` or
``"validation"``) and ``fingerprint`` (a short hex digest over the split, names and contents, which
keys every cache built from it). Documents are read lazily, on first use, and kept in memory.

- :class:`StdlibCorpus`: the Python standard library shipped with the interpreter (``.py`` sources
  and the English prose of ``pydoc_data.topics``): real text that needs no download.
- :class:`TextCorpus`: a text file or a folder of files.
- :class:`HFDiskCorpus`: a Hugging Face ``datasets`` dataset saved with ``save_to_disk``.
"""

import fnmatch
import functools
import hashlib
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from zoo.errors import ConfigError

SPLITS = ("train", "validation")


class Document(NamedTuple):
    """One document; ``split=None`` lets :func:`split_of` assign it by the hash of its name."""

    name: str
    text: str
    split: str | None = None


def _bucket(name: str) -> int:
    """A stable pseudo-random number in ``[0, 10_000)`` for ``name`` (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).digest()[:8], "big") % 10_000


def split_of(name: str, *, val_percent: float) -> str:
    """``"validation"`` for about ``val_percent`` % of names, fixed forever by the name alone."""
    return "validation" if _bucket(name) < val_percent * 100 else "train"


class Corpus:
    """Shared behaviour of corpora: lazy loading, the split by document, and the fingerprint.

    Subclasses implement :meth:`load`, returning documents sorted by name.

    Args:
        val_percent: share of documents (by the hash of their name) held out for validation, in
            ``[0, 100)``; a corpus of two or more documents always holds out at least one.
    """

    def __init__(self, *, val_percent: float = 5.0) -> None:
        if not 0 <= val_percent < 100:
            raise ConfigError("data.corpus.val_percent", val_percent, "in [0, 100)")
        self.val_percent = val_percent

    def load(self) -> list[Document]:
        raise NotImplementedError

    @functools.cached_property
    def _splits(self) -> dict[str, list[Document]]:
        docs = self.load()
        if not docs:  # before any tokenizer or token cache is built from it
            raise ConfigError("data.corpus", repr(self), "a corpus of at least one document (a larger max_bytes, or other sources or files)")
        assigned = [d._replace(split=d.split or split_of(d.name, val_percent=self.val_percent)) for d in docs]
        free = [i for i, d in enumerate(docs) if d.split is None]
        # a tiny corpus can hash every document into train; hold out the one nearest the threshold
        if self.val_percent > 0 and len(free) >= 2 and all(assigned[i].split == "train" for i in free):
            i = min(free, key=lambda i: _bucket(docs[i].name))
            assigned[i] = assigned[i]._replace(split="validation")
        return {s: [d for d in assigned if d.split == s] for s in SPLITS}

    def documents(self, split: str = "train") -> list[str]:
        """The texts of ``split``, in name order."""
        return [d.text for d in self._docs(split)]

    def names(self, split: str = "train") -> list[str]:
        """The names of ``split``'s documents, in the order of :meth:`documents`."""
        return [d.name for d in self._docs(split)]

    def _docs(self, split: str) -> list[Document]:
        if split not in SPLITS:
            raise ConfigError("split", split, f"one of {', '.join(SPLITS)}")
        return self._splits[split]

    @functools.cached_property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over every document's split, name and text."""
        h = hashlib.sha256()
        for split in SPLITS:
            for d in self._splits[split]:
                for part in (split, d.name, d.text):
                    h.update(part.encode("utf-8", errors="surrogatepass") + b"\0")
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(val_percent={self.val_percent})"


#: folders of the standard library that are not the library itself, would swamp it with test data, or
#: (``pydoc_data``) repeat the ``"pydoc"`` source as one huge Python dict
# encodings/ is mostly generated code-page tables ("LATIN SMALL LETTER ..."), not prose or code.
STDLIB_EXCLUDED = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "pydoc_data", "encodings"}
)


class StdlibCorpus(Corpus):
    """The standard library of the running interpreter as a corpus: code and English prose, no download.

    Sources: ``"python"``, every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` outside
    :data:`STDLIB_EXCLUDED` (one document each, named ``python/<relative path>``); ``"pydoc"``, each
    entry of ``pydoc_data.topics.topics`` (named ``pydoc/<topic>``). The corpus, and so the
    fingerprint, depends on the Python version.

    Args:
        sources: any of ``"python"``, ``"pydoc"``.
        max_bytes: cap on the total size; documents are taken in the order of the hash of their name
            (skipping any that would overflow), so a cap samples the whole library rather than its
            first letters. ``None``: everything (about 11 MB of code and 0.5 MB of prose on 3.11).
        val_percent: as in :class:`Corpus`.
    """

    SOURCES = ("python", "pydoc")

    def __init__(self, *, sources: Sequence[str] = SOURCES, max_bytes: int | None = 4_000_000, val_percent: float = 5.0) -> None:
        super().__init__(val_percent=val_percent)
        sources = tuple(sources)
        if not sources or not set(sources) <= set(self.SOURCES):
            raise ConfigError("data.corpus.sources", list(sources), f"a non-empty list of {', '.join(self.SOURCES)}")
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError("data.corpus.max_bytes", max_bytes, "> 0, or null for no cap")
        self.sources, self.max_bytes = sources, max_bytes

    def load(self) -> list[Document]:
        # (name, size in bytes, reader): sizes first, so that only the chosen files are read
        candidates = []
        if "python" in self.sources:
            root = Path(sysconfig.get_paths()["stdlib"])
            for path in sorted(root.rglob("*.py")):
                rel = path.relative_to(root)
                if not STDLIB_EXCLUDED.intersection(rel.parts[:-1]):
                    candidates.append((f"python/{rel.as_posix()}", path.stat().st_size, path))
        if "pydoc" in self.sources:
            try:
                from pydoc_data.topics import topics
            except ImportError:
                raise ConfigError("data.corpus.sources", list(self.sources), "this interpreter ships without pydoc_data; drop 'pydoc'") from None
            candidates += [(f"pydoc/{k}", len(v.encode("utf-8")), v) for k, v in topics.items()]
        chosen, total = [], 0
        for name, size, source in sorted(candidates, key=lambda c: hashlib.sha256(c[0].encode()).digest()):
            if self.max_bytes is None or total + size <= self.max_bytes:
                chosen.append((name, source))
                total += size
        return sorted(Document(name, _read(source) if isinstance(source, Path) else source) for name, source in chosen)

    def __repr__(self) -> str:
        return f"StdlibCorpus(sources={list(self.sources)}, max_bytes={self.max_bytes}, val_percent={self.val_percent})"


class TextCorpus(Corpus):
    """Plain text from a file or a folder.

    A folder gives one document per matching file (recursively, sorted, named by relative path). A
    single file is split at ``doc_separator`` (default: blank lines), so that it can be split by
    document at all.

    Args:
        path: a file or a folder; missing -> :class:`~zoo.errors.ConfigError` naming ``data.corpus.path``.
        patterns: file-name globs a folder's files must match.
        doc_separator: split every file into documents at this string; ``None``: whole files, except
            that a single file is split at ``"\\n\\n"``.
        val_percent: as in :class:`Corpus`.
    """

    def __init__(
        self,
        *,
        path: str | Path,
        patterns: Sequence[str] = ("*.txt", "*.md", "*.py"),
        doc_separator: str | None = None,
        val_percent: float = 5.0,
    ) -> None:
        super().__init__(val_percent=val_percent)
        if path is None or not Path(path).expanduser().exists():
            raise ConfigError("data.corpus.path", None if path is None else str(path), "no such file or folder")
        if doc_separator == "":
            raise ConfigError("data.corpus.doc_separator", doc_separator, "a non-empty string, or null")
        self.path, self.patterns, self.doc_separator = Path(path).expanduser(), tuple(patterns), doc_separator

    def load(self) -> list[Document]:
        if self.path.is_file():
            files, separator = [self.path], self.doc_separator or "\n\n"
            names = [self.path.name]
        else:
            files = sorted(p for p in self.path.rglob("*") if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in self.patterns))
            if not files:
                raise ConfigError("data.corpus.patterns", list(self.patterns), f"no file under {self.path} matches")
            separator, names = self.doc_separator, [p.relative_to(self.path).as_posix() for p in files]
        docs = []
        for name, file in zip(names, files):
            text = _read(file)
            if separator is None:
                docs.append(Document(name, text))
            else:
                docs += [Document(f"{name}#{i:06d}", part) for i, part in enumerate(text.split(separator)) if part.strip()]
        return sorted(docs)

    def __repr__(self) -> str:
        return f"TextCorpus(path={str(self.path)!r}, patterns={list(self.patterns)}, val_percent={self.val_percent})"


class HFDiskCorpus(Corpus):
    """A Hugging Face ``datasets`` dataset read with ``datasets.load_from_disk``; nothing is fetched.

    A ``DatasetDict`` gives ``train_split`` for training and ``validation_split`` for validation
    when it has one; otherwise (and for a single ``Dataset``) rows are split by the hash of their
    index. Every row's text is read into memory.

    Args:
        path: the folder written by ``save_to_disk``.
        text_field: the column holding the text.
        train_split, validation_split: split names in a ``DatasetDict``.
        val_percent: as in :class:`Corpus`, where rows are split by hash.
    """

    def __init__(
        self,
        *,
        path: str | Path,
        text_field: str = "text",
        train_split: str = "train",
        validation_split: str = "validation",
        val_percent: float = 5.0,
    ) -> None:
        super().__init__(val_percent=val_percent)
        if path is None or not Path(path).expanduser().is_dir():
            raise ConfigError("data.corpus.path", None if path is None else str(path), "no such folder (one written by datasets' save_to_disk)")
        self.path, self.text_field = Path(path).expanduser(), text_field
        self.train_split, self.validation_split = train_split, validation_split

    def load(self) -> list[Document]:
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(self.path))
        if not isinstance(data, DatasetDict):
            return self._rows(data, prefix="", split=None)
        if self.train_split not in data:
            raise ConfigError("data.corpus.train_split", self.train_split, f"one of {', '.join(data)}")
        if self.validation_split not in data:
            return self._rows(data[self.train_split], prefix=f"{self.train_split}/", split=None)
        return self._rows(data[self.train_split], prefix=f"{self.train_split}/", split="train") + self._rows(
            data[self.validation_split], prefix=f"{self.validation_split}/", split="validation"
        )

    def _rows(self, dataset, *, prefix: str, split: str | None) -> list[Document]:
        if self.text_field not in dataset.column_names:
            raise ConfigError("data.corpus.text_field", self.text_field, f"one of the columns {', '.join(dataset.column_names)}")
        return [Document(f"{prefix}{i:09d}", text, split) for i, text in enumerate(dataset[self.text_field])]

    def __repr__(self) -> str:
        return f"HFDiskCorpus(path={str(self.path)!r}, text_field={self.text_field!r})"


def _read(path: Path) -> str:
    # a stray non-UTF-8 byte must not stop a run; U+FFFD marks it
    return path.read_bytes().decode("utf-8", errors="replace")
