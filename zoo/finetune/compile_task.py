"""``data=compile``: does this snippet of standard-library code compile? A classification task that
ships with Python, so it runs offline.

Snippets are the distinct functions (``def`` / ``async def``, at any depth, dedented) of the standard
library's ``.py`` files (:class:`~zoo.data.corpus.StdlibCorpus`) that are at most ``max_chars`` long,
split by the hash of their text (distinct texts, so none is both trained on and evaluated). Half of them, chosen by the hash of their text,
are corrupted once: a bracket, colon, quote or comma deleted or duplicated, or a line's indentation
changed. The label is what Python's own ``compile()`` says of the final text, not which half it came
from: a corruption that still compiles is labelled ``compiles`` (so are the rare originals that do not
compile alone, such as a ``nonlocal`` without its enclosing function: they are labelled ``error``).
"""

import ast
import functools
import hashlib
import random
import textwrap
import warnings

from zoo.data.corpus import StdlibCorpus, split_of
from zoo.errors import ConfigError
from zoo.finetune.labelled import LabelledData

#: characters whose deletion or duplication usually breaks the syntax
SYNTAX = "()[]{}:'\","
LABELS = ("compiles", "error")


def compiles(text: str) -> bool:
    """Whether ``compile(text, ..., "exec")`` accepts ``text`` (it is parsed, never run)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like warn, and compile
            compile(text, "<snippet>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return False


def functions(source: str, *, max_chars: int) -> list[str]:
    """The dedented source of every function of ``source`` at most ``max_chars`` long."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
            text = textwrap.dedent("\n".join(lines)) + "\n"
            if len(text) <= max_chars and not text.startswith((" ", "\t")):
                out.append(text)
    return out


def corrupt(text: str, rng: random.Random) -> str:
    """``text`` with one small syntax-level edit (module docstring)."""
    spots = [i for i, c in enumerate(text) if c in SYNTAX]
    lines = text.split("\n")
    kind = rng.choice(("delete", "duplicate", "indent") if spots else ("indent",))
    if kind == "indent" and len(lines) > 2:
        i = rng.randrange(1, len(lines) - 1)
        lines[i] = lines[i][2:] if lines[i].startswith("  ") and rng.random() < 0.5 else "  " + lines[i]
        return "\n".join(lines)
    if not spots:
        return text + ")"
    i = rng.choice(spots)
    return text[:i] + text[i + 1 :] if kind == "delete" else text[:i] + text[i] + text[i:]


class CompileTask(LabelledData):
    """The built-in classification task (module docstring); classes ``compiles`` and ``error``.

    Args:
        max_chars: longest snippet, in characters (fit it to ``trainer.seq_len`` and the tokenizer).
        max_bytes: standard-library code read (a hash-ordered sample of files, as ``data=stdlib``).
        max_examples: cap on training snippets (validation gets a tenth of it); ``None``: all.
        val_percent: snippets held out for validation, by the hash of their text.
        padding: ``right`` or ``left``.
    """

    def __init__(self, *, max_chars: int = 256, max_bytes: int = 4_000_000, max_examples: int | None = 20000, val_percent: float = 10.0, padding: str = "right") -> None:
        super().__init__(padding=padding, val_percent=val_percent)
        if max_chars < 16:
            raise ConfigError("data.max_chars", max_chars, ">= 16")
        if max_examples is not None and max_examples <= 0:
            raise ConfigError("data.max_examples", max_examples, "> 0, or null for all")
        if max_bytes <= 0:
            raise ConfigError("data.max_bytes", max_bytes, "> 0")
        self.max_chars, self.max_bytes, self.max_examples = max_chars, max_bytes, max_examples

    @functools.cached_property
    def stats(self) -> dict[str, int]:
        """Snippets per split and how many of each compile."""
        return {f"{s}_{label}": sum(lab == label for _, lab in r) for s, r in self._rows.items() for label in LABELS}

    def rows(self) -> dict[str, list[tuple[str, str]]]:
        every = _snippets(self.max_bytes, self.max_chars)
        out = {}
        for split, cap in (("train", self.max_examples), ("validation", self.max_examples and max(self.max_examples // 10, 1))):
            snippets = sorted((f for f in every if split_of(text_digest(f), val_percent=self.val_percent) == split), key=text_digest)
            rows = []
            for text in snippets[:cap]:
                rng = random.Random(text_digest(text))
                if rng.random() < 0.5:
                    text = corrupt(text, rng)
                rows.append((text, LABELS[0] if compiles(text) else LABELS[1]))
            out[split] = rows
        return out


@functools.lru_cache(maxsize=4)
def _snippets(max_bytes: int, max_chars: int) -> frozenset[str]:
    # parsed once per process: the jobs of a sweep share it
    source = StdlibCorpus(sources=["python"], max_bytes=max_bytes, val_percent=0)
    return frozenset(f for doc in source.documents("train") for f in functions(doc, max_chars=max_chars))


def text_digest(text: str) -> str:
    """SHA-256 of ``text``: what splits and orders the built-in tasks' snippets, the same on every machine."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
