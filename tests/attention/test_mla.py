"""Multi-head latent attention: the paper's equations, a cache of latents, its absorbed form, soft-capped
scores, and its cost."""

import math
from functools import partial

import pytest
import torch

from zoo.arch import CausalLM
from zoo.attention import Attention, Context, Mask, MultiHeadLatentAttention
from zoo.attention.cache import KVCache, cache_nbytes, prepare_cache
from zoo.errors import ConfigError
from zoo.ffn import SwiGLU
from zoo.generation.static import StaticDecoder
from zoo.init import NormalInit
from zoo.norm import RMSNorm
from zoo.pos import ALiBi, RoPE
from zoo.residual import PreNorm
from zoo.testing import build_tiny, check_causal, check_contract

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


def test_its_flops_count_each_width_of_its_own_in_the_form_it_runs():
    attn = latent_attention()
    lm = model(partial(MultiHeadLatentAttention, n_heads=HEADS, head_dim=ROPE, nope_head_dim=NOPE, v_head_dim=V, kv_rank=KV_RANK))
    expanded_pair = 2 * HEADS * (NOPE + ROPE) + 2 * HEADS * V
    absorbed_pair = 2 * HEADS * (KV_RANK + ROPE) * 2  # its values are whole keys, rotary channels included
    reprojected = 2 * KV_RANK * HEADS * (NOPE + V)  # one cached latent up-projected into keys and values
    # a whole sequence: expanded (2 * KV_RANK > NOPE + V), its up-projections counted with the weights
    assert lm.flops(seq_len=16).attn_scores == 2 * 16 * 16 * expanded_pair
    assert attn.score_flops(16, 16) == 16 * 16 * expanded_pair
    # one query over 100 keys: absorbed, where expanded would up-project the 99 cached latents again
    assert attn.flops(1, 100, absorbed=False) == 100 * expanded_pair + 99 * reprojected
    assert attn.score_flops(1, 100) == attn.flops(1, 100, absorbed=True) == 100 * absorbed_pair
    assert latent_attention(absorb=False).score_flops(1, 100) == 100 * expanded_pair + 99 * reprojected
    assert latent_attention(window=4).score_flops(1, 100) == 4 * absorbed_pair  # its ring holds 4 keys


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


# -- the absorbed form (section 2.1.2): the same function, a cheaper decoding step -----------------


def context_at(start: int, n: int, pos: str = "rope") -> Context:
    scheme = (RoPE if pos == "rope" else ALiBi)(DIM, n_heads=HEADS, head_dim=ROPE, max_seq_len=64, causal=True)
    return Context(torch.arange(start, start + n)[None], Mask(causal=True), scheme)


def both_forms(**kw) -> dict:
    """The expanded and the absorbed form with the same weights, in float64: they differ by rounding only."""
    torch.manual_seed(0)
    forms = {absorb: latent_attention(absorb=absorb, **kw).double() for absorb in (False, True)}
    for p in forms[False].parameters():
        torch.nn.init.normal_(p, mean=0.2, std=0.3)
    forms[True].load_state_dict(forms[False].state_dict())
    return forms


FORM_CASES = [  # kernel, position scheme, window, softcap
    ("eager", "rope", None, None),
    ("sdpa", "rope", None, None),
    ("sdpa", "alibi", None, None),  # a score bias per head
    ("local", "rope", 3, None),
    ("eager", "rope", 3, 0.5),
]


@pytest.mark.parametrize("kernel,pos,window,softcap", FORM_CASES)
@torch.no_grad()
def test_the_absorbed_form_computes_the_expanded_form(kernel, pos, window, softcap):
    forms = both_forms(kernel=kernel, window=window, softcap=softcap)
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    expanded, absorbed = (forms[a](x, context_at(0, 9, pos)) for a in (False, True))
    torch.testing.assert_close(absorbed, expanded, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(expanded, latent_attention(kernel=kernel, window=window).double()(x, context_at(0, 9, pos)))


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("absorb", [False, True, "auto"])
@torch.no_grad()
def test_cached_steps_of_either_form_equal_a_full_forward(absorb, window):
    """A prefill, single steps and a step of 3 tokens (past the window's ring) against one full forward."""
    forms = both_forms(window=window)
    attn = forms[False]
    attn.absorb = absorb
    x = torch.randn(2, 12, DIM, dtype=torch.float64)
    full = attn(x, context_at(0, 12))
    cache, start, out = KVCache(window=window), 0, []
    for n in [5, 1, 1, 3, 1, 1]:
        out.append(attn(x[:, start : start + n], context_at(start, n), cache))
        start += n
    torch.testing.assert_close(torch.cat(out, dim=1), full, atol=1e-12, rtol=1e-10)


def spy_forms(lm: CausalLM) -> list[tuple[str, int]]:
    """Record, in every layer, which form each call runs and with how many queries."""
    calls = []

    def spied(form: str, run):
        def call(q_nope, *args, **kw):
            calls.append((form, q_nope.shape[1]))
            return run(q_nope, *args, **kw)

        return call

    for layer in lm.stack.layers:
        for form in ("expanded", "absorbed"):
            setattr(layer.attn, form, spied(form, getattr(layer.attn, form)))
    return calls


def greedy(lm: CausalLM, prompts: list[list[int]], n: int, **static) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens ``(b, n)`` and the logits that chose them, with the cache (``static``: StaticDecoder's)."""
    with torch.inference_mode():
        session = lm.open_session(prompts, pad_id=0, room=n)
        logits = session.feed(session.prompt)[:, -1]
        step = StaticDecoder(session, room=n - 1, **static) if static else session
        tokens, seen = [], []
        for t in range(n):
            tokens.append(logits.argmax(-1))
            seen.append(logits)
            if t + 1 < n:
                logits = step.feed(tokens[-1][:, None])[:, -1]
        return torch.stack(tokens, 1), torch.stack(seen, 1)


PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3]]


