"""Labelled text for classification (``data=labelled``, ``data=compile``): rows of text and a class.

:class:`LabelledData` serves ``tokens (b, n)`` (padded on ``padding``'s side, truncated to ``seq_len``
keeping the head), ``valid (b, n)`` and ``labels (b,)``, through the same resumable loader as packed
text. Classes are the sorted distinct training labels; a label must be a string or an integer, and
a validation label must be a training class. Readers: CSV and JSONL files (``path`` and optionally
``validation_path``), or a folder a Hugging Face dataset was ``save_to_disk``'d to; without a
validation split, rows are held out by the hash of their text.
"""

import csv
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from zoo.data.corpus import split_of
from zoo.data.packing import Batch, ResumableLoader, generator
from zoo.errors import ConfigError

PADDING = ("right", "left")


class TextsCorpus:
    """The texts of a labelled set as a corpus (``documents(split)``, ``fingerprint``), for training a BPE on them."""

    def __init__(self, texts: dict[str, list[str]]) -> None:
        self.texts = texts

    def documents(self, split: str = "train") -> list[str]:
        return self.texts[split]

    @functools.cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in sorted(self.texts):
            for t in self.texts[split]:
                h.update(f"{split}\0{t}\0".encode("utf-8", errors="surrogatepass"))
        return h.hexdigest()[:16]


class LabelledData:
    """Texts with class labels, served as padded batches.

    Subclasses implement :meth:`rows` (``{split: [(text, label), ...]}``).

    Args:
        padding: ``right`` or ``left``: where each row's padding goes.
        val_percent: rows held out by the hash of their text when the source has no validation split.
    """

    vocab_size = None  # text: the tokenizer sizes the model

    def __init__(self, *, padding: str = "right", val_percent: float = 10.0) -> None:
        if padding not in PADDING:
            raise ConfigError("data.padding", padding, f"one of {', '.join(PADDING)}")
        self.padding, self.val_percent = padding, val_percent

    def rows(self) -> dict[str, list[tuple[str, object]]]:
        raise NotImplementedError

    @functools.cached_property
    def _rows(self) -> dict[str, list[tuple[str, object]]]:
        rows = self.rows()
        if not rows.get("validation"):
            every = rows["train"]
            rows = {s: [r for r in every if split_of(r[0], val_percent=self.val_percent) == s] for s in ("train", "validation")}
        for split in ("train", "validation"):
            if not rows[split]:
                raise ConfigError("data", type(self).__name__, f"labelled rows in the {split} split")
        return rows

    @functools.cached_property
    def classes(self) -> list:
        """The sorted distinct labels of the training split."""
        classes = sorted({label for _, label in self._rows["train"]}, key=lambda c: (isinstance(c, str), c))
        if len(classes) < 2:
            raise ConfigError("data.label_column", classes, "at least two classes in the training split")
        unseen = {label for _, label in self._rows["validation"]} - set(classes)
        if unseen:
            raise ConfigError("data.label_column", sorted(map(str, unseen))[:5], "validation labels that are training classes")
        return classes

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def corpus(self) -> TextsCorpus:
        return TextsCorpus({s: [t for t, _ in r] for s, r in self._rows.items()})

    def batch(self, rows: Sequence[tuple[str, object]], *, seq_len: int, tokenizer) -> Batch:
        """``tokens``, ``valid``, ``labels`` of ``rows`` (module docstring)."""
        index = {c: i for i, c in enumerate(self.classes)}
        ids = [tokenizer.encode(t)[:seq_len] or [tokenizer.eos_id] for t, _ in rows]
        tokens = torch.full((len(rows), seq_len), tokenizer.pad_id, dtype=torch.long)
        valid = torch.zeros(len(rows), seq_len, dtype=torch.bool)
        for r, seq in enumerate(ids):
            span = slice(0, len(seq)) if self.padding == "right" else slice(seq_len - len(seq), seq_len)
            tokens[r, span], valid[r, span] = torch.tensor(seq), True
        return {"tokens": tokens, "valid": valid, "labels": torch.tensor([index[label] for _, label in rows])}

    def loader(
        self, *, split: str, seq_len: int, batch_size: int, seed: int, tokenizer=None, shuffle: bool | None = None, drop_last: bool | None = None
    ) -> ResumableLoader:
        """Batches of ``split`` as :meth:`zoo.data.TokenData.loader` serves them (training shuffles and drops the last)."""
        if tokenizer is None:
            raise ConfigError("tokenizer", None, "labelled text needs a tokenizer")
        rows = self._rows[split]
        train = split == "train"
        shuffle, drop_last = train if shuffle is None else shuffle, train if drop_last is None else drop_last
        n = len(rows)
        n_batches = n // batch_size if drop_last else -(-n // batch_size)
        if n_batches == 0:
            raise ConfigError("trainer.batch_size", batch_size, f"<= {n}, the rows of the {split} split")
        self.classes  # noqa: B018 (labels checked now, not at the first batch)

        def make_batch(*, seed: int, epoch: int, index: int) -> Batch:
            order = torch.randperm(n, generator=generator("labelled", seed, epoch)) if shuffle else torch.arange(n)
            return self.batch([rows[i] for i in order[index * batch_size : (index + 1) * batch_size].tolist()], seq_len=seq_len, tokenizer=tokenizer)

        return ResumableLoader(make_batch=make_batch, batches_per_epoch=n_batches, seed=seed)


