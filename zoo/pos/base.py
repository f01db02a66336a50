"""The interface every position scheme implements, and NoPE."""

import torch
from torch import nn

#: what a scheme's :meth:`Positions.rotation` precomputes for its own :meth:`Positions.rotate` (RoPE: ``(cos, sin)``)
Rotation = tuple[torch.Tensor, ...]


class Positions(nn.Module):
    """Base of the position schemes; on its own it adds nothing.

    Args:
        dim: model width.
        n_heads: query heads of the attention it serves.
        head_dim: width of one head.
        max_seq_len: the longest sequence the model is built for.
        causal: whether the stack it serves is causal (T5's buckets differ).

    Positions are integer tensors ``(b, n)`` (or ``(1, n)``), so left-padded batches and KV-cache
    decoding pass each token's true position. A scheme that declares :attr:`two_dimensional` also
    takes GLM's 2D positions ``(b, n, 2)`` (:func:`split_2d`) in :meth:`embed` and :meth:`rotation`.
    """

    #: Longest position this scheme can encode, or ``None`` when unlimited.
    max_positions: int | None = None
    #: whether it can encode positions past the length it was trained at
    extrapolates: bool = True
    #: whether it carries order only together with a causal mask (so an encoder cannot use it)
    requires_causal: bool = False
    #: whether it also encodes GLM's 2D positions ``(b, n, 2)``: (position id, intra-span id)
    #: (Du et al. 2022, arXiv:2103.10360, section 2.2); one position ``(b, n)`` then means intra-span id 0
    two_dimensional: bool = False

    def __init__(self, dim: int, *, n_heads: int, head_dim: int, max_seq_len: int, causal: bool) -> None:
        super().__init__()

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``x (b, n, dim)``, ``positions (b, n)`` -> ``(b, n, dim)``."""
        return x

    def rotation(self, positions: torch.Tensor) -> Rotation | None:
        """What :meth:`rotate` needs for ``positions``, computed once per forward and shared by all layers."""
        return None

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, rotation: Rotation | None = None) -> torch.Tensor:
        """``x (b, n, h, d)``, ``positions (b, n)`` -> ``(b, n, h, d)``; ``rotation`` from :meth:`rotation`."""
        return x

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """Additive score bias ``(b, h, n, m)`` for ``q_pos (b, n)``, ``k_pos (b, m)``, or ``None``."""
        return None

    def check_length(self, n: int) -> None:
        if self.max_positions is not None and n > self.max_positions:
            raise ValueError(
                f"{type(self).__name__} encodes at most {self.max_positions} positions, got position {n - 1}: "
                "raise model.max_seq_len, or pick a relative scheme (model/pos=rope, alibi, t5, none) to extrapolate"
            )


def can_read(positions: torch.Tensor) -> bool:
    """Whether the values of ``positions`` may be read into Python (to check them against a table): not
    while compiling (reading would split the graph), nor under ``vmap`` (stacked seeds with their own
    packed rows: a batched tensor holds one value per member)."""
    return not torch.compiler.is_compiling() and not torch._C._functorch.is_batchedtensor(positions)


def split_2d(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GLM's two ids of ``positions``: ``(b, n, 2)`` -> two ``(b, n)``; ``(b, n)`` -> itself and zeros
    (a token of the corrupted text, Part A, has intra-span id 0)."""
    if positions.dim() == 3:
        return positions[..., 0], positions[..., 1]
    return positions, torch.zeros_like(positions)


class NoPositions(Positions):
    """No positional information (NoPE; Kazemnejad et al. 2023, arXiv:2305.19466).

    A causal mask alone lets a decoder infer positions; a bidirectional stack would see a bag of tokens.
    """

    requires_causal = True
