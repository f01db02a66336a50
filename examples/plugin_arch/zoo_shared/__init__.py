"""An example zoo plugin architecture: a causal LM whose blocks share one set of weights.

Usable as ``model=shared`` once installed. It answers everything zoo asks of an architecture
(:class:`zoo.arch.protocol.Architecture`: example inputs, decoding sessions, costs) through
:class:`~zoo.arch.TransformerLM`, so training, benchmarks, generation and the contract suite run it
unchanged: its FLOPs count every pass through the block, its parameters the block once.
"""

import torch
from torch import nn

from zoo.arch import TransformerLM
from zoo.attention.mask import Mask


class SharedLayersLM(TransformerLM):
    """A decoder-only LM that applies one block ``n_layers`` times (cross-layer sharing, ALBERT,
    Lan et al. 2019, arXiv:1909.11942; the Universal Transformer, Dehghani et al. 2018, arXiv:1807.03819).

    Args: as :class:`~zoo.arch.TransformerLM`; ``n_layers`` counts passes, not weight sets.

    Shapes: tokens ``(b, n)`` -> logits ``(b, n, vocab_size)``.
    """

    # objectives, caches and generation see a causal decoder: it is one, with fewer weights
    arch = "causal"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        block = self.stack.layers[0]
        # the same module at every depth: parameters count once, each pass has its own cache slot
        self.stack.layers = nn.ModuleList([block] * len(self.stack.layers))

    def mask(self, *, positions: torch.Tensor, prefix_len: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> Mask:
        return Mask(causal=True, key_valid=valid)
