"""Residual wiring: the ``model/residual`` slot — where the norms sit around each sub-layer.

A block is built per layer as ``residual(dim, attn=, ffn=, norm=, cross_attn=, dropout=, depth=)``:
it receives its attention and FFN already built and a norm *factory*, and never knows which kinds
they are. Sub-layers run in order: self-attention, cross-attention (encoder-decoder only), FFN.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.attention.attention import Context
from zoo.attention.cache import LayerCache
from zoo.dropout import dropout_layer
from zoo.errors import ConfigError


@dataclass(frozen=True)
class Depth:
    """The depth of the model a block sits in (DeepNorm's constants depend on it).

    Args:
        stack: ``"encoder"`` or ``"decoder"``: which stack this block belongs to.
        encoder_layers: layers of the encoder (0 for a decoder-only model).
        decoder_layers: layers of the decoder (0 for an encoder-only model).
    """

    stack: str
    encoder_layers: int
    decoder_layers: int


class Residual(nn.Module):
    """Base of the residual wirings: holds the sub-layers; subclasses say how each one is added."""

    #: whether the stack needs a final norm after its last block (pre-norm wirings leave x unnormalised).
    final_norm: bool = True
    #: norms around each sub-layer
    norms_per_sublayer: int = 1
    #: whether it can wire a cross-attention sub-layer (the decoder of an encoder-decoder)
    supports_cross_attention: bool = True

    def __init__(
        self,
        dim: int,
        *,
        attn: nn.Module,
        ffn: nn.Module,
        norm: Callable[[int], nn.Module],
        cross_attn: nn.Module | None = None,
        dropout: float = 0.0,
        depth: Depth,
    ) -> None:
        super().__init__()
        self.attn, self.cross_attn, self.ffn = attn, cross_attn, ffn
        n_sublayers = 3 if cross_attn is not None else 2
        self.norms = nn.ModuleList(norm(dim) for _ in range(n_sublayers * self.norms_per_sublayer))
        self.dropout = dropout_layer(dropout)

    def forward(self, x: torch.Tensor, ctx: Context, cache: LayerCache | None = None) -> torch.Tensor:
        x = self.add(0, x, lambda h: self.attn(h, ctx, cache and cache.self_attn))
        if self.cross_attn is not None:
            x = self.add(1, x, lambda h: self.cross_attn(h, ctx, cache and cache.cross_attn))
        return self.add(-1, x, self.ffn)

    def add(self, i: int, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Add sub-layer ``i`` (``-1`` for the FFN) to the residual stream ``x (b, n, dim)``."""
        raise NotImplementedError


class PreNorm(Residual):
    """``x + f(norm(x))`` (Xiong et al. 2020, arXiv:2002.04745): stable at depth, as in GPT-2 and LLaMA."""

    def add(self, i, x, sublayer):
        return x + self.dropout(sublayer(self.norms[i](x)))


class PostNorm(Residual):
    """``norm(x + f(x))``, the original Transformer's placement (Vaswani et al. 2017, arXiv:1706.03762)."""

    final_norm = False

    def add(self, i, x, sublayer):
        return self.norms[i](x + self.dropout(sublayer(x)))


class SandwichNorm(Residual):
    """``x + norm_out(f(norm_in(x)))`` (CogView, Ding et al. 2021, arXiv:2105.13290)."""

    norms_per_sublayer = 2

    def add(self, i, x, sublayer):
        i = i % (len(self.norms) // 2)
        return x + self.dropout(self.norms[2 * i + 1](sublayer(self.norms[2 * i](x))))


class ReorderedNorm(Residual):
    """``x + norm(f(x))``: the norm moved from a sub-layer's input to its output, the stream left raw.

    Swin Transformer V2's res-post-norm (Liu et al. 2021, arXiv:2111.09883) and OLMo 2's reordered
    norm (OLMo et al. 2024, arXiv:2501.00656): each residual branch adds a normalised update, which
    bounds it, while the stream itself is normalised only once, at the end.
    """

    def add(self, i, x, sublayer):
        return x + self.dropout(self.norms[i](sublayer(x)))


def deepnorm_constants(depth: Depth) -> tuple[float, float]:
    """DeepNet's ``(alpha, beta)`` (Wang et al. 2022, arXiv:2203.00555, Table 1).

    Decoder- or encoder-only with N layers: ``alpha = (2N)^(1/4)``, ``beta = (8N)^(-1/4)``.
    Encoder-decoder with N encoder and M decoder layers: the encoder uses
    ``alpha = 0.81 (N^4 M)^(1/16)``, ``beta = 0.87 (N^4 M)^(-1/16)``; the decoder
    ``alpha = (3M)^(1/4)``, ``beta = (12M)^(-1/4)``.
    """
    n, m = depth.encoder_layers, depth.decoder_layers
    if n and m:
        if depth.stack == "encoder":
            return 0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)
        return (3 * m) ** (1 / 4), (12 * m) ** (-1 / 4)
    layers = n or m
    return (2 * layers) ** (1 / 4), (8 * layers) ** (-1 / 4)


class DeepNorm(Residual):
    """Post-norm with an up-weighted residual, ``norm(alpha * x + f(x))``, and a down-scaled init.

    DeepNet (Wang et al. 2022, arXiv:2203.00555): the value, output and FFN weights start from a
    Xavier init with gain ``beta``, queries and keys with gain 1; ``alpha`` and ``beta`` follow
    :func:`deepnorm_constants`.
    """

    final_norm = False

    def __init__(self, dim: int, *, depth: Depth, **kwargs) -> None:
        super().__init__(dim, depth=depth, **kwargs)
        self.alpha, self.beta = deepnorm_constants(depth)

    def add(self, i, x, sublayer):
        return self.norms[i](self.alpha * x + self.dropout(sublayer(x)))

    @torch.no_grad()
    def post_init(self) -> None:
        """Re-initialise the sub-layers with DeepNet's gains; the architecture calls it after its init.

        Projections that make scores (attention's queries and keys, a router's logits: each module
        names its own in ``score_projections()``) get gain 1; every other linear layer, on the path of
        the values into the residual stream, gets ``beta``.
        """
        for sublayer in (self.attn, self.cross_attn, self.ffn):
            if sublayer is None:
                continue
            scores = {id(p) for m in sublayer.modules() for p in score_projections(m)}
            for module in sublayer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight, gain=1.0 if id(module) in scores else self.beta)


