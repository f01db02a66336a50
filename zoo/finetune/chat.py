"""Instruction tuning (``task=chat``): a chat template, loss on the assistant's tokens only, and packing.

Template: each message is ``<role> content <eos>``; the role tokens are the tokenizer's first three
sentinels (``<extra_id_0..2>``: system, user, assistant), which are specials that ``encode`` never
emits for text, so a message cannot forge a role; the vocabulary (and so a pretrained model's shape)
is unchanged. A prompt for generation ends with ``<assistant>``; the reply ends at ``<eos>``.

Loss: a target counts only if it is an assistant message's content or the ``<eos>`` that closes it
(the model learns to stop), never a role token, a user's or system's text, or padding.

Packing: whole conversations go into rows of ``seq_len + 1`` tokens, first fit in data order; a
conversation is never split across rows (one longer than a row is cut at the row's end and counted in
``truncated``), the rest of a row is padding, and ``segment_ids`` number the conversations of a row.

Data: JSONL, one conversation per line, ``{"messages": [{"role": ..., "content": ...}, ...]}``; or the
built-in set made from what Python ships (:func:`stdlib_conversations`).
"""

import functools
import hashlib
import importlib
import inspect
import json
import warnings
from pathlib import Path

import torch

from zoo.data.corpus import split_of
from zoo.data.packing import Batch, ResumableLoader, generator
from zoo.errors import ConfigError
from zoo.finetune.labelled import TextsCorpus

ROLES = ("system", "user", "assistant")
#: modules whose public functions and classes the built-in set asks about (importing them has no side effects)
MODULES = (
    "json", "os", "os.path", "re", "math", "random", "string", "textwrap", "itertools", "functools", "collections", "heapq",
    "bisect", "statistics", "shutil", "glob", "fnmatch", "pathlib", "datetime", "time", "base64", "hashlib", "zlib", "gzip",
    "csv", "copy", "pprint", "difflib", "operator", "inspect", "tempfile", "struct", "secrets", "uuid", "html", "urllib.parse",
    "shlex", "fractions", "decimal", "calendar", "zipfile", "tarfile", "argparse", "logging", "subprocess", "threading", "queue",
)  # fmt: skip


class ChatTemplate:
    """Messages to token ids, with the mask of the assistant's tokens.

    Args:
        tokenizer: a zoo tokenizer with at least three sentinels (``tokenizer.n_sentinels``).
    """

    def __init__(self, tokenizer) -> None:
        if len(getattr(tokenizer, "sentinel_ids", ())) < len(ROLES):
            raise ConfigError("tokenizer.n_sentinels", getattr(tokenizer, "n_sentinels", None), f">= {len(ROLES)}: the chat template's role tokens are sentinels")
        self.tokenizer = tokenizer
        self.role_ids = dict(zip(ROLES, tokenizer.sentinel_ids))

    def encode(self, messages: list[dict], *, where: str = "messages") -> tuple[list[int], list[bool]]:
        """``(ids, assistant)``: the conversation's tokens, and per token whether it is an assistant
        message's content or closing ``<eos>`` (a target the loss counts)."""
        ids, assistant = [], []
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in self.role_ids:
                raise ConfigError(f"{where}[{i}].role", role, f"one of {', '.join(ROLES)}")
            content = message.get("content")
            if not isinstance(content, str):
                raise ConfigError(f"{where}[{i}].content", content, "a string")
            body = [*self.tokenizer.encode(content), self.tokenizer.eos_id]
            ids += [self.role_ids[role], *body]
            assistant += [False] + [role == "assistant"] * len(body)
        return ids, assistant

    def prompt(self, messages: list[dict]) -> list[int]:
        """The conversation so far, then ``<assistant>``: what a model continues with its reply."""
        return [*self.encode(messages)[0], self.role_ids["assistant"]]

    def render(self, messages: list[dict]) -> str:
        """The conversation as text, role tokens written as ``<|role|>`` (for logs and docs)."""
        return "".join(f"<|{m['role']}|>{m['content']}<eos>" for m in messages)


def read_jsonl(path: str | Path) -> list[list[dict]]:
    """Conversations of a JSONL file: one ``{"messages": [...]}`` per line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise ConfigError("data.path", f"{path}:{n}", 'a line {"messages": [{"role": ..., "content": ...}, ...]}')
        for i, m in enumerate(record["messages"]):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ConfigError(f"{path}:{n}: messages[{i}].role", m.get("role") if isinstance(m, dict) else m, f"one of {', '.join(ROLES)}")
        out.append(record["messages"])
    return out


def first_paragraph(doc: str | None) -> str | None:
    """A docstring's first paragraph, on one line; ``None`` when there is none worth asking about."""
    if not doc:
        return None
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph if len(paragraph) >= 20 else None


