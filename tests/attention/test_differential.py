"""Differential attention: the paper's equations, lambda_init by depth, and its cost."""

import math
from functools import partial

import pytest
import torch

from zoo.arch import CausalLM
from zoo.attention import Context, DifferentialAttention, Mask
from zoo.errors import ConfigError
from zoo.ffn import SwiGLU
from zoo.init import NormalInit
from zoo.norm import RMSNorm
from zoo.pos import ALiBi, RoPE
from zoo.residual import PreNorm
from zoo.testing import build_tiny, check_causal

DIM, HEADS, KV_HEADS, HEAD_DIM = 32, 8, 4, 4


def rotate_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoPE written as complex multiplication of channel ``i`` with channel ``i + d/2``: ``(b, n, h, d)``."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    turn = torch.polar(torch.ones(()), (positions[:, None].double() * freq).float())
    z = torch.complex(x[..., :half], x[..., half:]) * turn[None, :, None]
    return torch.cat([z.real, z.imag], dim=-1)


def reference(attn: DifferentialAttention, x: torch.Tensor, slopes: torch.Tensor | None = None, cap: float | None = None) -> torch.Tensor:
    """Eqs. 1-3 of arXiv:2410.05258 head by head, causal, from the module's weights; ``slopes``: ALiBi
    per query map instead of RoPE; ``cap``: each map's scaled scores soft-capped (Gemma 2)."""
    b, n, _ = x.shape
    pos = torch.arange(n)
    q = (x @ attn.q_proj.weight.T).view(b, n, HEADS, HEAD_DIM)
    k = (x @ attn.k_proj.weight.T).view(b, n, KV_HEADS, HEAD_DIM)
    v = (x @ attn.v_proj.weight.T).view(b, n, KV_HEADS // 2, 2 * HEAD_DIM)
    if slopes is None:
        q, k = rotate_pairs(q, pos), rotate_pairs(k, pos)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    distance = (pos[:, None] - pos[None, :]).abs().float()
    lam = (
        torch.exp(attn.lambda_q1 @ attn.lambda_k1) - torch.exp(attn.lambda_q2 @ attn.lambda_k2) + attn.lambda_init
    )  # eq. 2
    heads = []
    for i in range(HEADS // 2):
        j = i // (HEADS // KV_HEADS)  # the KV head this head's group shares
        maps = []
        for t in range(2):
            scores = q[:, :, 2 * i + t] @ k[:, :, 2 * j + t].transpose(1, 2) / math.sqrt(HEAD_DIM)
            if cap is not None:
                scores = cap * torch.tanh(scores / cap)
            if slopes is not None:
                scores = scores - slopes[2 * i + t] * distance
            maps.append(scores.masked_fill(future, float("-inf")).softmax(-1))
        out = (maps[0] - lam * maps[1]) @ v[:, :, j]  # eq. 1
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.head_norm.weight
        heads.append(out * (1 - attn.lambda_init))  # eq. 3
    return torch.cat(heads, dim=-1) @ attn.o_proj.weight.T


def differential(**kw) -> DifferentialAttention:
    torch.manual_seed(0)
    attn = DifferentialAttention(DIM, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, **kw)
    with torch.no_grad():
        attn.head_norm.weight.uniform_(0.5, 1.5)  # away from 1, so that a missing norm weight shows
        attn.lambda_q1.mul_(5.0)  # lambda far from lambda_init
    return attn


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_differential_attention_follows_the_papers_equations(kernel, pos):
    attn, x = differential(kernel=kernel, lambda_init=0.5), torch.randn(2, 9, DIM)
    scheme = (RoPE if pos == "rope" else ALiBi)(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=64, causal=True)
    out = attn(x, Context(torch.arange(9)[None], Mask(causal=True), scheme))
    expected = reference(attn, x, None if pos == "rope" else scheme.slopes)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def model(n_layers: int, **kw) -> CausalLM:
    return CausalLM(
        vocab_size=50, dim=DIM, n_layers=n_layers, n_heads=HEADS, max_seq_len=64,
        attention=partial(DifferentialAttention, **kw), ffn=SwiGLU, norm=RMSNorm, residual=PreNorm, pos=RoPE,
        init=NormalInit(std=0.1),
    )


def test_lambda_init_grows_with_depth_unless_fixed():
    by_depth = [layer.attn.lambda_init for layer in model(4).stack.layers]
    assert by_depth == pytest.approx([0.8 - 0.6 * math.exp(-0.3 * i) for i in range(4)])
    assert by_depth[0] == pytest.approx(0.2) and by_depth == sorted(by_depth)
    assert [layer.attn.lambda_init for layer in model(3, lambda_init=0.8).stack.layers] == [0.8] * 3


def test_it_keeps_multi_head_attentions_parameters_and_counts_its_flops():
    attn = differential()
    mha_params = 4 * DIM * HEADS * HEAD_DIM - 2 * DIM * (HEADS - KV_HEADS) * HEAD_DIM  # q, o full; k, v by KV heads
    assert sum(p.numel() for n, p in attn.named_parameters() if n.endswith("proj.weight")) == mha_params
    assert attn.flops_per_pair() == 2 * HEADS * HEAD_DIM + 2 * HEADS * 2 * HEAD_DIM


@pytest.mark.parametrize("kw,key", [({"n_heads": 6, "n_kv_heads": 3}, "n_kv_heads"), ({"n_heads": 5, "n_kv_heads": 5}, "n_heads")])
def test_unpaired_heads_are_refused_with_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        DifferentialAttention(DIM, head_dim=HEAD_DIM, **kw)


# -- soft-capped scores: each of the two maps capped before its softmax ------------------------------


@pytest.mark.parametrize("kernel", ["eager", "auto"])
def test_each_maps_scores_are_soft_capped(kernel):
    attn, x = differential(kernel=kernel, lambda_init=0.5, softcap=0.3), torch.randn(2, 9, DIM) * 4
    scheme = RoPE(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=64, causal=True)
    out = attn(x, Context(torch.arange(9)[None], Mask(causal=True), scheme))
    torch.testing.assert_close(out, reference(attn, x, cap=0.3), atol=1e-5, rtol=1e-4)
    assert (out - reference(attn, x)).abs().max() > 1e-2  # the cap matters at this size


@torch.no_grad()
def test_a_large_cap_changes_nothing():
    x = torch.randn(2, 9, DIM)
    ctx = Context(torch.arange(9)[None], Mask(causal=True), RoPE(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=64, causal=True))
    torch.testing.assert_close(differential(softcap=1e6)(x, ctx), differential(kernel="eager")(x, ctx))


def test_kernels_that_cannot_cap_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"model.attention.kernel='local': local cannot soft-cap .*softcap=2.0.*eager or flex") as error:
        differential(kernel="local", softcap=2.0)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"model.attention.softcap=-1.0: a positive cap"):
        differential(softcap=-1.0)


def test_capped_scores_see_no_future_token():
    check_causal(build_tiny(["model/attention=differential", "model.attention.softcap=0.5"]).eval())