class LabelledFiles(LabelledData):
    """``data=labelled``: a CSV or JSONL file (or a ``save_to_disk`` folder) with a text and a label column.

    Args:
        path: the training file, or a Hugging Face dataset folder.
        validation_path: the validation file; ``None``: the dataset's ``validation`` split, or rows held out by hash.
        text_column, label_column: the columns to read.
        padding, val_percent: as :class:`LabelledData`.
    """

    def __init__(
        self, *, path: str, validation_path: str | None = None, text_column: str = "text", label_column: str = "label", padding: str = "right", val_percent: float = 10.0
    ) -> None:
        super().__init__(padding=padding, val_percent=val_percent)
        self.path = Path(path).expanduser()
        self.validation_path = Path(validation_path).expanduser() if validation_path else None
        for key, p in (("data.path", self.path), ("data.validation_path", self.validation_path)):
            if p is not None and not p.exists():
                raise ConfigError(key, str(p), "an existing CSV or JSONL file, or a save_to_disk folder")
        self.text_column, self.label_column = text_column, label_column

    def rows(self) -> dict[str, list[tuple[str, object]]]:
        if self.path.is_dir():
            return self._dataset_rows()
        out = {"train": self._file_rows(self.path)}
        if self.validation_path is not None:
            out["validation"] = self._file_rows(self.validation_path)
        return out

    def _file_rows(self, path: Path) -> list[tuple[str, object]]:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                records = list(csv.DictReader(f))
        elif path.suffix in (".jsonl", ".json"):
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            raise ConfigError("data.path", str(path), "a .csv or .jsonl file, or a save_to_disk folder")
        return self._pairs(records, where=str(path), from_csv=path.suffix == ".csv")

    def _dataset_rows(self) -> dict[str, list[tuple[str, object]]]:
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(self.path))
        splits = dict(data) if isinstance(data, DatasetDict) else {"train": data}
        if "train" not in splits:
            raise ConfigError("data.path", str(self.path), f"a dataset with a train split, not {sorted(splits)}")
        out = {"train": self._pairs(list(splits["train"]), where=str(self.path))}
        if "validation" in splits:
            out["validation"] = self._pairs(list(splits["validation"]), where=str(self.path))
        return out

    def _pairs(self, records: list[dict], *, where: str, from_csv: bool = False) -> list[tuple[str, object]]:
        if not records:
            raise ConfigError("data.path", where, "a file with at least one row")
        for key, column in (("data.text_column", self.text_column), ("data.label_column", self.label_column)):
            if column not in records[0]:
                raise ConfigError(key, column, f"a column of {where}: one of {sorted(records[0])}")
        return [(str(r[self.text_column]), as_class(r[self.label_column], from_csv=from_csv)) for r in records]


def as_class(label: object, *, from_csv: bool = False) -> object:
    """A label as a class: a string, or an integer (``"3"`` read from a CSV is 3); anything else is an error."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, int):
        return label
    if isinstance(label, float) and label.is_integer():
        return int(label)
    if isinstance(label, str) and label.strip():
        return int(label) if from_csv and label.strip().lstrip("-").isdigit() else label
    raise ConfigError("data.label_column", label, "class labels: strings or integers (a regression target or an empty label is not a class)")
