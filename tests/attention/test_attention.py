"""Properties of the attention module: head grouping, windows, and parity with torch's MultiheadAttention."""

import pytest
import torch
from einops import rearrange

from zoo.attention import Attention, Context, Mask
from zoo.pos import NoPositions, Positions

DIM, HEADS, HEAD_DIM = 32, 4, 8


def context(n, *, causal=True, pos_cls=NoPositions, **mask):
    pos = pos_cls(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=64, causal=causal)
    return Context(positions=torch.arange(n)[None], mask=Mask(causal=causal, **mask), pos=pos)


def grouped_copy(src: Attention, n_kv_heads: int) -> Attention:
    """An attention with more KV heads whose extra heads repeat ``src``'s (same function)."""
    dst = Attention(DIM, n_heads=HEADS, head_dim=HEAD_DIM, n_kv_heads=n_kv_heads, kernel=src.kernel)
    repeat = n_kv_heads // src.n_kv_heads
    with torch.no_grad():
        dst.q_proj.weight.copy_(src.q_proj.weight)
        dst.o_proj.weight.copy_(src.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = rearrange(getattr(src, name).weight, "(k d) c -> k d c", d=HEAD_DIM)
            getattr(dst, name).weight.copy_(rearrange(w.repeat_interleave(repeat, 0), "k d c -> (k d) c"))
    return dst


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_mha_equals_torch_multihead_attention(kernel):
    torch.manual_seed(0)
    ours = Attention(DIM, n_heads=HEADS, head_dim=HEAD_DIM, n_kv_heads=HEADS, bias=True, kernel=kernel)
    ref = torch.nn.MultiheadAttention(DIM, HEADS, bias=True, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        ref.out_proj.bias.copy_(ours.o_proj.bias)
    x = torch.randn(2, 9, DIM)
    causal = torch.ones(9, 9, dtype=torch.bool).triu(1)
    expected, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(ours(x, context(9)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_mqa_is_gqa_with_one_kv_head_and_gqa_is_mha_with_repeated_heads(kernel):
    torch.manual_seed(0)
    mqa = Attention(DIM, n_heads=HEADS, head_dim=HEAD_DIM, n_kv_heads=1, kernel=kernel)
    gqa, mha = grouped_copy(mqa, 2), grouped_copy(mqa, HEADS)
    x, ctx = torch.randn(2, 7, DIM), context(7)
    torch.testing.assert_close(gqa(x, ctx), mqa(x, ctx), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mha(x, ctx), mqa(x, ctx), atol=1e-6, rtol=1e-5)


def test_kv_projections_shrink_with_kv_heads():
    sizes = [Attention(DIM, n_heads=HEADS, head_dim=HEAD_DIM, n_kv_heads=k).k_proj.out_features for k in (4, 2, 1)]
    assert sizes == [32, 16, 8]


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_sees_exactly_the_window(kernel, causal):
    torch.manual_seed(0)
    window, n = 3, 10
    attn = Attention(DIM, n_heads=HEADS, head_dim=HEAD_DIM, window=window, kernel=kernel)
    x = torch.randn(1, n, DIM, requires_grad=True)
    out = attn(x, context(n, causal=causal, pos_cls=Positions))
    for t in range(n):
        (grad,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        seen = {s for s in range(n) if grad[0, s].abs().sum() > 0}
        lo, hi = t - window + 1, (t if causal else t + window - 1)
        assert seen == set(range(max(lo, 0), min(hi, n - 1) + 1)), f"query {t} sees {sorted(seen)}"


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_padding_keys_are_ignored(kernel):
    torch.manual_seed(0)
    attn = Attention(DIM, n_heads=HEADS, head_dim=HEAD_DIM, kernel=kernel)
    x = torch.randn(1, 6, DIM)
    valid = torch.tensor([[False, False, True, True, True, True]])
    ctx = context(6, causal=False, pos_cls=Positions, key_valid=valid)
    padded = attn(x, ctx)
    alone = attn(x[:, 2:], context(4, causal=False, pos_cls=Positions))
    torch.testing.assert_close(padded[:, 2:], alone, atol=1e-6, rtol=1e-5)
