"""Optimisers and learning-rate schedules: the ``optim`` and ``sched`` config groups.

The default is the LLaMA recipe (Touvron et al. 2023, arXiv:2302.13971): AdamW with betas
(0.9, 0.95), weight decay 0.1, gradient clipping at 1.0, a linear warm-up and a cosine decay; the
default schedule (conf/sched/cosine.yaml) decays to zero rather than LLaMA's tenth of the peak,
measured better at the default run's budget.

A schedule is a pure function of the step, so its whole state is the step the loop already saves;
nothing here needs pickling to resume.
"""

import math

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.pos.base import Positions

#: modules whose every parameter is a lookup table, never decayed (token and position embeddings)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, Positions)


def param_groups(model: nn.Module, *, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decayed; norms, biases and embeddings not.

    A parameter is exempt when it has fewer than two dimensions (norm gains, biases, scalars) or
    belongs to an embedding module (decided by module type, so a tied LM head, which *is* the
    embedding matrix, is exempt too). Decaying them only pulls gains and lookups toward zero
    (Loshchilov & Hutter 2017, arXiv:1711.05101; the convention of GPT-2, LLaMA and OLMo).
    """
    exempt: set[int] = set()
    for module in model.modules():
        if isinstance(module, EMBEDDING_TYPES):
            exempt.update(id(p) for p in module.parameters())
    decay, no_decay = [], []
    for p in model.parameters():  # deduplicated: a tied matrix appears once
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_by_default(model: nn.Module) -> bool:
    """Whether torch has a fused AdamW kernel for ``model``'s device (CPU, CUDA)."""
    return next(model.parameters()).device.type in ("cpu", "cuda")


class AdamW:
    """AdamW (Loshchilov & Hutter 2017, arXiv:1711.05101) over :func:`param_groups`.

    Args:
        lr: the peak learning rate (the schedule scales it).
        betas: Adam's moment decays; (0.9, 0.95) as in GPT-3 and LLaMA.
        eps: Adam's denominator floor.
        weight_decay: decoupled decay of the matrices.
        grad_clip: clip the global gradient norm to this; ``None`` or 0 turns clipping off.
        fused: torch's fused kernel, one pass over each tensor (5x faster than the per-tensor loop on
            CPU: ``benchmarks/bench_optim.py``); ``None`` picks it on the devices torch has it for (CPU, CUDA), as HF's Trainer does.
    """

    def __init__(
        self,
        *,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        grad_clip: float | None = 1.0,
        fused: bool | None = None,
    ) -> None:
        if lr <= 0:
            raise ConfigError("optim.lr", lr, "> 0")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError("optim.betas", list(betas), "two numbers in [0, 1)")
        if weight_decay < 0:
            raise ConfigError("optim.weight_decay", weight_decay, ">= 0")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.grad_clip, self.fused = grad_clip or None, fused

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        fused = fused_by_default(model) if self.fused is None else self.fused
        return torch.optim.AdamW(
            param_groups(model, weight_decay=self.weight_decay), lr=self.lr, betas=self.betas, eps=self.eps, fused=fused or None
        )


class SGD:
    """SGD with Nesterov momentum, over the same decay groups (a baseline for optimiser ablations).

    Args:
        lr: the peak learning rate.
        momentum: the momentum coefficient.
        weight_decay: L2 decay of the matrices.
        grad_clip: as in :class:`AdamW`.
    """

    def __init__(self, *, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, grad_clip: float | None = 1.0) -> None:
        if lr <= 0:
            raise ConfigError("optim.lr", lr, "> 0")
        self.lr, self.momentum, self.weight_decay, self.grad_clip = lr, momentum, weight_decay, grad_clip or None

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups(model, weight_decay=self.weight_decay), lr=self.lr, momentum=self.momentum, nesterov=True)


class Schedule:
    """A learning-rate multiplier per step; subclasses give the shape after the linear warm-up.

    Args:
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        min_lr_ratio: the floor of the decay, as a fraction of the peak (LLaMA: 0.1).
    """

    def __init__(self, *, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> None:
        if warmup_steps < 0:
            raise ConfigError("sched.warmup_steps", warmup_steps, ">= 0")
        if not 0 <= min_lr_ratio <= 1:
            raise ConfigError("sched.min_lr_ratio", min_lr_ratio, "in [0, 1]")
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio

    def factor(self, step: int, *, max_steps: int) -> float:
        """The multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(max_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * self.decay(progress)

    def decay(self, progress: float) -> float:
        """From 1 at the end of warm-up to 0 at the last step; ``progress`` in ``[0, 1]``."""
        raise NotImplementedError

    def apply(self, optimizer: torch.optim.Optimizer, *, step: int, max_steps: int, lr: float) -> float:
        """Set every group's learning rate for ``step``; returns it."""
        value = lr * self.factor(step, max_steps=max_steps)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value


class WarmupCosine(Schedule):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` (Loshchilov & Hutter 2016, arXiv:1608.03983; LLaMA)."""

    def decay(self, progress: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * progress))


class WarmupLinear(Schedule):
    """Linear warm-up, then linear decay to ``min_lr_ratio``."""

    def decay(self, progress: float) -> float:
        return 1 - progress


class WarmupConstant(Schedule):
    """Linear warm-up, then the peak learning rate to the end."""

    def decay(self, progress: float) -> float:
        return 1.0


class WarmupStableDecay(Schedule):
    """Warm-up, a long constant stage, then a short linear cool-down (WSD; Hu et al. 2024, MiniCPM, arXiv:2404.06395).

    Args:
        decay_fraction: the share of the post-warm-up steps spent cooling down.
    """

    def __init__(self, *, warmup_steps: int = 0, min_lr_ratio: float = 0.0, decay_fraction: float = 0.2) -> None:
        super().__init__(warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
        if not 0 < decay_fraction <= 1:
            raise ConfigError("sched.decay_fraction", decay_fraction, "in (0, 1]")
        self.decay_fraction = decay_fraction

    def decay(self, progress: float) -> float:
        return min(1.0, (1 - progress) / self.decay_fraction)
