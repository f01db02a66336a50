"""Soft-capping (Gemma 2, arXiv:2408.00118): squash values smoothly into ``(-cap, cap)``.

``cap * tanh(x / cap)`` is close to ``x`` for ``|x| << cap`` and bounded by ``cap``, so attention
scores and final logits cannot grow without limit while gradients stay non-zero everywhere. The
attention kernels apply :func:`soft_cap` to scores (``model.attention.softcap``); :class:`SoftCap`
caps a model's final logits (``model.logit_softcap``).
"""

import torch
from torch import nn


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``, elementwise."""
    return cap * torch.tanh(x / cap)


class SoftCap(nn.Module):
    """Final-logit soft-capping (Gemma 2 caps at 30).

    Args:
        cap: the bound, > 0.

    Shapes: any -> the same.
    """

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = float(cap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_cap(x, self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"
