import math

import pytest
import torch

from zoo.attention import Attention, Context, Mask
from zoo.ffn import GeLUMLP, SwiGLU
from zoo.norm import LayerNorm
from zoo.pos import NoPositions
from zoo.residual import DeepNorm, Depth, Parallel, PostNorm, PreNorm, ReorderedNorm, SandwichNorm, deepnorm_constants

DIM = 16


def block(cls, depth=Depth("decoder", 0, 6)):
    torch.manual_seed(0)
    attn = Attention(DIM, n_heads=2, head_dim=8)
    return cls(DIM, attn=attn, ffn=GeLUMLP(DIM), norm=LayerNorm, depth=depth)


def ctx(n):
    return Context(torch.arange(n)[None], Mask(causal=True), NoPositions(DIM, n_heads=2, head_dim=8, max_seq_len=8, causal=True))


def test_deepnorm_constants_match_the_paper():
    assert deepnorm_constants(Depth("decoder", 0, 12)) == pytest.approx(((2 * 12) ** 0.25, (8 * 12) ** -0.25))
    assert deepnorm_constants(Depth("encoder", 12, 0)) == pytest.approx(((2 * 12) ** 0.25, (8 * 12) ** -0.25))
    n, m = 6, 4
    assert deepnorm_constants(Depth("encoder", n, m)) == pytest.approx(
        (0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16))
    )
    assert deepnorm_constants(Depth("decoder", n, m)) == pytest.approx(((3 * m) ** 0.25, (12 * m) ** -0.25))


def test_deepnorm_init_scales_value_output_and_ffn_by_beta():
    b = block(DeepNorm, Depth("decoder", 0, 100))
    b.post_init()
    beta = (8 * 100) ** -0.25
    xavier = lambda w: math.sqrt(2 / sum(w.shape))  # noqa: E731
    for w, gain in [(b.attn.v_proj.weight, beta), (b.ffn.up_proj.weight, beta), (b.attn.q_proj.weight, 1.0)]:
        assert w.std().item() == pytest.approx(gain * xavier(w), rel=0.15)


@pytest.mark.parametrize(
    "cls, formula",
    [
        (PreNorm, lambda b, x, f, g: (lambda h: h + g(b.norms[1](h)))(x + f(b.norms[0](x)))),
        (PostNorm, lambda b, x, f, g: (lambda h: b.norms[1](h + g(h)))(b.norms[0](x + f(x)))),
        (SandwichNorm, lambda b, x, f, g: (lambda h: h + b.norms[3](g(b.norms[2](h))))(x + b.norms[1](f(b.norms[0](x))))),
        (ReorderedNorm, lambda b, x, f, g: (lambda h: h + b.norms[1](g(h)))(x + b.norms[0](f(x)))),
        (DeepNorm, lambda b, x, f, g: (lambda h: b.norms[1](b.alpha * h + g(h)))(b.norms[0](b.alpha * x + f(x)))),
        (Parallel, lambda b, x, f, g: x + f(b.norms[0](x)) + g(b.norms[0](x))),
    ],
)
def test_wiring_formulas(cls, formula):
    b = block(cls)
    with torch.no_grad():
        for norm in b.norms:
            norm.weight.uniform_(0.5, 1.5)
    x, c = torch.randn(2, 5, DIM), ctx(5)
    expected = formula(b, x, lambda h: b.attn(h, c), b.ffn)
    torch.testing.assert_close(b(x, c), expected)


def test_parallel_has_one_norm_and_refuses_cross_attention():
    from zoo.errors import ConfigError

    assert len(block(Parallel).norms) == 1
    with pytest.raises(ConfigError, match="model/residual"):
        Parallel(DIM, attn=Attention(DIM, n_heads=2, head_dim=8), ffn=SwiGLU(DIM), norm=LayerNorm,
                 cross_attn=Attention(DIM, n_heads=2, head_dim=8), depth=Depth("decoder", 2, 2))
