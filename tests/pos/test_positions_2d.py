"""GLM's 2D positions (model/pos=learned_2d, rope_2d): each held to written-out equations, and a model given
``positions (b, n, 2)`` (what objective=blank_infilling passes)."""

import math

import pytest
import torch

from zoo.errors import ConfigError
from zoo.pos import Learned2DPositions, RoPE2D
from zoo.testing import build_tiny

SIZES = dict(n_heads=4, head_dim=16, max_seq_len=32, causal=True)


def ids(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (b, n, 2), generator=g)


def test_learned_2d_sums_two_tables():
    pos = Learned2DPositions(8, **SIZES)
    x, p = torch.randn(2, 5, 8), ids(2, 5)
    expected = torch.stack([torch.stack([x[i, t] + pos.weight[p[i, t, 0]] + pos.span_weight[p[i, t, 1]] for t in range(5)]) for i in range(2)])
    torch.testing.assert_close(pos.embed(x, p), expected)
    # one position per token: intra-span id 0
    torch.testing.assert_close(pos.embed(x, p[..., 0]), pos.embed(x, torch.stack([p[..., 0], torch.zeros_like(p[..., 0])], -1)))
    with pytest.raises(ValueError, match="at most 32 positions"):
        pos.embed(x, torch.full((2, 5, 2), 32))


def reference_rope_2d(x: torch.Tensor, p: torch.Tensor, *, theta: float, rot_dim: int) -> torch.Tensor:
    """GLM-130B's 2D RoPE written out channel by channel: the first ``rot_dim / 2`` channels are a RoPE of
    that width on the position id, the next ``rot_dim / 2`` one on the intra-span id; each pairs channel
    ``j`` with ``j + rot_dim / 4`` of its half at angle ``id * theta ** (-2 j / (rot_dim / 2))``."""
    out = x.clone()
    half, quarter = rot_dim // 2, rot_dim // 4
    b, n, h, _ = x.shape
    for i in range(b):
        for t in range(n):
            for which in range(2):
                for j in range(quarter):
                    angle = float(p[i, t, which]) * theta ** (-2 * j / half)
                    c, s = math.cos(angle), math.sin(angle)
                    a, bb = which * half + j, which * half + j + quarter
                    out[i, t, :, a] = x[i, t, :, a] * c - x[i, t, :, bb] * s
                    out[i, t, :, bb] = x[i, t, :, bb] * c + x[i, t, :, a] * s
    return out


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_2d_matches_the_equations(fraction):
    rope = RoPE2D(64, **SIZES, theta=100.0, fraction=fraction)
    x, p = torch.randn(2, 5, 4, 16), ids(2, 5)
    expected = reference_rope_2d(x, p, theta=100.0, rot_dim=int(16 * fraction))
    torch.testing.assert_close(rope.rotate(x, p), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope.rotate(x, p, rope.rotation(p)), expected, atol=1e-5, rtol=1e-5)


def test_rope_2d_scores_depend_on_both_offsets_only():
    rope = RoPE2D(64, **SIZES)
    q, k = torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)

    def score(qp, kp):
        return (rope.rotate(q, torch.tensor([[qp]])) * rope.rotate(k, torch.tensor([[kp]]))).sum(-1)

    torch.testing.assert_close(score((5, 2), (3, 1)), score((12, 7), (10, 6)))
    assert not torch.allclose(score((5, 2), (3, 1)), score((5, 3), (3, 1)))
    assert not torch.allclose(score((5, 2), (3, 1)), score((6, 2), (3, 1)))
    # one position per token turns only the position id's half
    x = torch.randn(2, 5, 4, 16)
    flat = torch.arange(5)[None].expand(2, 5)
    torch.testing.assert_close(rope.rotate(x, flat), rope.rotate(x, torch.stack([flat, torch.zeros_like(flat)], -1)))
    torch.testing.assert_close(rope.rotate(x, flat)[..., 8:], x[..., 8:])


def test_rope_2d_needs_a_multiple_of_4_channels():
    with pytest.raises(ConfigError, match=r"^model.pos.fraction=0.375: 2D RoPE .* multiple of 4$"):
        RoPE2D(64, **SIZES, fraction=0.375)  # 6 channels: three pairs, not two halves of pairs


@pytest.mark.parametrize("pos", ["learned_2d", "rope_2d"])
def test_a_model_reads_one_position_as_intra_span_id_0(pos):
    model = build_tiny(["model=prefix", f"model/pos={pos}"]).eval()
    tokens = torch.randint(0, 61, (2, 9))
    prefix = torch.tensor([3, 9])
    flat = torch.arange(9)[None].expand(2, 9)
    with torch.no_grad():
        plain = model(tokens, prefix_len=prefix)
        two_d = model(tokens, positions=torch.stack([flat, torch.zeros_like(flat)], -1), prefix_len=prefix)
        torch.testing.assert_close(two_d, plain)
        # the intra-span ids reach the logits (ids that differ: RoPE sees only their offsets)
        moved = model(tokens, positions=torch.stack([flat, flat % 3], -1), prefix_len=prefix)
        assert not torch.allclose(moved, plain, atol=1e-5)


def test_2d_positions_need_a_2d_scheme():
    model = build_tiny(["model=prefix", "model/pos=alibi"])
    with pytest.raises(ConfigError, match=r"^model/pos='ALiBi': encodes one position per token"):
        model(torch.zeros(1, 4, dtype=torch.long), positions=torch.zeros(1, 4, 2, dtype=torch.long), prefix_len=torch.tensor([2]))