@torch.no_grad()
def test_decoding_runs_the_absorbed_form_and_greedy_tokens_equal_full_forwards():
    lm = model(partial(MultiHeadLatentAttention, kv_rank=KV_RANK, q_rank=Q_RANK, nope_head_dim=NOPE, v_head_dim=V))
    calls = spy_forms(lm)
    tokens, logits = greedy(lm, PROMPTS, 8)
    assert calls[:2] == [("expanded", 7)] * 2  # the prompt: a whole sequence at once
    assert set(calls[2:]) == {("absorbed", 1)}  # each new token against the cache
    calls.clear()
    for i, prompt in enumerate(PROMPTS):
        seq = prompt + tokens[i, :-1].tolist()
        full = lm(torch.tensor([seq]))[0, len(prompt) - 1 :]  # no cache: the expanded form only
        assert set(calls) == {("expanded", len(seq))}
        assert torch.equal(full.argmax(-1), tokens[i])
        torch.testing.assert_close(logits[i], full, atol=1e-5, rtol=1e-4)
        calls.clear()


def test_static_cache_steps_give_the_eager_tokens_and_logits():
    lm = model(partial(MultiHeadLatentAttention, kv_rank=KV_RANK, window=4))
    want, want_logits = greedy(lm, PROMPTS, 8)  # the window's ring wraps
    got, got_logits = greedy(lm, PROMPTS, 8, compiled=False)
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits)


@pytest.mark.slow
def test_compiled_static_steps_trace_once():
    """Traced by dynamo (backend ``eager``, ~10 s here): the form is chosen from shapes, which a static cache keeps."""
    from torch._dynamo.utils import counters

    lm = model(partial(MultiHeadLatentAttention, kv_rank=KV_RANK))
    want, want_logits = greedy(lm, PROMPTS, 6)
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        got, got_logits = greedy(lm, PROMPTS, 6, backend="eager")
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.equal(got, want)
    torch.testing.assert_close(got_logits, want_logits)


def test_the_cost_report_counts_the_cache_it_holds():
    lm = model(partial(MultiHeadLatentAttention, kv_rank=KV_RANK))
    with torch.no_grad():
        cache = prepare_cache(lm.new_cache(), max_len=20)
        lm(torch.randint(0, 50, (1, 20)), cache=cache)
    assert sum(row["kv_cache_bytes"] for row in lm.layer_costs(seq_len=20)) == cache_nbytes(cache)


def test_a_bad_absorb_is_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"model.attention.absorb='yes': auto .*, true or false"):
        latent_attention(absorb="yes")


# -- soft-capped scores ----------------------------------------------------------------------------


@torch.no_grad()
def test_a_large_cap_changes_nothing_and_a_small_one_changes_the_output():
    x, ctx = torch.randn(2, 9, DIM), context(9)
    plain = latent_attention(kernel="eager")
    outputs = {}
    for cap in (1e6, 0.05):
        capped = latent_attention(softcap=cap)  # auto: a kernel that caps
        capped.load_state_dict(plain.state_dict())
        outputs[cap] = capped(x, ctx)
    torch.testing.assert_close(outputs[1e6], plain(x, ctx))
    assert (outputs[0.05] - plain(x, ctx)).abs().max() > 1e-2


def test_kernels_that_cannot_cap_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"model.attention.kernel='sdpa': sdpa cannot soft-cap .*softcap=2.0.*eager or flex") as error:
        latent_attention(kernel="sdpa", softcap=2.0)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"model.attention.softcap=0.0: a positive cap"):
        latent_attention(softcap=0.0)


@pytest.mark.parametrize("absorb", ["auto", "true"])
def test_capped_scores_see_no_future_token(absorb):
    """With a cap small enough to change every score, in either form over a whole sequence."""
    check_causal(build_tiny(["model/attention=mla", "model.attention.softcap=0.5", f"model.attention.absorb={absorb}"]).eval())