def score_projections(module: nn.Module) -> tuple[nn.Linear, ...]:
    """The linear layers ``module`` says make scores rather than values (none unless it says so)."""
    answer = getattr(module, "score_projections", None)
    return tuple(answer()) if callable(answer) else ()


class Parallel(Residual):
    """``x + attn(norm(x)) + ffn(norm(x))``: one norm, both sub-layers read it (GPT-J, PaLM, Falcon)."""

    supports_cross_attention = False

    def __init__(self, dim: int, *, cross_attn: nn.Module | None = None, **kwargs) -> None:
        if cross_attn is not None:
            raise ConfigError(
                "model/residual", "parallel", "has no place for cross-attention: pick pre, post, sandwich or deepnorm for model=encdec"
            )
        super().__init__(dim, **kwargs)
        del self.norms[1:]

    def forward(self, x: torch.Tensor, ctx: Context, cache: LayerCache | None = None) -> torch.Tensor:
        h = self.norms[0](x)
        return x + self.dropout(self.attn(h, ctx, cache and cache.self_attn)) + self.dropout(self.ffn(h))


class ParallelTwoNorms(Residual):
    """``x + attn(norm_1(x)) + ffn(norm_2(x))``: the parallel block with a norm per sub-layer.

    GPT-NeoX (Black et al. 2022, arXiv:2204.06745) and Falcon-40B; GPT-J and PaLM share one norm
    (:class:`Parallel`).
    """

    supports_cross_attention = False

    def __init__(self, dim: int, *, cross_attn: nn.Module | None = None, **kwargs) -> None:
        if cross_attn is not None:
            raise ConfigError(
                "model/residual", "parallel_two_norms", "has no place for cross-attention: pick pre, post, sandwich or deepnorm for model=encdec"
            )
        super().__init__(dim, **kwargs)

    def forward(self, x: torch.Tensor, ctx: Context, cache: LayerCache | None = None) -> torch.Tensor:
        attn = self.attn(self.norms[0](x), ctx, cache and cache.self_attn)
        return x + self.dropout(attn) + self.dropout(self.ffn(self.norms[1](x)))
