"""Weight initialisation schemes: the ``model/init`` slot.

A scheme is called once on the whole built model. Residual-output projections are recognised by
their names, ``o_proj`` and ``down_proj``, which every attention and FFN of zoo uses.

Each weight is drawn from its own random stream, keyed by the seed last given to
``torch.manual_seed`` and the weight's module name, not from one stream consumed in module order.
Two variants built under one seed therefore start with equal values in every weight they share (same
name and shape: embeddings, attention projections when only the FFN differs), however their other
modules differ: common random numbers, so a seed's luck cancels in the variants' difference.
"""

import hashlib
import math

import torch
from torch import nn

RESIDUAL_OUTPUTS = ("o_proj", "down_proj")


def stream(name: str) -> torch.Generator:
    """The CPU generator of the weight ``name`` under the current ``torch.initial_seed()``."""
    digest = hashlib.blake2b(f"{torch.initial_seed()}/{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def normal_(weight: torch.Tensor, *, std: float, name: str) -> None:
    """Fill ``weight`` from ``N(0, std)`` with the values of its own stream (drawn on the CPU in
    float32, so a weight starts alike on every device and dtype)."""
    weight.copy_(torch.randn(weight.shape, generator=stream(name)) * std)


class NormalInit:
    """Every linear and embedding weight from ``N(0, std)``, biases zero, norms one (GPT, BERT).

    Args:
        std: the standard deviation (0.02 in GPT-2 and BERT).
    """

    def __init__(self, *, std: float = 0.02) -> None:
        self.std = std

    def std_for(self, name: str, n_layers: int) -> float:
        return self.std

    @torch.no_grad()
    def __call__(self, model: nn.Module, *, n_layers: int) -> None:
        if any(p.is_meta for p in model.parameters()):
            return  # a shape-only build (config validation) has no values to initialise
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal_(module.weight, std=self.std_for(name, n_layers), name=name)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for module in model.modules():
            # Architectures' own hooks (DeepNorm's gains) run after the scheme.
            if hasattr(module, "post_init"):
                module.post_init()


class ScaledResidualInit(NormalInit):
    """GPT-2's init: residual-output projections scaled by ``1 / sqrt(2 * n_layers)``.

    Each block adds two sub-layers to the residual stream, so its variance grows with depth
    unless their outputs shrink (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners").
    """

    def std_for(self, name: str, n_layers: int) -> float:
        if name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS:
            return self.std / math.sqrt(2 * n_layers)
        return self.std
