"""Sequence classification (``objective=classify``): a linear head on pooled hidden states.

Batches (from :mod:`zoo.finetune.labelled`): ``tokens (b, n)`` padded on either side, ``valid (b, n)``
``False`` at padding, ``labels (b,)`` class indices. Real tokens take positions ``0..len-1`` whatever
the padding side, so a row pools the same features padded left or right.

Pooling (one small class each): :class:`LastToken` (a decoder's summary is its last real token, as
GPT-1 classifies, arXiv:1801.06146's successors and HF's ``*ForSequenceClassification`` do),
:class:`MeanPool` and :class:`FirstToken` (BERT's ``[CLS]`` position, arXiv:1810.04805) for encoders.
Metrics: accuracy, and macro-F1 over the classes (:meth:`ClassificationObjective.summary`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.data.packing import Batch
from zoo.errors import ConfigError
from zoo.objectives.base import Metrics, Objective

#: the architectures whose ``features`` a classifier reads (an encoder-decoder's are its encoder's)
ARCHS = ("causal", "prefix", "encoder", "encdec")


class LastToken(nn.Module):
    """The hidden state of each row's last real token. Shapes: ``(b, n, d), (b, n) -> (b, d)``."""

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n = valid.shape[1]
        last = n - 1 - valid.flip(1).int().argmax(1)  # the first True from the right
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class FirstToken(nn.Module):
    """The hidden state of each row's first real token. Shapes: ``(b, n, d), (b, n) -> (b, d)``."""

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), valid.int().argmax(1)]


class MeanPool(nn.Module):
    """The mean of the real tokens' hidden states. Shapes: ``(b, n, d), (b, n) -> (b, d)``."""

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = valid.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


POOLS = {"last": LastToken, "first": FirstToken, "mean": MeanPool}


class ClassificationHead(nn.Module):
    """Pooling, then a linear layer to class logits. Shapes: ``(b, n, dim), (b, n) -> (b, n_classes)``.

    Args:
        dim: the model's width.
        n_classes: classes (>= 2).
        pool: ``last``, ``first`` or ``mean``.
    """

    def __init__(self, dim: int, *, n_classes: int, pool: str) -> None:
        super().__init__()
        self.pool = POOLS[pool]()
        self.out_proj = nn.Linear(dim, n_classes)

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.pool(hidden, valid))


def positions_of(valid: torch.Tensor) -> torch.Tensor:
    """``(b, n)`` positions ``0..len-1`` of each row's real tokens, whichever side the padding is on (0 at padding)."""
    return (valid.long().cumsum(1) - 1).clamp(min=0)


class ClassificationObjective(Objective):
    """Cross-entropy of a :class:`ClassificationHead` (``model.classifier``) over pooled hidden states.

    Args:
        pool: ``last``, ``first``, ``mean``, or ``auto``: the model's ``feature_pool`` (``last`` for
            decoders, ``mean`` for encoders and an encoder-decoder's encoder).
        n_classes: set by :meth:`prepare` from the data (``data.n_classes``); kept in the run's config.
        tokenizer, seed: as :class:`~zoo.objectives.base.Objective`.
    """

    name = "classify"
    compatible_archs = ARCHS
    predicts_text = False  # a label's likelihood: no compressor is a reference for it

    def __init__(self, *, pool: str = "auto", n_classes: int | None = None, tokenizer=None, seed: int = 0) -> None:
        super().__init__(tokenizer=tokenizer, seed=seed)
        if pool != "auto" and pool not in POOLS:
            raise ConfigError("objective.pool", pool, f"one of auto, {', '.join(POOLS)}")
        self.pool, self.n_classes = pool, n_classes
        self.confusion: torch.Tensor | None = None

    def prepare(self, model, *, data=None) -> None:
        """Add ``model.classifier`` (trainable whatever the adapter froze), sized by the data's classes."""
        n_classes = getattr(data, "n_classes", None) or self.n_classes
        if not n_classes:
            raise ConfigError("data", type(data).__name__, "labelled data (data=compile or data=labelled) with n_classes, for objective=classify")
        pool = self.pool if self.pool != "auto" else model.feature_pool
        model.classifier = ClassificationHead(model.dim, n_classes=n_classes, pool=pool).to(next(model.parameters()).device)

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        self.check(model)
        tokens, valid, labels = batch["tokens"], batch["valid"], batch["labels"]
        hidden = model.features(tokens, positions=positions_of(valid), valid=valid)
        logits = model.classifier(hidden, valid).float()
        loss = F.cross_entropy(logits, labels)
        predicted = logits.argmax(-1)
        n_classes = logits.shape[-1]
        counts = torch.bincount((labels * n_classes + predicted).cpu(), minlength=n_classes**2).reshape(n_classes, n_classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts
        n = labels.new_tensor(labels.shape[0])
        return loss, {
            "loss": loss.detach(), "nll_sum": loss.detach() * labels.shape[0], "n_tokens": n,
            "accuracy": (predicted == labels).sum() / n,
        }  # fmt: skip

    def summary(self) -> dict[str, float]:
        """``macro_f1`` over the calls so far: the unweighted mean of each class's F1 (a class never
        predicted nor present counts as 0, so a collapsed classifier scores low)."""
        if self.confusion is None:
            return {}
        return {"macro_f1": macro_f1(self.confusion)}


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean over classes of ``2 tp / (2 tp + fp + fn)`` of a ``(true, predicted)`` count matrix."""
    c = confusion.double()
    tp = c.diag()
    denominator = c.sum(0) + c.sum(1)
    return float((2 * tp / denominator.clamp(min=1)).mean())
