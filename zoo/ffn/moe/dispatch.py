"""Moving token rows to their experts and back, with gathers only.

For token choice every token has exactly ``k`` assignments (choice ``j`` of token ``i`` is number
``j * t + i``, "choice-major"), and each assignment has one row in the experts' input: its
position ``pos``. Dispatch gathers ``x`` into those rows, combine gathers the rows back into
choice-major order; the backward of each is again a gather (plus a sum over the ``k`` copies),
never the scatter-add autograd would use for ``index_select``, which is the slowest op of the
layer on CPU. The rows may be sorted by expert (``pos`` a permutation) or padded to ``c`` slots
per expert, with rows no assignment uses (:func:`padded_positions`).

Letters: ``t`` tokens, ``k`` assignments per token, ``a = k * t`` assignments, ``r`` rows, ``d`` width.
"""

import torch


class _Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, row_token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pos)
        ctx.n_tokens = x.shape[0]
        ctx.k = pos.shape[0] // max(x.shape[0], 1)
        return x.index_select(0, row_token)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (pos,) = ctx.saved_tensors
        # rows no assignment uses are never read: their gradient is dropped
        return grad.index_select(0, pos).view(ctx.k, ctx.n_tokens, grad.shape[-1]).sum(0), None, None


class _Collect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, pos: torch.Tensor, row_source: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(row_source)
        ctx.padded = y.shape[0] > pos.shape[0]
        return y.index_select(0, pos)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (row_source,) = ctx.saved_tensors
        if ctx.padded:  # unused rows read a zero row appended at index a
            grad = torch.cat([grad, grad.new_zeros(1, grad.shape[-1])])
        return grad.index_select(0, row_source), None, None


def dispatch(x: torch.Tensor, row_token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x (t, d)`` -> the experts' input rows ``x[row_token]`` ``(r, d)``.

    Args:
        row_token: ``(r,)`` the token of each row (any token for an unused row).
        pos: ``(a,)`` the row of each assignment, choice-major.
    """
    return _Dispatch.apply(x, row_token, pos)


def collect(y: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The experts' output rows ``y (r, d)`` -> one row per assignment, choice-major, ``(a, d)``."""
    a = pos.shape[0]
    # the assignment each row holds; `a` for a row none holds
    row_source = torch.full((y.shape[0],), a, device=pos.device, dtype=pos.dtype).scatter_(0, pos, torch.arange(a, device=pos.device))
    return _Collect.apply(y, pos, row_source)


def padded_positions(counts: list[int], *, width: int, device: torch.device) -> torch.Tensor:
    """Row of each assignment sorted by expert when expert ``i`` owns rows ``i * width .. i * width + counts[i]``.

    Returns: ``(sum(counts),)``.
    """
    counts_t = torch.tensor(counts, device=device)
    shift = torch.arange(len(counts), device=device) * width - (counts_t.cumsum(0) - counts_t)
    return torch.arange(sum(counts), device=device) + shift.repeat_interleave(counts_t)
