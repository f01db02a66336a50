"""Multi-head latent attention: the paper's equations, a cache of latents, and its cost."""

import math
from functools import partial

import pytest
import torch

from zoo.arch import CausalLM
from zoo.attention import Attention, Context, Mask, MultiHeadLatentAttention
from zoo.attention.cache import cache_nbytes, prepare_cache
from zoo.ffn import SwiGLU
from zoo.init import NormalInit
from zoo.norm import RMSNorm
from zoo.pos import RoPE
from zoo.residual import PreNorm
from zoo.testing import check_contract

DIM, HEADS, ROPE, NOPE, V, KV_RANK, Q_RANK = 32, 4, 8, 6, 5, 12, 10


def rotate_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoPE written as complex multiplication of channel ``i`` with channel ``i + d/2``: ``(b, n, h, d)``."""
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    turn = torch.polar(torch.ones(()), (positions[:, None].double() * freq).float())  # (n, d/2)
    z = torch.complex(x[..., :half], x[..., half:]) * turn[None, :, None]
    return torch.cat([z.real, z.imag], dim=-1)


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference(attn: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V2's equations (arXiv:2405.04434, eqs. 9-19) with the module's weights, causal, from scratch."""
    b, n, _ = x.shape
    pos = torch.arange(n)
    c_q = rms(x @ attn.q_a_proj.weight.T, attn.q_a_norm.weight)  # eq. 12
    q = (c_q @ attn.q_b_proj.weight.T).view(b, n, HEADS, NOPE + ROPE)
    q_c, q_r = q[..., :NOPE], rotate_pairs(q[..., NOPE:], pos)  # eqs. 13-14
    down = x @ attn.kv_a_proj.weight.T
    c_kv = rms(down[..., :KV_RANK], attn.kv_a_norm.weight)  # eq. 9: the cached latent
    k_r = rotate_pairs(down[..., None, KV_RANK:], pos)  # eq. 15: one rotary key for every head
    kv = (c_kv @ attn.kv_b_proj.weight.T).view(b, n, HEADS, NOPE + V)
    k_c, v = kv[..., :NOPE], kv[..., NOPE:]  # eqs. 10-11
    q = torch.cat([q_c, q_r], -1)  # eq. 16
    k = torch.cat([k_c, k_r.expand(b, n, HEADS, ROPE)], -1)  # eq. 17
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(NOPE + ROPE)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v)  # eq. 18
    return out.reshape(b, n, HEADS * V) @ attn.o_proj.weight.T  # eq. 19


def latent_attention(**kw) -> MultiHeadLatentAttention:
    sizes = dict(n_heads=HEADS, head_dim=ROPE, nope_head_dim=NOPE, v_head_dim=V, kv_rank=KV_RANK, q_rank=Q_RANK)
    return MultiHeadLatentAttention(DIM, **(sizes | kw))


def context(n: int) -> Context:
    pos = RoPE(DIM, n_heads=HEADS, head_dim=ROPE, max_seq_len=64, causal=True)
    return Context(torch.arange(n)[None], Mask(causal=True), pos)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_latent_attention_follows_the_papers_equations(kernel):
    torch.manual_seed(0)
    attn, x = latent_attention(kernel=kernel), torch.randn(2, 9, DIM)
    for p in attn.parameters():  # norm weights away from 1, so that a missing norm weight shows
        torch.nn.init.normal_(p, mean=0.5, std=0.3)
    torch.testing.assert_close(attn(x, context(9)), reference(attn, x), atol=1e-5, rtol=1e-4)


def model(attention) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(
        vocab_size=50, dim=DIM, n_layers=2, n_heads=HEADS, head_dim=ROPE, max_seq_len=64, attention=attention,
        ffn=SwiGLU, norm=RMSNorm, residual=PreNorm, pos=RoPE, init=NormalInit(std=0.1),
    ).eval()


