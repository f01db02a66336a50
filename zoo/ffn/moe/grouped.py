"""Running GLU and MLP experts all at once: one grouped or batched matmul per projection.

The experts stay a ``ModuleList`` of ordinary FFNs (one parameter layout for every FFN option, the
init schemes and checkpoints); for the GLU and MLP families, whose forward is known, their weights
are stacked at each forward (a copy small next to the matmuls) and every expert's tokens are
multiplied in one call:

- :func:`batched_linear`: tokens laid out ``(e, c, d)``, padded to the busiest expert, one
  ``torch.bmm``: measured the fastest on a busy shared CPU (where every kernel waits for all its
  threads); padding costs compute, so it is used only when routing is nearly balanced.
- :func:`grouped_linear`: tokens sorted by expert without padding, ``torch._grouped_mm`` (a loop
  of matmuls where that kernel cannot run).

Letters: ``a`` assignments, ``e`` experts, ``c`` slots per expert, ``d`` model width, ``h`` hidden.
"""

import functools
from collections.abc import Callable

import torch
from torch import nn

from zoo.ffn.glu import GLU
from zoo.ffn.mlp import MLP

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def can_group(experts: nn.ModuleList) -> bool:
    """Whether ``experts`` are one GLU or MLP class without biases, running their family's own forward."""
    if not len(experts):
        return False
    kind = type(experts[0])
    family = GLU if issubclass(kind, GLU) else MLP if issubclass(kind, MLP) else None
    return (
        family is not None
        and kind.forward is family.forward
        and all(type(e) is kind for e in experts)
        and not any(m.bias is not None for m in experts.modules() if isinstance(m, nn.Linear))
    )


def _autocast(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the grouped kernel is not autocast-aware: cast as F.linear would
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        return x.to(dtype), weight.to(dtype)
    return x, weight


def _aligned(t: torch.Tensor) -> bool:
    # the CPU grouped-matmul kernel needs 16-byte aligned data, strides and rows (in the backward too)
    size = t.element_size()
    matrix = t.shape[-1:] if t.dim() == 2 else t.shape[-2:]
    return t.data_ptr() % 16 == 0 and all(n == 1 or (n * size) % 16 == 0 for n in (*t.stride(), *matrix))


def _grouped_mm_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm") or x.dtype != w.dtype:
        return False
    if x.device.type == "cpu":
        return _aligned(x) and _aligned(w)
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return False


class _GroupedLinear(torch.autograd.Function):
    # as _BatchedLinear: the weight gradient computed directly in the weights' (e, out, in) layout
    # (CPU only: the CUDA kernel's layout rules for the transposed operand are left to torch's backward)
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, offs)
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=offs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, offs = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch._grouped_mm(grad, weight, offs=offs) if ctx.needs_input_grad[0] else None
        grad_weight = torch._grouped_mm(grad.t(), x, offs=offs) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, None


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, *, counts: list[int]) -> torch.Tensor:
    """Rows of ``x (a, in)`` sorted by expert (``counts`` each), times their expert's ``weight (e, out, in)``^T.

    Returns: ``(a, out)``.
    """
    x, weight = _autocast(x, weight)
    if _grouped_mm_ok(x, weight.transpose(1, 2)):
        offs = torch.tensor(counts, device=x.device).cumsum(0).to(torch.int32)
        if x.device.type == "cpu":
            return _GroupedLinear.apply(x, weight, offs)
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=offs)
    return torch.cat([chunk @ w.t() for chunk, w in zip(x.split(counts), weight.unbind(0))])


class _BatchedLinear(torch.autograd.Function):
    # bmm's own backward gives the weight gradient as the transpose of a contiguous tensor, and
    # accumulating that strided gradient into each expert's weight is a slow transposing copy
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.bmm(x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def batched_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x (e, c, in)`` times each expert's ``weight (e, out, in)``^T -> ``(e, c, out)``."""
    return _BatchedLinear.apply(*_autocast(x, weight))


def stacked_forward(experts: nn.ModuleList, x: torch.Tensor, linear: Linear) -> torch.Tensor:
    """The experts' family forward, each projection one ``linear(x, stacked weights (e, out, in))`` call."""
    first = experts[0]
    if isinstance(first, GLU):
        # gate and up apart rather than fused: a fused output's halves are strided, and the
        # activation and its backward on strided halves cost more than the extra matmul call
        gate = linear(x, torch.stack([e.gate_proj.weight for e in experts]))
        hidden = first.activation(gate) * linear(x, torch.stack([e.up_proj.weight for e in experts]))
    else:
        hidden = first.activation(linear(x, torch.stack([e.up_proj.weight for e in experts])))
    return linear(first.dropout(hidden), torch.stack([e.down_proj.weight for e in experts]))


def grouped_forward(experts: nn.ModuleList, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """``x (a, d)`` sorted by expert (``counts`` each) through their experts -> ``(a, d)``; needs :func:`can_group`."""
    return stacked_forward(experts, x, functools.partial(grouped_linear, counts=counts))


def batched_forward(experts: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """``x (e, c, d)``, expert ``i``'s tokens in row ``i``, through their experts -> ``(e, c, d)``; needs :func:`can_group`."""
    return stacked_forward(experts, x, batched_linear)
