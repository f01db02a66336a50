"""Recurrent mixers (retention, selective SSM): the recurrence's forms agree, the mixers decode from a
state of constant size, and each matches a reference written from its paper (or transformers' Mamba-2)."""

import math

import pytest
import torch

import zoo
from zoo.attention import Context, Mask, Retention, SelectiveSSM
from zoo.attention.cache import cache_nbytes
from zoo.attention.recurrence import chunked, parallel, scan
from zoo.errors import ConfigError
from zoo.generation import generate
from zoo.generation.static import StaticDecoder
from zoo.pos.base import NoPositions
from zoo.pos.rope import RoPE

B, N, H, D, E = 2, 11, 3, 4, 5
MIXERS = ["retention", "mamba2"]
SMALL = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=64", "model.max_seq_len=64"]


def recurrence_inputs(seed: int = 0, n: int = N, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, n, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, n, E, generator=g, dtype=dtype)
    log_decay = -torch.rand(B, H, n, generator=g, dtype=dtype)
    state = torch.randn(B, H, D, E, generator=g, dtype=dtype)
    return q, k, v, log_decay, state


def written_out(q, k, v, log_decay, state):
    """``o_i = sum_{j<=i} (a_{j+1} ... a_i) (q_i . k_j) v_j + (a_1 ... a_i) q_i S_0``, term by term."""
    a, n = log_decay.exp(), q.shape[2]
    out = torch.zeros(B, H, n, E, dtype=q.dtype)
    for i in range(n):
        out[:, :, i] = torch.einsum("bhd,bhde->bhe", q[:, :, i], state) * a[:, :, : i + 1].prod(-1)[..., None]
        for j in range(i + 1):
            decay = a[:, :, j + 1 : i + 1].prod(-1)
            out[:, :, i] += (decay * (q[:, :, i] * k[:, :, j]).sum(-1))[..., None] * v[:, :, j]
    return out


def test_scan_is_the_written_out_sum():
    q, k, v, log_decay, state = recurrence_inputs()
    out, _ = scan(q, k, v, log_decay, state=state)
    torch.testing.assert_close(out, written_out(q, k, v, log_decay, state))


@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("form", ["parallel", "chunked_4", "chunked_3", "chunked_64"])
def test_fast_forms_equal_the_scan(form, with_resets):
    q, k, v, log_decay, state = recurrence_inputs(1)
    resets = torch.zeros(B, N, dtype=torch.bool)
    if with_resets:
        resets[0, [3, 7]] = True  # documents start inside chunks and on a chunk's first token
        resets[1, 4] = True
    kw = dict(state=state, resets=resets if with_resets else None)
    want, want_state = scan(q, k, v, log_decay, **kw)
    if form == "parallel":
        got, got_state = parallel(q, k, v, log_decay, **kw)
    else:
        got, got_state = chunked(q, k, v, log_decay, chunk=int(form.split("_")[1]), **kw)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_state, want_state)


def test_a_reset_starts_from_an_empty_state():
    q, k, v, log_decay, state = recurrence_inputs(2)
    resets = torch.zeros(B, N, dtype=torch.bool)
    resets[:, 5] = True
    out, _ = chunked(q, k, v, log_decay, state=state, resets=resets, chunk=4)
    alone, _ = scan(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], log_decay[:, :, 5:])
    torch.testing.assert_close(out[:, :, 5:], alone)


def test_chunked_gradients_equal_the_scans():
    inputs = [t.requires_grad_() for t in recurrence_inputs(3)]
    grads = []
    for form in (scan, lambda *a, **kw: chunked(*a, chunk=4, **kw)):
        out, final = form(*inputs[:4], state=inputs[4])
        grads.append(torch.autograd.grad(out.square().sum() + final.sum(), inputs))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


# -- the mixers ------------------------------------------------------------------------------------

DIM, HEADS, HEAD_DIM = 16, 2, 4


