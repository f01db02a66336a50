"""An example zoo plugin: ScaleNorm, usable as ``model/norm=scalenorm`` once installed."""

import torch
from torch import nn


class ScaleNorm(nn.Module):
    """``g * x / ||x||`` with one learned scalar ``g`` (Nguyen & Salazar 2019, arXiv:1910.05895).

    Args:
        dim: feature size; ``g`` starts at ``sqrt(dim)`` so the output has unit RMS.
        eps: floor of the norm.

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.tensor(float(dim) ** 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)
