"""Linear attention through a feature map (performer's and Based's): the chunked causal form against the
quadratic reference, the running sums carrying the past, padding keys skipped, and the refusals."""

import pytest
import torch

import zoo
from zoo.attention import Context, Mask
from zoo.attention.based import BasedAttention, TaylorFeatures
from zoo.attention.linear_attention import bidirectional, causal_chunks, quadratic_reference
from zoo.attention.random_features import RandomFeatureAttention, RandomFeatures
from zoo.errors import ConfigError
from zoo.pos.base import NoPositions

B, K, G, D = 2, 2, 2, 8  # batch, KV heads, query heads per KV head, head dim
MAPS = {"performer": lambda: RandomFeatures(D, n_features=16), "based": lambda: TaylorFeatures(D)}
SMALL = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=64", "model.max_seq_len=64"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def inputs(n: int, m: int, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = (0.5 * torch.randn(B, K, G, n, D, generator=g)).requires_grad_()
    k = (0.5 * torch.randn(B, K, m, D, generator=g)).requires_grad_()
    return q, k, torch.randn(B, K, m, D, generator=g, requires_grad=True)


def empty_sums(r: int):
    return torch.zeros(B, K, r, D), torch.zeros(B, K, r)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("kind", MAPS)
def test_chunked_form_equals_the_quadratic_reference(kind, chunk):
    torch.manual_seed(0)
    feature_map = MAPS[kind]()
    q, k, v = inputs(37, 37)
    fq, fk = feature_map(q, k)
    out, _, _ = causal_chunks(fq, fk, v, *empty_sums(feature_map.n_features), chunk=chunk)
    ref = quadratic_reference(fq, fk, v, causal=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    weight = torch.randn_like(ref)
    got_grads = torch.autograd.grad((out * weight).sum(), (q, k, v), retain_graph=True)  # the features are shared
    for got, want in zip(got_grads, torch.autograd.grad((ref * weight).sum(), (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MAPS)
def test_running_sums_carry_the_past(kind):
    """Queries after a prefix, fed with the prefix's sums, equal the last rows of one pass."""
    torch.manual_seed(0)
    feature_map = MAPS[kind]()
    q, k, v = inputs(30, 30)
    fq, fk = feature_map(q, k)
    zeros = empty_sums(feature_map.n_features)
    whole, state, norm = causal_chunks(fq, fk, v, *zeros, chunk=8)
    _, mid_state, mid_norm = causal_chunks(fq[:, :, :, :21], fk[:, :, :21], v[:, :, :21], *zeros, chunk=8)
    tail, end_state, end_norm = causal_chunks(fq[:, :, :, 21:], fk[:, :, 21:], v[:, :, 21:], mid_state, mid_norm, chunk=4)
    torch.testing.assert_close(tail, whole[:, :, :, 21:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(end_state, state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(quadratic_reference(fq[:, :, :, 21:], fk, v, causal=True), whole[:, :, :, 21:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MAPS)
def test_bidirectional_form_equals_the_quadratic_reference(kind):
    torch.manual_seed(0)
    feature_map = MAPS[kind]()
    q, k, v = inputs(20, 33)
    fq, fk = feature_map(q, k)
    torch.testing.assert_close(bidirectional(fq, fk, v), quadratic_reference(fq, fk, v, causal=False), atol=1e-5, rtol=1e-4)


LAYERS = {
    "performer": lambda: RandomFeatureAttention(32, n_heads=4, head_dim=8, n_kv_heads=2, chunk=4),
    "based": lambda: BasedAttention(32, n_heads=4, head_dim=8, feature_dim=6, n_kv_heads=2, chunk=4),
}


def context(n: int, *, valid=None, segments=None) -> Context:
    pos = NoPositions(32, n_heads=4, head_dim=8, max_seq_len=64, causal=True)
    mask = Mask(causal=True, key_valid=valid)
    if segments is not None:
        mask = mask.within(segments)
    return Context(positions=torch.arange(n)[None], mask=mask, pos=pos, rotation=None)


@pytest.mark.parametrize("kind", LAYERS)
def test_padding_keys_are_skipped(kind):
    """Left padding leaves the real tokens' outputs as they are without it, across chunk boundaries."""
    torch.manual_seed(0)
    layer, x = LAYERS[kind]().eval(), torch.randn(B, 11, 32)
    pads = torch.randn(B, 3, 32)
    valid = torch.cat([torch.zeros(B, 3, dtype=torch.bool), torch.ones(B, 11, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        padded = layer(torch.cat([pads, x], dim=1), context(14, valid=valid))
        torch.testing.assert_close(padded[:, 3:], layer(x, context(11)), atol=1e-5, rtol=1e-4)
        assert padded[:, :3].abs().max() < 1e-6, "a row of padding sees no key, and reads zero"


@pytest.mark.parametrize("kind", LAYERS)
def test_packed_documents_and_windows_are_refused(kind):
    layer, x = LAYERS[kind](), torch.randn(1, 6, 32)
    with pytest.raises(ConfigError, match=f"data.boundaries='mask': {kind} cannot mask packed documents"):
        layer(x, context(6, segments=torch.tensor([[0, 0, 0, 1, 1, 1]])))
    with pytest.raises(ConfigError) as error:
        zoo.build([*SMALL, f"model/attention={kind}", "model/layers=local_global_1to1"])(torch.zeros(1, 4, dtype=torch.long))
    assert error.value.key == "model.layers.kinds.local.attention.window"