@torch.no_grad()
def test_the_cache_holds_the_latent_and_the_rotary_key_not_keys_and_values():
    tokens = torch.randint(0, 50, (2, 20))
    nbytes = {}
    for name, attention in {"mla": partial(MultiHeadLatentAttention, kv_rank=KV_RANK), "mha": Attention}.items():
        lm = model(attention)
        cache = prepare_cache(lm.new_cache(), max_len=20)
        lm(tokens, cache=cache)
        nbytes[name] = cache_nbytes(cache)
    # 2 layers, batch 2, 20 tokens, fp32: a latent of KV_RANK and one rotary key of ROPE channels per token
    assert nbytes["mla"] == 2 * 2 * 20 * (KV_RANK + ROPE) * 4
    assert nbytes["mha"] == 2 * 2 * 20 * 2 * HEADS * ROPE * 4


def test_its_flops_count_each_width_of_its_own():
    attn = latent_attention()
    lm = model(partial(MultiHeadLatentAttention, n_heads=HEADS, head_dim=ROPE, nope_head_dim=NOPE, v_head_dim=V, kv_rank=KV_RANK))
    per_pair = 2 * HEADS * (NOPE + ROPE) + 2 * HEADS * V
    assert attn.flops_per_pair() == per_pair
    assert lm.flops(seq_len=16).attn_scores == 2 * 16 * 16 * per_pair


def test_bad_sizes_are_refused_with_the_key():
    with pytest.raises(Exception, match="model.attention.kv_rank"):
        latent_attention(kv_rank=0)


def test_compressed_queries_pass_the_contract():
    check_contract(["model/attention=mla", "model.attention.q_rank=16", "model.attention.v_head_dim=4"])


def deinterleaved(w: torch.Tensor, rows: slice) -> torch.Tensor:
    """``w`` with rows ``rows`` reordered from pairs ``(2i, 2i+1)`` to halves ``(i, i + d/2)``."""
    w = w.clone()
    part = w[rows]
    w[rows] = torch.cat([part[0::2], part[1::2]])
    return w


@pytest.mark.parametrize("interleaved", [False, True])
@torch.no_grad()
def test_latent_attention_equals_transformers_deepseek_v3_attention(interleaved):
    """An independent implementation: transformers' ``DeepseekV3Attention`` with the same weights
    (its interleaved rotary channels are the half-split ones after a row permutation)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds

    config = transformers.DeepseekV3Config(
        hidden_size=DIM, num_attention_heads=HEADS, num_key_value_heads=HEADS, q_lora_rank=Q_RANK, kv_lora_rank=KV_RANK,
        qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=V, rope_interleave=interleaved, rms_norm_eps=1e-6,
        max_position_embeddings=64, attn_implementation="eager",
    )
    torch.manual_seed(0)
    theirs = ds.DeepseekV3Attention(config, layer_idx=0).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, mean=0.3, std=0.3)
    ours = latent_attention(kernel="eager")
    weights = {name.replace("kv_a_proj_with_mqa", "kv_a_proj").replace("layernorm", "norm"): w for name, w in theirs.state_dict().items()}
    if interleaved:
        q_b = weights["q_b_proj.weight"].view(HEADS, NOPE + ROPE, Q_RANK)
        weights["q_b_proj.weight"] = torch.stack([deinterleaved(h, slice(NOPE, None)) for h in q_b]).view(-1, Q_RANK)
        weights["kv_a_proj.weight"] = deinterleaved(weights["kv_a_proj.weight"], slice(KV_RANK, None))
    ours.load_state_dict(weights)
    x, n = torch.randn(2, 9, DIM), 9
    cos_sin = ds.DeepseekV3RotaryEmbedding(config)(x, torch.arange(n)[None])
    causal = torch.zeros(n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))[None, None]
    expected, _ = theirs(x, cos_sin, causal)
    torch.testing.assert_close(ours(x, context(n)), expected, atol=1e-5, rtol=1e-4)
