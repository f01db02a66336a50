"""What every objective shares: the seeded randomness, the masked cross-entropy, MoE auxiliary
losses, and the objective/architecture compatibility check the config validator reads.
"""

import torch
import torch.nn.functional as F

from zoo.data.packing import Batch, generator
from zoo.errors import ConfigError

Metrics = dict[str, torch.Tensor]


def check_compatible(objective, arch: str) -> None:
    """Raise :class:`~zoo.errors.ConfigError` (key ``objective``) unless ``arch`` is in ``objective.compatible_archs``.

    Args:
        objective: an objective class or instance (it declares ``name`` and ``compatible_archs``).
        arch: a model's ``arch``: ``"causal"``, ``"prefix"``, ``"encoder"`` or ``"encdec"``.
    """
    if arch not in objective.compatible_archs:
        raise ConfigError("objective", objective.name, f"needs model={' or model='.join(objective.compatible_archs)}, not model={arch}")


class Objective:
    """Base of the objectives: turns a batch into model inputs, runs the model, returns the loss.

    ``objective(model, batch) -> (loss, metrics)``: ``loss`` is the scalar to minimise (plus
    ``model.aux_loss()`` unless the model has none or it is ``None``); ``metrics`` are detached 0-dim
    tensors: ``loss`` (the objective's own, mean per target token), ``nll_sum`` (nats summed over
    target tokens), ``n_tokens``, ``accuracy`` (argmax at target tokens), ``aux_loss`` when present,
    and ``n_bytes`` (UTF-8 bytes of the target tokens, for bits per byte) where the objective predicts text.

    Randomness (prefix lengths, masks, spans) comes from a generator seeded with ``(seed, step)``;
    ``step`` counts calls, so :meth:`state_dict` is two plain ints. Give evaluation its own instance,
    built afresh (or reset with ``load_state_dict``) for every pass, so every pass sees the same masks.

    Args:
        tokenizer: the run's tokenizer (:mod:`zoo.tokenizer`), for special ids and bytes per token;
            ``None`` for synthetic tasks.
        seed: seeds the objective's randomness.
    """

    #: the config option that selects it (``objective=<name>``)
    name: str = ""
    #: the ``arch`` values of the models it can train
    compatible_archs: tuple[str, ...] = ()
    #: whether its loss is a text's likelihood, so that bits per byte and the compressors' figures mean something
    predicts_text: bool = True

    def __init__(self, *, tokenizer=None, seed: int = 0) -> None:
        self.tokenizer, self.seed, self.step = tokenizer, seed, 0
        self._token_bytes = tokenizer.token_bytes if tokenizer is not None else None

    def next_generator(self) -> torch.Generator:
        """The CPU generator of the next call."""
        self.step += 1
        return generator(type(self).__name__, self.seed, self.step - 1)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.step = int(state["seed"]), int(state["step"])

    @classmethod
    def check(cls, model) -> None:
        """Refuse a model this objective cannot train (its ``arch``); the trainer also asks it of the
        model built on the meta device, before any weight is allocated."""
        arch = getattr(model, "arch", None)
        if arch:
            check_compatible(cls, arch)

    def prepare(self, model, *, data=None) -> None:
        """Add to ``model`` what this objective needs beyond it (a task head); called once per run,
        after the adapter froze what it freezes, so what is added here trains. Language modelling adds nothing."""

    def summary(self) -> dict[str, float]:
        """Metrics over every call so far that are not sums of per-batch numbers (macro-F1); none here."""
        return {}

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def continuation_prompt(self, ids: list[int]) -> tuple[list[int], dict[str, int]]:
        """How a model trained by this objective continues a text prompt ``ids``: the prompt to decode from and
        the keyword arguments of :func:`zoo.generation.generate` (the end-of-run sample asks it). A language
        model continues the text itself: ``(ids, {})``."""
        return list(ids), {}

    def continuation(self, model, batch: Batch, *, prefix_len: int) -> tuple[torch.Tensor, Metrics]:
        """The loss of each row's tokens after its first ``prefix_len``, given those, read as this objective
        reads a text whose end is missing: what compares across objectives, since the predicted tokens are
        the same under every objective that answers it (``tokens[:, prefix_len:]``, ``n + 1 - prefix_len``
        per row of ``tokens (b, n + 1)``). Returns ``(loss, metrics)`` as a call does.

        An objective answers it by its ``continuation_inputs`` and ``loss``: the inputs of its own kind
        with the row's end as the one thing to predict, and its loss on inputs.
        """
        inputs = getattr(self, "continuation_inputs", None)
        if inputs is None:
            raise ConfigError("objective", self.name, "an objective that predicts text (causal_lm, prefix_lm, blank_infilling, span_corruption) to score a continuation")
        self.check(model)
        tokens = batch["tokens"]
        if not 1 <= prefix_len < tokens.shape[1]:
            raise ConfigError("bench.continuation.prefix", prefix_len, f"a prefix of 1 to {tokens.shape[1] - 1} tokens of rows of {tokens.shape[1]}")
        return self.loss(model, inputs(batch, prefix_len=prefix_len))

    def _needs_tokenizer(self):
        if self.tokenizer is None:
            raise ConfigError("tokenizer", None, f"objective={self.name} needs a tokenizer's special tokens; synthetic tasks train with objective=causal_lm")
        return self.tokenizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Mean cross-entropy over the ``True`` positions of ``mask``.

    Args:
        logits: ``(b, n, v)``.
        targets: ``(b, n)`` long.
        mask: ``(b, n)`` bool.

    Returns: the loss (0 when nothing is masked in, still attached to the graph) and metrics
    ``loss``, ``nll_sum``, ``n_tokens``, ``accuracy``.
    """
    # float32: the log-softmax of bf16 logits loses the small probabilities the loss is made of
    nll_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.masked_fill(~mask, -100).flatten(), ignore_index=-100, reduction="sum")
    n_tokens = mask.sum()
    loss = nll_sum / n_tokens.clamp(min=1)
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss, {
        "loss": loss.detach(),
        "nll_sum": nll_sum.detach(),
        "n_tokens": n_tokens,
        "accuracy": correct / n_tokens.clamp(min=1),
    }


def documents(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's ``segments`` keyword when the inputs come from packed rows whose attention stops at
    document boundaries (``data.boundaries=mask``), else nothing."""
    return {"segments": inputs["segments"]} if "segments" in inputs else {}


def add_aux_loss(model, loss: torch.Tensor, metrics: Metrics) -> torch.Tensor:
    """``loss + model.aux_loss()`` (mixture-of-experts balancing, summed over layers) when there is one."""
    aux = model.aux_loss() if callable(getattr(model, "aux_loss", None)) else None
    if aux is None:
        return loss
    metrics["aux_loss"] = aux.detach()
    return loss + aux


def target_bytes(token_bytes: torch.Tensor | None, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """UTF-8 bytes of the counted targets, for bits per byte = ``nll_sum / ln 2 / n_bytes``."""
    if token_bytes is None:
        return None
    return (token_bytes.to(targets.device)[targets] * mask).sum()