@functools.cache
def stdlib_conversations() -> tuple[tuple[tuple[str, str], ...], ...]:
    """Built-in instructions from what Python ships: "What does `json.dumps` do?" answered by the
    first paragraph of its docstring, for the public functions and classes of :data:`MODULES`, and
    "Explain the `for` statement topic." by the first paragraph of pydoc's topic."""
    out = []
    for name in MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(getattr(module, "__all__", None) or dir(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            answer = first_paragraph(inspect.getdoc(obj))
            if answer:
                out.append(((f"What does `{name}.{attr}` do?", answer)))
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for topic, text in sorted(topics.items()):
        # the first prose paragraph after the title: not its underline, not a grammar rule ("::=")
        paragraphs = [p for p in text.split("\n\n")[1:] if "::=" not in p and "****" not in p]
        answer = first_paragraph(paragraphs[0]) if paragraphs else None
        if answer:
            out.append((f"Explain the Python topic `{topic}`.", answer))
    return tuple(((("user", q), ("assistant", a))) for q, a in dict(out).items())


class ChatData:
    """Conversations served as packed rows for ``objective=causal_lm`` (module docstring).

    Args:
        path: a JSONL file of ``messages``; ``None``: the built-in set (:func:`stdlib_conversations`).
        validation_path: a JSONL file for validation; ``None``: conversations held out by hash.
        val_percent: share held out when there is no validation file.
        max_conversations: cap on conversations read (``None``: all).
    """

    vocab_size = None

    def __init__(self, *, path: str | None = None, validation_path: str | None = None, val_percent: float = 5.0, max_conversations: int | None = None) -> None:
        for key, p in (("data.path", path), ("data.validation_path", validation_path)):
            if p is not None and not Path(p).expanduser().is_file():
                raise ConfigError(key, p, "a JSONL file with one {\"messages\": [...]} per line")
        self.path, self.validation_path = path, validation_path
        self.val_percent, self.max_conversations = val_percent, max_conversations
        self.truncated = 0

    @functools.cached_property
    def conversations(self) -> dict[str, list[list[dict]]]:
        if self.path is None:
            every = [[{"role": r, "content": c} for r, c in conv] for conv in stdlib_conversations()]
        else:
            every = read_jsonl(Path(self.path).expanduser())
        every = every[: self.max_conversations]
        if self.validation_path is not None:
            return {"train": every, "validation": read_jsonl(Path(self.validation_path).expanduser())}
        key = lambda conv: hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()  # noqa: E731
        split = {s: [c for c in every if split_of(key(c), val_percent=self.val_percent) == s] for s in ("train", "validation")}
        if not split["validation"] or not split["train"]:
            raise ConfigError("data.val_percent", self.val_percent, f"a split that leaves conversations on both sides of {len(every)}")
        return split

    @functools.cached_property
    def corpus(self) -> TextsCorpus:
        return TextsCorpus({s: [m["content"] for c in convs for m in c] for s, convs in self.conversations.items()})

    def rows(self, *, split: str, seq_len: int, tokenizer) -> Batch:
        """Every packed row of ``split``: ``tokens (r, seq_len + 1)``, ``loss_mask (r, seq_len)``, ``segment_ids (r, seq_len + 1)``."""
        template, width = ChatTemplate(tokenizer), seq_len + 1
        tokens, masks, segments = [], [], []
        row, mask, seg, count = [], [], [], 0

        def flush():
            pad = width - len(row)
            tokens.append(row + [tokenizer.pad_id] * pad)
            masks.append(mask + [False] * pad)
            segments.append(seg + [count] * pad)

        for i, conv in enumerate(self.conversations[split]):
            ids, assistant = template.encode(conv, where=f"{split} conversation {i}: messages")
            if len(ids) > width:
                ids, assistant = ids[:width], assistant[:width]
                self.truncated += 1
            if len(row) + len(ids) > width:
                flush()
                row, mask, seg, count = [], [], [], 0
            row, mask, seg, count = row + ids, mask + assistant, seg + [count] * len(ids), count + 1
        if row:
            flush()
        t, m = torch.tensor(tokens), torch.tensor(masks)
        # a target counts when it is the assistant's and its input is in the same conversation
        return {"tokens": t, "loss_mask": m[:, 1:], "segment_ids": torch.tensor(segments)}

    def loader(self, *, split: str, seq_len: int, batch_size: int, seed: int, tokenizer=None, shuffle: bool | None = None, drop_last: bool | None = None) -> ResumableLoader:
        if tokenizer is None:
            raise ConfigError("tokenizer", None, "conversations need a tokenizer")
        rows = self.rows(split=split, seq_len=seq_len, tokenizer=tokenizer)
        train = split == "train"
        shuffle, drop_last = train if shuffle is None else shuffle, train if drop_last is None else drop_last
        n = rows["tokens"].shape[0]
        n_batches = n // batch_size if drop_last else -(-n // batch_size)
        if n_batches == 0:
            raise ConfigError("trainer.batch_size", batch_size, f"<= {n}, the packed rows of the {split} conversations")

        def make_batch(*, seed: int, epoch: int, index: int) -> Batch:
            order = torch.randperm(n, generator=generator("chat", seed, epoch)) if shuffle else torch.arange(n)
            pick = order[index * batch_size : (index + 1) * batch_size]
            return {k: v[pick] for k, v in rows.items()}

        return ResumableLoader(make_batch=make_batch, batches_per_epoch=n_batches, seed=seed)
