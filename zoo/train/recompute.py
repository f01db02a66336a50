"""Activation checkpointing (``trainer.activation_checkpointing``): each block recomputed in the backward pass.

Chen et al. 2016 (arXiv:1604.06174): a block's activations are dropped after its forward and
recomputed when the backward pass needs them, trading one more forward for the memory of every
block's intermediate tensors.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.arch.stack import Stack
from zoo.errors import ConfigError

#: the attribute that holds the wrapped block (left out of the state dict's names)
WRAPPED = "block"


class Recomputed(nn.Module):
    """A block run under ``torch.utils.checkpoint``; its state dict and attributes are the block's own.

    The state dict has the block's names (a checkpoint loads into a model built without wrappers),
    and any attribute the wrapper lacks is the block's (``layer.attn``: caches and cost counts still ask it).

    Args:
        block: the module to recompute.

    Shapes: the block's.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.register_state_dict_post_hook(_unwrap_names)
        self.register_load_state_dict_pre_hook(_wrap_names)

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # nothing to recompute for: evaluation and decoding run plainly
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__(WRAPPED), name)


def _unwrap_names(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _wrap_names(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def recompute_blocks(model: nn.Module) -> None:
    """Wrap every block of every :class:`~zoo.arch.Stack` of ``model`` in :class:`Recomputed`, in place.

    A module whose forward changes its own state (performer's redrawn features) declares why it cannot
    be recomputed (``recompute_refusal``), and is refused before any step.
    """
    for module in model.modules():
        refusal = getattr(module, "recompute_refusal", None)
        if refusal is not None:
            raise ConfigError("trainer.activation_checkpointing", True, refusal)
    for stack in [m for m in model.modules() if isinstance(m, Stack)]:
        for i, layer in enumerate(stack.layers):
            if not isinstance(layer, Recomputed):
                stack.layers[i] = Recomputed(layer)