def mixer(kind: str, *, form: str = "auto", chunk: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = Retention if kind == "retention" else SelectiveSSM
    module = cls(DIM, n_heads=HEADS, head_dim=HEAD_DIM, form=form, chunk=chunk).double()
    with torch.no_grad():  # away from the init's zeros and ones, so every path carries weight
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def context(n: int, *, offset: int = 0, pos=None, valid=None, segments=None) -> Context:
    pos = pos or NoPositions(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=64, causal=True)
    positions = torch.arange(offset, offset + n)[None]
    mask = Mask(causal=True, key_valid=valid)
    if segments is not None:
        mask = mask.within(segments)
    return Context(positions=positions, mask=mask, pos=pos, rotation=pos.rotation(positions))


def tokens(n: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("form", ["parallel", "chunked"])
@pytest.mark.parametrize("kind", MIXERS)
def test_each_mixers_fast_form_equals_its_scan(kind, form):
    x = tokens()
    want = mixer(kind, form="scan")(x, context(x.shape[1]))
    torch.testing.assert_close(mixer(kind, form=form)(x, context(x.shape[1])), want)


@pytest.mark.parametrize("kind", MIXERS)
def test_decoding_in_pieces_from_the_state_equals_one_pass(kind):
    module, x = mixer(kind), tokens()
    pos = RoPE(DIM, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=64, causal=True).double()
    want = module(x, context(x.shape[1], pos=pos))
    cache, pieces, start = module.new_cache(), [], 0
    for n in [5, 1, 1, 4, 1, 1]:  # a prompt in chunks, then steps: chunked and scan forms alike
        pieces.append(module(x[:, start : start + n], context(n, offset=start, pos=pos), cache))
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), want)
    assert cache.seen == x.shape[1]


@pytest.mark.parametrize("kind", MIXERS)
def test_padding_tokens_are_skipped(kind):
    module, x = mixer(kind), tokens()
    pads = torch.randn(B, 3, DIM, dtype=torch.float64)
    valid = torch.cat([torch.zeros(B, 3, dtype=torch.bool), torch.ones(B, x.shape[1], dtype=torch.bool)], dim=1)
    padded = module(torch.cat([pads, x], dim=1), context(x.shape[1] + 3, valid=valid))
    torch.testing.assert_close(padded[:, 3:], module(x, context(x.shape[1])))


@pytest.mark.parametrize("kind", MIXERS)
def test_a_packed_row_equals_its_documents_alone(kind):
    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model/attention={kind}", "model.attention.chunk=8"]).eval()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 64, (1, n), generator=g) for n in (7, 12, 5)]  # starts inside chunks of 8
    segments = torch.cat([torch.full((1, d.shape[1]), i) for i, d in enumerate(docs)], dim=1)
    with torch.no_grad():
        packed = model(torch.cat(docs, dim=1), segments=segments)
        alone = torch.cat([model(d) for d in docs], dim=1)
        torch.testing.assert_close(packed, alone, atol=2e-5, rtol=1e-4)
        assert not torch.allclose(model(torch.cat(docs, dim=1))[:, 7:], packed[:, 7:], atol=1e-3)


def retnet_reference(ret: Retention, x: torch.Tensor) -> torch.Tensor:
    """RetNet's parallel form (arXiv:2307.08621, eqs. 5 and 8) with the module's weights, without positions."""
    b, n, _ = x.shape
    heads = lambda w: (x @ w.T).view(b, n, HEADS, HEAD_DIM).transpose(1, 2)  # noqa: E731
    q, k, v = heads(ret.q_proj.weight), heads(ret.k_proj.weight) / math.sqrt(HEAD_DIM), heads(ret.v_proj.weight)
    gamma = 1 - 2.0 ** (-5 - torch.arange(HEADS, dtype=x.dtype))
    gap = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    decay = torch.where(gap >= 0, gamma[:, None, None] ** gap.clamp(min=0), torch.zeros(()))  # D, (h, n, m)
    y = (q @ k.transpose(-1, -2) * decay) @ v  # (b, h, n, d)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * ret.head_norm.weight
    y = y.transpose(1, 2).reshape(b, n, HEADS * HEAD_DIM)
    gate = torch.nn.functional.silu(x @ ret.gate_proj.weight.T)
    return (gate * y) @ ret.o_proj.weight.T


def test_retention_matches_retnets_parallel_form():
    ret, x = mixer("retention"), tokens()
    torch.testing.assert_close(ret(x, context(x.shape[1])), retnet_reference(ret, x))


def test_selective_ssm_matches_transformers_mamba2():
    """The same weights in transformers' ``Mamba2Mixer`` (its plain PyTorch path) give the same outputs."""
    mamba2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    from transformers import Mamba2Config

    ssm, x = mixer("mamba2"), tokens(n=21)
    config = Mamba2Config(
        hidden_size=DIM, num_heads=HEADS, head_dim=ssm.head_width, expand=ssm.head_width * HEADS // DIM, state_size=ssm.state_dim,
        n_groups=1, conv_kernel=ssm.conv_width, chunk_size=8, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-6,
    )  # fmt: skip
    theirs = mamba2.Mamba2Mixer(config, layer_idx=0).double().eval()
    with torch.no_grad():
        weights = [ssm.gate_proj.weight, ssm.x_proj.weight, ssm.b_proj.weight, ssm.c_proj.weight, ssm.dt_proj.weight]
        theirs.in_proj.weight.copy_(torch.cat(weights))
        theirs.conv1d.weight.copy_(ssm.conv_weight[:, None, :])
        theirs.conv1d.bias.copy_(ssm.conv_bias)
        theirs.dt_bias.copy_(ssm.dt_bias)
        theirs.A_log.copy_(ssm.a_log)
        theirs.D.copy_(ssm.skip)
        theirs.norm.weight.copy_(ssm.norm.weight)
        theirs.out_proj.weight.copy_(ssm.o_proj.weight)
        want = theirs(x)
        # transformers runs A and its gated norm in float32: agreement to float32's precision
        torch.testing.assert_close(ssm(x, context(x.shape[1])), want, atol=1e-5, rtol=1e-5)


