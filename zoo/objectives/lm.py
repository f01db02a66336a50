"""Next-token objectives for decoders: causal LM (``objective=causal_lm``) and prefix LM (``objective=prefix_lm``)."""

import math

import torch

from zoo.data.packing import Batch
from zoo.errors import ConfigError
from zoo.objectives.base import Metrics, Objective, add_aux_loss, documents, masked_cross_entropy, target_bytes


class CausalLMObjective(Objective):
    """Next-token prediction at every position the batch's ``loss_mask`` keeps (Radford et al. 2018, GPT).

    Inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``. Also the objective of the synthetic tasks,
    whose ``loss_mask`` keeps only the answers (so ``accuracy`` is the task's).

    Args: as :class:`~zoo.objectives.base.Objective`.
    """

    name = "causal_lm"
    compatible_archs = ("causal",)

    def make_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``tokens (b, n)``, ``targets (b, n)``, ``loss_mask (b, n)``, and ``segments (b, n)`` for a packed row."""
        return shift(batch)

    def continuation_inputs(self, batch: Batch, *, prefix_len: int) -> dict[str, torch.Tensor]:
        """The row read causally, the loss on its targets from ``tokens[:, prefix_len]`` on (:meth:`Objective.continuation`)."""
        return continuation(batch, prefix_len)

    def loss(self, model, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """The loss of ``model`` on inputs of :meth:`make_inputs`."""
        return _next_token_loss(self, model, model(x["tokens"], **documents(x)), x)

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        self.check(model)
        return self.loss(model, self.make_inputs(batch))


class PrefixLMObjective(Objective):
    """Prefix LM (Raffel et al. 2019, arXiv:1910.10683; UniLM, Dong et al. 2019, arXiv:1905.03197).

    Each row's prefix length ``p`` is drawn uniformly from ``[ceil(lo * n), floor(hi * n)]`` (at
    least 1); the model attends bidirectionally over the first ``p`` inputs, and the loss counts the
    targets after the prefix: positions ``t >= p - 1`` (the last prefix position predicts the first
    token after the prefix, which it cannot see).

    Args:
        prefix_fraction: ``(lo, hi)``, the range of prefix lengths as fractions of ``n``.
        tokenizer, seed: as :class:`~zoo.objectives.base.Objective`.
    """

    name = "prefix_lm"
    compatible_archs = ("prefix",)

    def __init__(self, *, prefix_fraction: tuple[float, float] = (0.0, 1.0), tokenizer=None, seed: int = 0) -> None:
        super().__init__(tokenizer=tokenizer, seed=seed)
        lo, hi = prefix_fraction
        if not 0 <= lo <= hi <= 1:
            raise ConfigError("objective.prefix_fraction", list(prefix_fraction), "[lo, hi] with 0 <= lo <= hi <= 1")
        self.prefix_fraction = (float(lo), float(hi))

    def make_inputs(self, batch: Batch, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """As :meth:`CausalLMObjective.make_inputs`, plus ``prefix_len (b,)``; ``loss_mask`` drops the prefix."""
        x = shift(batch)
        b, n = x["tokens"].shape
        lo, hi = self.prefix_fraction
        low = max(1, math.ceil(lo * n))
        high = max(low, math.floor(hi * n))
        g = self.next_generator() if generator is None else generator
        prefix_len = torch.randint(low, high + 1, (b,), generator=g).to(x["tokens"].device)
        after = torch.arange(n, device=prefix_len.device) >= prefix_len[:, None] - 1
        return {**x, "loss_mask": x["loss_mask"] & after, "prefix_len": prefix_len}

    def continuation_inputs(self, batch: Batch, *, prefix_len: int) -> dict[str, torch.Tensor]:
        """The row's first ``prefix_len`` tokens as the prefix, the loss on what follows (:meth:`Objective.continuation`)."""
        x = continuation(batch, prefix_len)
        return {**x, "prefix_len": torch.full((x["tokens"].shape[0],), prefix_len, device=x["tokens"].device)}

    def loss(self, model, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        """The loss of ``model`` on inputs of :meth:`make_inputs`."""
        return _next_token_loss(self, model, model(x["tokens"], prefix_len=x["prefix_len"], **documents(x)), x)

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        self.check(model)
        return self.loss(model, self.make_inputs(batch))

    def __repr__(self) -> str:
        return f"PrefixLMObjective(prefix_fraction={self.prefix_fraction}, seed={self.seed})"


def shift(batch: Batch) -> dict[str, torch.Tensor]:
    """Inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``, the batch's ``loss_mask`` (all ``True`` if absent),
    and the inputs' ``segments`` when the batch has ``segment_ids``."""
    tokens = batch["tokens"]
    mask = batch.get("loss_mask")
    if mask is None:
        mask = torch.ones_like(tokens[:, 1:], dtype=torch.bool)
    x = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}
    if "segment_ids" in batch:
        x["segments"] = batch["segment_ids"][:, :-1]
    return x


def continuation(batch: Batch, prefix_len: int) -> dict[str, torch.Tensor]:
    """:func:`shift` of the row read as one text (no ``segments``: span corruption and blank infilling read
    it so too), the loss on the targets ``tokens[:, prefix_len:]`` only."""
    x = shift({"tokens": batch["tokens"]})
    after = torch.arange(x["targets"].shape[1], device=x["targets"].device) >= prefix_len - 1
    return {**x, "loss_mask": after.expand_as(x["targets"])}


def _next_token_loss(objective: Objective, model, logits: torch.Tensor, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
    loss, metrics = masked_cross_entropy(logits, x["targets"], x["loss_mask"])
    n_bytes = target_bytes(objective._token_bytes, x["targets"], x["loss_mask"])
    if n_bytes is not None:
        metrics["n_bytes"] = n_bytes
    return add_aux_loss(model, loss, metrics), metrics
