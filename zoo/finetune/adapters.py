"""Which parameters a fine-tuning run trains (config group ``adapter``): all of them, none of the
body's, or low-rank adapters beside frozen weights.

An adapter is applied to a built model after its initial weights are loaded and before the task adds
its head (:meth:`zoo.objectives.base.Objective.prepare`), so a head the task adds always trains.
A run whose body is frozen checkpoints only what trains (``trainable.safetensors``, written by
:meth:`zoo.train.steps.Loop.save`); the frozen rest comes back from ``trainer.init_from``.
"""

from torch import nn


class FullFineTuning:
    """``adapter=none``: every parameter trains (full fine-tuning, or training from scratch)."""

    def apply(self, model: nn.Module) -> None:
        """Nothing to change."""

    def merge(self, model: nn.Module) -> nn.Module:
        """Nothing to fold back: ``model`` as it is."""
        return model

    def unload(self, model: nn.Module) -> nn.Module:
        """Nothing to take out: ``model`` as it is."""
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Frozen(FullFineTuning):
    """``adapter=frozen``: the whole body is frozen; only what the task adds afterwards (a
    classification head) trains: a linear probe of the pretrained features."""

    def apply(self, model: nn.Module) -> None:
        model.requires_grad_(False)


def count_trainable(model: nn.Module) -> int:
    """Parameters that receive gradients (a tied matrix once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