# -- in a model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MIXERS)
def test_the_cache_is_a_state_of_constant_size(kind):
    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model/attention={kind}"]).eval()
    sizes = []
    for length in (4, 20):
        cache = model.new_cache()
        with torch.no_grad():
            model(torch.randint(0, 64, (1, length)), cache=cache)
        sizes.append(cache_nbytes(cache))
    reported = sum(row["kv_cache_bytes"] for row in model.layer_costs(seq_len=20))
    assert sizes == [reported, reported]
    assert reported == sum(row["kv_cache_bytes"] for row in model.layer_costs(seq_len=4000))


@pytest.mark.parametrize("kind", MIXERS)
def test_mixing_flops_per_token_do_not_grow_with_the_length(kind):
    model = zoo.build([*SMALL, f"model/attention={kind}", "model.attention.chunk=16"])
    per_token = [model.flops(seq_len=n).per_token()["attn_scores"] for n in (16, 64, 1024)]
    assert per_token[0] == per_token[1] == per_token[2] > 0


@pytest.mark.parametrize("kind", MIXERS)
def test_batched_prompts_of_different_lengths_generate_what_each_does_alone(kind):
    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model/attention={kind}"]).eval()
    prompts = [[5, 9, 3, 7, 1, 2, 8], [4, 6], [11, 12, 13, 14]]
    together = generate(model, prompts, max_new_tokens=4, pad_id=0).tokens
    alone = [generate(model, [p], max_new_tokens=4, pad_id=0).tokens[0] for p in prompts]
    assert together == alone


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model=encoder", "model/attention=retention"], "model/attention"),
        (["model=encdec", "model/attention=mamba2"], "model/attention"),
        (["model/attention=retention", "model.attention.form=fast"], "model.attention.form"),
        (["model/attention=mamba2", "model.attention.chunk=0"], "model.attention.chunk"),
        (["model/attention=mamba2", "model.attention.state_dim=0"], "model.attention.state_dim"),
    ],
)
def test_what_a_mixer_cannot_do_is_refused_when_built(overrides, key):
    with pytest.raises(ConfigError) as error:
        zoo.build([*SMALL, *overrides])
    assert error.value.key == key


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model=prefix", "model/attention=retention"], "model/attention"),
        (["model/pos=alibi", "model/attention=mamba2"], "model/pos"),
    ],
)
def test_what_a_mixer_cannot_read_is_refused_before_any_work(overrides, key):
    model = zoo.build([*SMALL, *overrides])
    with pytest.raises(ConfigError) as error:
        model(torch.zeros(1, 4, dtype=torch.long), prefix_len=torch.tensor([2]))
    assert error.value.key == key


def greedy_logits(model: torch.nn.Module, n: int, **static) -> torch.Tensor:
    """Logits of ``n`` greedy steps after a padded batch of prompts: eager, or (``static``) StaticDecoder."""
    with torch.inference_mode():
        session = model.open_session([[5, 6, 7, 8, 9], [12, 13]], pad_id=0, room=n)
        logits = [session.feed(session.prompt)[:, -1]]
        step = StaticDecoder(session, room=n, **static) if static else session
        for _ in range(n):
            logits.append(step.feed(logits[-1].argmax(-1)[:, None])[:, -1])
        return torch.stack(logits, 1)


@pytest.mark.parametrize("kind", MIXERS)
def test_static_decode_steps_give_the_eager_logits(kind):
    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model/attention={kind}"]).eval()
    torch.testing.assert_close(greedy_logits(model, 6, compiled=False), greedy_logits(model, 6))


@pytest.mark.slow
@pytest.mark.parametrize("kind", MIXERS)
def test_compiled_decode_steps_trace_once(kind):
    """Traced by dynamo (backend ``eager``, 5-15 s here): the token count is a tensor, so no step recompiles."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model/attention={kind}"]).eval()
    want = greedy_logits(model, 6)
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = greedy_logits(model, 6, backend="eager")
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(got, want)


def test_a_state_cannot_take_tokens_back():
    model = zoo.build([*SMALL, "model/attention=retention"])
    with pytest.raises(ConfigError, match="speculative decoding"):
        model.open_session([[1, 2, 3]], pad_id=0, room=4, rollback=3)
