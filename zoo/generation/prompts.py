"""Prompts as the generation loops take them (lists of token ids, or a ``(b, n)`` tensor), and the
models they run in eval mode."""

from collections.abc import Sequence

import torch
from torch import nn

from zoo.errors import ConfigError

Prompts = Sequence[Sequence[int]] | torch.Tensor


def as_lists(prompts: Prompts) -> list[list[int]]:
    """Prompts as lists of ids; a tensor ``(b, n)`` is ``b`` prompts of ``n`` tokens."""
    if torch.is_tensor(prompts):
        if prompts.dim() != 2:
            raise ConfigError("generate.prompts", tuple(prompts.shape), "a (batch, length) tensor or a list of id lists")
        return prompts.tolist()
    lists = [list(map(int, p)) for p in prompts]
    if not lists or any(len(p) == 0 for p in lists):
        raise ConfigError("generate.prompts", [len(p) for p in lists], "at least one prompt, each of at least one token")
    return lists


class evaluating:
    """Put modules in eval mode (no dropout) for a block, restoring their training flags after."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.flags = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc) -> None:
        for m, flag in zip(self.modules, self.flags):
            m.train(flag)
