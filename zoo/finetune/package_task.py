"""``data=package``: which standard-library package does this function come from? A topic-classification
task (the kind AG News is in the field) that ships with Python, so it runs offline.

Snippets are the distinct functions (``def`` / ``async def``, at any depth, dedented) of the ``.py`` files
of a few standard-library packages (``asyncio``, ``email``, ``tkinter``, ``unittest`` by default), at most
``max_chars`` long; a function whose text occurs in two packages is dropped, since its label would be
ambiguous. They are split by the hash of their text, and each split keeps as many snippets of every class
as its rarest class has, so the majority-class classifier scores ``1 / len(packages)``. Unlike
``data=compile`` (whose label hangs on one bracket), the label is carried by the vocabulary of the whole
function (``loop``, ``msg``, ``widget``, ``assertEqual``), so a small model pretrained on the standard
library can learn it: a task on which the fine-tuning methods can be told apart.
"""

import functools
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from zoo.data.corpus import SPLITS, split_of
from zoo.errors import ConfigError
from zoo.finetune.compile_task import functions, text_digest
from zoo.finetune.labelled import LabelledData

PACKAGES = ("asyncio", "email", "tkinter", "unittest")


class PackageTask(LabelledData):
    """The built-in topic task (module docstring); one class per package.

    Args:
        packages: two or more top-level packages of the standard library (folders, not single modules).
        max_chars: longest snippet, in characters (the head is kept when ``trainer.seq_len`` is shorter).
        val_percent: snippets held out for validation, by the hash of their text.
        padding: ``right`` or ``left``.
    """

    def __init__(self, *, packages: Sequence[str] = PACKAGES, max_chars: int = 512, val_percent: float = 20.0, padding: str = "right") -> None:
        super().__init__(padding=padding, val_percent=val_percent)
        packages = (packages,) if isinstance(packages, str) else tuple(packages)
        root = Path(sysconfig.get_paths()["stdlib"])
        missing = [p for p in packages if not (root / p / "__init__.py").is_file()]
        if len(set(packages)) < 2 or missing:
            raise ConfigError("data.packages", list(packages), f"two or more distinct packages of this Python's standard library ({root}){'; not packages: ' + ', '.join(missing) if missing else ''}")
        if max_chars < 16:
            raise ConfigError("data.max_chars", max_chars, ">= 16")
        self.packages, self.max_chars = packages, max_chars

    @functools.cached_property
    def stats(self) -> dict[str, int]:
        """Snippets per split and class."""
        return {f"{s}_{p}": sum(label == p for _, label in r) for s, r in self._rows.items() for p in self.packages}

    def rows(self) -> dict[str, list[tuple[str, str]]]:
        labelled = _package_functions(self.packages, self.max_chars)
        digest = {text: text_digest(text) for text, _ in labelled}
        groups: dict[tuple[str, str], list[str]] = {(s, p): [] for s in SPLITS for p in self.packages}
        for text, package in sorted(labelled, key=lambda r: digest[r[0]]):
            groups[split_of(digest[text], val_percent=self.val_percent), package].append(text)
        out = {}
        for split in SPLITS:
            keep = min(len(groups[split, p]) for p in self.packages)
            out[split] = sorted(((t, p) for p in self.packages for t in groups[split, p][:keep]), key=lambda r: digest[r[0]])
        return out


@functools.lru_cache(maxsize=4)
def _package_functions(packages: tuple[str, ...], max_chars: int) -> tuple[tuple[str, str], ...]:
    # parsed once per process: the jobs of a sweep share it
    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "test" in path.relative_to(root / package).parts[:-1]:
                continue  # a package's own tests (tkinter/test, unittest/test) are not its code
            for text in functions(path.read_text(encoding="utf-8", errors="replace"), max_chars=max_chars):
                found.setdefault(text, set()).add(package)
    return tuple((text, next(iter(owners))) for text, owners in found.items() if len(owners) == 1)

