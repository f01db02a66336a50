import math

import pytest
import torch

from zoo.errors import ConfigError
from zoo.pos import ALiBi, LearnedPositions, RoPE, SinusoidalPositions, T5RelativeBias, alibi_slopes
from zoo.pos.t5 import relative_buckets

SIZES = dict(n_heads=4, head_dim=16, max_seq_len=32, causal=True)


def test_rope_scores_depend_only_on_relative_offset():
    rope = RoPE(64, **SIZES)
    q, k = torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)

    def score(i, j):
        qi = rope.rotate(q, torch.tensor([[i]]))
        kj = rope.rotate(k, torch.tensor([[j]]))
        return (qi * kj).sum(-1)

    torch.testing.assert_close(score(5, 2), score(13, 10))
    torch.testing.assert_close(score(0, 0), score(100, 100))
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rope_preserves_norm_and_position_zero_is_identity():
    rope = RoPE(64, **SIZES)
    x = torch.randn(2, 7, 4, 16)
    pos = torch.arange(7)[None].expand(2, 7)
    torch.testing.assert_close(rope.rotate(x, pos).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rope.rotate(x, torch.zeros(2, 7, dtype=torch.long)), x)


def test_rope_without_autograd_rotates_as_with_it():
    """Inference writes both halves into one buffer; the rotation is the differentiable one's."""
    rope = RoPE(64, **SIZES)
    x = torch.randn(2, 7, 64).view(2, 7, 4, 16)  # the projection's layout, as attention passes it
    pos = torch.arange(3, 10)[None].expand(2, 7)
    with torch.no_grad():
        fast = rope.rotate(x, pos)
    slow = rope.rotate(x.clone().requires_grad_(), pos)
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach())


def test_partial_rope_leaves_the_rest_untouched():
    rope = RoPE(64, **SIZES, fraction=0.25)
    x = torch.randn(1, 5, 4, 16)
    y = rope.rotate(x, torch.arange(5)[None])
    torch.testing.assert_close(y[..., 4:], x[..., 4:])
    assert not torch.allclose(y[..., :4], x[..., :4])


def test_rope_rejects_odd_rotary_dim():
    with pytest.raises(ConfigError, match="model.pos.fraction"):
        RoPE(60, n_heads=4, head_dim=15, max_seq_len=8, causal=True)


def test_alibi_slopes_match_the_paper():
    # Press et al. 2021: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    # 12 heads: the 8-head sequence, then every other slope of the 16-head sequence.
    sixteen = [2 ** (-0.5 * i) for i in range(1, 17)]
    expected = [2.0**-i for i in range(1, 9)] + sixteen[0::2][:4]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = ALiBi(64, **SIZES)
    bias = alibi.bias(torch.arange(4)[None], torch.arange(4)[None])
    assert bias.shape == (1, 4, 4, 4)
    torch.testing.assert_close(bias[0, 1, 3, 0], -alibi_slopes(4)[1] * 3)
    torch.testing.assert_close(bias[0, :, 2, 2], torch.zeros(4))


def test_t5_buckets():
    rel = torch.arange(-200, 201)
    causal = relative_buckets(rel, bidirectional=False, n_buckets=32, max_distance=128)
    assert (causal[rel > 0] == 0).all()  # future keys share bucket 0 in a causal stack
    assert causal[rel == -5].item() == 5  # small offsets are exact
    assert causal[rel == -200].item() == 31  # past max_distance: the last bucket
    assert (causal[:-1] >= causal[1:]).all() or (causal.diff() <= 0).all()
    both = relative_buckets(rel, bidirectional=True, n_buckets=32, max_distance=128)
    assert both[rel == 3].item() == 16 + 3 and both[rel == -3].item() == 3
    assert both.max().item() == 31


def test_t5_bias_shape():
    t5 = T5RelativeBias(64, **SIZES)
    assert t5.bias(torch.arange(5)[None], torch.arange(7)[None]).shape == (1, 4, 5, 7)


def test_learned_positions_refuse_past_max_length():
    pos = LearnedPositions(8, n_heads=2, head_dim=4, max_seq_len=4, causal=True)
    pos.embed(torch.zeros(1, 4, 8), torch.arange(4)[None])
    with pytest.raises(ValueError, match="at most 4 positions"):
        pos.embed(torch.zeros(1, 5, 8), torch.arange(5)[None])


def test_sinusoidal_first_row():
    pos = SinusoidalPositions(8, n_heads=2, head_dim=4, max_seq_len=4, causal=True)
    table = pos.embed(torch.zeros(1, 3, 8), torch.arange(3)[None])[0]
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(table[2, 0], torch.tensor(math.sin(2.0)))
