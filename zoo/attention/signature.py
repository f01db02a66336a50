"""What every attention kernel shares: its call signature's types, and whether a call will be differentiated.

Every kernel takes ``q (b, h, n, d)``, ``k, v (b, k, m, d)``, a :class:`~zoo.attention.mask.Mask`,
positions ``q_pos (b, n)``, ``k_pos (b, m)``, a score ``bias``, a ``scale`` and a ``dropout`` rate,
and returns ``(b, h, n, d)``.
"""

from collections.abc import Callable

import torch

#: a score bias ``(q_pos (b, n), k_pos (b, m)) -> (b, h, n, m)`` or ``None`` (ALiBi, T5; RoPE has none)
BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]
#: a kernel: ``(q, k, v, *, mask, q_pos, k_pos, bias, scale, dropout) -> (b, h, n, d)``
Kernel = Callable[..., torch.Tensor]


def needs_backward(*tensors: torch.Tensor) -> bool:
    """Whether autograd will differentiate through a kernel called on ``tensors`` now (kernels that have
    no backward on a device are refused, and FlexAttention skips the tiles only a backward reads)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
