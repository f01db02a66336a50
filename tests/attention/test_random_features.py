"""Random-feature attention (Performer's FAVOR+): the chunked form against the quadratic reference, its
approximation of softmax attention as the features grow, decoding from running sums, and refusals."""

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.attention.random_features import (
    FeatureState,
    bidirectional,
    causal_chunks,
    orthogonal_features,
    positive_features,
    quadratic_reference,
)
from zoo.errors import ConfigError
from zoo.testing import check_contract

B, K, G, D = 2, 2, 2, 8  # batch, KV heads, query heads per KV head, head dim


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features_of(n: int, m: int, r: int = 16, *, seed: int = 0):
    torch.manual_seed(seed)
    w = orthogonal_features(r, D)
    q = torch.randn(B, K, G, n, D, requires_grad=True)
    k, v = torch.randn(B, K, m, D, requires_grad=True), torch.randn(B, K, m, D, requires_grad=True)
    return q, k, v, w


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_form_equals_the_quadratic_reference(chunk):
    q, k, v, w = features_of(37, 37)
    fq, fk = positive_features(q * 0.5, w, query=True), positive_features(k * 0.5, w, query=False)
    zeros = torch.zeros(B, K, w.shape[0], D), torch.zeros(B, K, w.shape[0])
    out, _, _ = causal_chunks(fq, fk, v, *zeros, chunk=chunk)
    ref = quadratic_reference(fq, fk, v, causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    weight = torch.randn_like(ref)
    got_grads = torch.autograd.grad((out * weight).sum(), (q, k, v), retain_graph=True)  # the features are shared
    for got, want in zip(got_grads, torch.autograd.grad((ref * weight).sum(), (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_running_sums_carry_the_past():
    """Queries after a prefix, fed with the prefix's sums, equal the last rows of one pass."""
    q, k, v, w = features_of(30, 30)
    fq, fk = positive_features(q * 0.5, w, query=True), positive_features(k * 0.5, w, query=False)
    zeros = torch.zeros(B, K, w.shape[0], D), torch.zeros(B, K, w.shape[0])
    whole, state, norm = causal_chunks(fq, fk, v, *zeros, chunk=8)
    _, mid_state, mid_norm = causal_chunks(fq[:, :, :, :21], fk[:, :, :21], v[:, :, :21], *zeros, chunk=8)
    tail, end_state, end_norm = causal_chunks(fq[:, :, :, 21:], fk[:, :, 21:], v[:, :, 21:], mid_state, mid_norm, chunk=4)
    torch.testing.assert_close(tail, whole[:, :, :, 21:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(end_state, state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(quadratic_reference(fq[:, :, :, 21:], fk, v, causal=True), whole[:, :, :, 21:], atol=1e-5, rtol=1e-4)


def test_bidirectional_form_equals_the_quadratic_reference():
    q, k, v, w = features_of(20, 33)
    fq, fk = positive_features(q, w, query=True), positive_features(k, w, query=False)
    torch.testing.assert_close(bidirectional(fq, fk, v), quadratic_reference(fq, fk, v, causal=False), atol=1e-5, rtol=1e-4)


def test_features_are_orthogonal_within_a_block():
    torch.manual_seed(0)
    w = orthogonal_features(20, D)  # blocks of 8, 8 and 4 rows
    for block in (w[:8], w[8:16], w[16:]):
        gram = block @ block.T
        off = gram - torch.diag(gram.diagonal())
        assert off.abs().max() < 1e-4 * gram.diagonal().max()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_error_against_softmax_attention_shrinks_as_features_grow(causal):
    """FAVOR+ is unbiased for exp(q . k) with variance ~ exp(|q + k|^2) / r: its error to exact softmax
    attention falls with r (slowly for large queries and keys: here of a moderate size, std 0.5)."""
    n, scale = 48, D**-0.5
    errors = []
    for r in (4, 32, 256):
        err = 0.0
        for seed in range(4):
            q, k, v, w = features_of(n, n, r, seed=seed)
            q, k, v = q.detach() / 2, k.detach() / 2, v.detach()
            exact = F.scaled_dot_product_attention(q.flatten(1, 2), k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=causal, scale=scale)
            fq, fk = positive_features(q * scale**0.5, w, query=True), positive_features(k * scale**0.5, w, query=False)
            approx = quadratic_reference(fq, fk, v, causal=causal).flatten(1, 2)
            err += (approx - exact).square().mean().sqrt().item() / 4
        errors.append(err)
    assert errors[0] > errors[1] > errors[2], f"errors at 4, 32, 256 features: {errors}"
    assert errors[2] < errors[0] / 3, f"errors at 4, 32, 256 features: {errors}"


# --- through a whole model ----------------------------------------------------------------------------

TINY = ["model/attention=performer", "model.dim=32", "model.n_layers=2", "model.vocab_size=64", "model.n_heads=4"]


def test_contract_across_several_chunks():
    """The contract (no future leak, cached decoding equals the full forward...) with chunks shorter than its rows."""
    check_contract(["model/attention=performer", "model.attention.chunk=3", "model.attention.n_kv_heads=2"])


def test_contract_in_an_encoder():
    check_contract(["model=encoder", "model/attention=performer"])


def test_decoding_from_the_sums_equals_the_full_forward_and_the_cache_stays_small():
    torch.manual_seed(0)
    model = zoo.build([*TINY, "model.attention.chunk=4"]).eval()
    tokens = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :13], cache=cache)]
        size = sum(layer.nbytes() for layer in cache)
        steps += [model(tokens[:, t : t + 1], cache=cache) for t in range(13, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert sum(layer.nbytes() for layer in cache) == size, "the cache grew with the tokens"
    rows = model.layer_costs(seq_len=40)
    assert [row["kv_cache_bytes"] * 2 for row in rows] == [layer.nbytes() for layer in cache]  # per sequence, batch of 2
    with pytest.raises(ValueError, match="cannot take back"):
        cache[0].self_attn.truncate(30)


def test_cost_is_linear_in_the_length():
    model = zoo.build(TINY)
    per_token = [model.flops(seq_len=n).per_token()["attn_scores"] for n in (256, 1024, 4096)]
    assert per_token[0] == per_token[1] == per_token[2]
    dense = zoo.build(TINY[1:])
    assert dense.flops(seq_len=4096).per_token()["attn_scores"] > per_token[2]


def test_what_it_cannot_express_is_refused_in_one_line():
    tokens = torch.randint(0, 64, (1, 8))
    with pytest.raises(ConfigError, match="model/pos='a score bias'"):
        zoo.build([*TINY, "model/pos=alibi"])(tokens)
    with pytest.raises(ConfigError, match="model='prefix'"):
        zoo.build([*TINY, "model=prefix"])(tokens, prefix_len=torch.tensor([3]))
    with pytest.raises(ValueError, match="cannot take back"):
        state = FeatureState()
        state.seen = 4
        state.truncate(2)


def test_generation_runs_on_the_sums_and_refuses_a_static_cache():
    from zoo.attention.static_cache import make_static
    from zoo.generation.loop import generate

    torch.manual_seed(0)
    model = zoo.build(TINY).eval()
    out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=4, pad_id=0)
    assert [len(t) for t in out.tokens] == [4, 4]
    with pytest.raises(ConfigError, match="generate.compiled.*FeatureState"):
        make_static(model.new_cache(), room=4)
