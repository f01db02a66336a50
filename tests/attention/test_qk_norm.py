"""QK-norm: attention with it no longer depends on the scale of the query and key projections."""

import functools

import pytest
import torch

from zoo.attention import Attention, Context, Mask, QKNorm, QKNormAcrossHeads
from zoo.pos import RoPE

DIM, HEADS, KV_HEADS, HEAD_DIM = 32, 4, 2, 8


def attention(norm) -> Attention:
    torch.manual_seed(0)
    return Attention(DIM, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, kernel="eager", qk_norm=functools.partial(norm, eps=1e-6))


def run(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    pos = RoPE(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=16, causal=True)
    return attn(x, Context(torch.arange(x.shape[1])[None], Mask(causal=True), pos))


@pytest.mark.parametrize("norm", [QKNorm, QKNormAcrossHeads])
def test_scaling_the_query_and_key_projections_changes_nothing(norm):
    attn, x = attention(norm), torch.randn(2, 10, DIM)
    before = run(attn, x)
    with torch.no_grad():
        attn.q_proj.weight.mul_(100.0)
        attn.k_proj.weight.mul_(10.0)
    torch.testing.assert_close(run(attn, x), before, atol=1e-5, rtol=1e-4)
    plain = Attention(DIM, n_heads=HEADS, n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, kernel="eager")
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "qk_norm" not in k})
    assert not torch.allclose(run(plain, x), before, atol=1e-3), "the scaled projections must matter without QK-norm"


def test_per_head_norms_each_head_and_across_heads_norms_the_whole_projection():
    q, k = torch.randn(2, 5, HEADS, HEAD_DIM) * torch.arange(1, HEADS + 1)[:, None], torch.randn(2, 5, KV_HEADS, HEAD_DIM)
    rms = lambda t, dims: t.pow(2).mean(dims).sqrt()  # noqa: E731
    per_head_q, _ = QKNorm(HEAD_DIM, n_heads=HEADS, n_kv_heads=KV_HEADS)(q, k)
    across_q, across_k = QKNormAcrossHeads(HEAD_DIM, n_heads=HEADS, n_kv_heads=KV_HEADS)(q, k)
    torch.testing.assert_close(rms(per_head_q, -1), torch.ones(2, 5, HEADS), atol=1e-4, rtol=0)
    torch.testing.assert_close(rms(across_q, (-2, -1)), torch.ones(2, 5), atol=1e-4, rtol=0)
    assert rms(across_q, -1).std() > 0.1, "heads of different scale keep their ratio when normed together"
    assert across_k.shape == k.shape
