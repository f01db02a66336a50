"""Linear attention through a feature map (performer's and Based's): the chunked causal form against the
quadratic reference, the running sums carrying the past, padding keys skipped, packed documents kept
apart, and the refusals."""

import pytest
import torch

import zoo
from zoo.attention import Context, Mask
from zoo.attention.based import BasedAttention, TaylorFeatures
from zoo.attention.linear_attention import bidirectional, causal_chunks, document_runs, quadratic_reference
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


# two rows, each a different packing: with chunks of 4, documents start inside a chunk (3, 7, 13), exactly
# on a chunk's first token (8, 16), and last longer than a chunk (9 tokens from 7; 10 from 3)
LENGTHS = [(3, 4, 9, 2), (3, 10, 3, 1, 1)]
SEGMENTS = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(row)]) for row in LENGTHS])


def test_document_runs_count_documents_from_the_row_start():
    assert document_runs(torch.tensor([[4, 4, 7, 7, 7, 2, 9]])).tolist() == [[0, 0, 1, 1, 1, 2, 3]]


@pytest.mark.parametrize("chunk", [1, 4, 5, 18])
@pytest.mark.parametrize("kind", MAPS)
def test_chunked_form_with_documents_equals_the_quadratic_reference(kind, chunk):
    torch.manual_seed(0)
    feature_map = MAPS[kind]()
    q, k, v = inputs(18, 18)
    fq, fk = feature_map(q, k)
    out, _, _ = causal_chunks(fq, fk, v, *empty_sums(feature_map.n_features), chunk=chunk, runs=document_runs(SEGMENTS))
    ref = quadratic_reference(fq, fk, v, causal=True, segments=SEGMENTS)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    weight = torch.randn_like(ref)
    got_grads = torch.autograd.grad((out * weight).sum(), (q, k, v), retain_graph=True)
    for got, want in zip(got_grads, torch.autograd.grad((ref * weight).sum(), (q, k, v))):
        assert got.isfinite().all()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MAPS)
def test_the_sums_carried_out_hold_only_the_last_document(kind):
    """After a packed row, the sums are those of its last document alone (of the whole row without documents)."""
    torch.manual_seed(0)
    feature_map = MAPS[kind]()
    q, k, v = inputs(18, 18)
    fq, fk = feature_map(q, k)
    zeros = empty_sums(feature_map.n_features)
    for row, lengths in enumerate(LENGTHS):
        last = 18 - lengths[-1]
        _, state, norm = causal_chunks(fq[row : row + 1], fk[row : row + 1], v[row : row + 1], *(z[:1] for z in zeros), chunk=4, runs=document_runs(SEGMENTS[row : row + 1]))
        _, alone_state, alone_norm = causal_chunks(fq[row : row + 1, :, :, last:], fk[row : row + 1, :, last:], v[row : row + 1, :, last:], *(z[:1] for z in zeros), chunk=4)
        torch.testing.assert_close(state, alone_state, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(norm, alone_norm, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MAPS)
def test_bidirectional_form_with_documents_equals_the_quadratic_reference(kind):
    torch.manual_seed(0)
    feature_map = MAPS[kind]()
    q, k, v = inputs(18, 18)
    fq, fk = feature_map(q, k)
    out = bidirectional(fq, fk, v, runs=document_runs(SEGMENTS))
    torch.testing.assert_close(out, quadratic_reference(fq, fk, v, causal=False, segments=SEGMENTS), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, bidirectional(fq, fk, v), atol=1e-3), "the documents made no difference"


LAYERS = {
    "performer": lambda: RandomFeatureAttention(32, n_heads=4, head_dim=8, n_kv_heads=2, chunk=4),
    "based": lambda: BasedAttention(32, n_heads=4, head_dim=8, feature_dim=6, n_kv_heads=2, chunk=4),
}


def context(n: int, *, valid=None, segments=None, causal: bool = True) -> Context:
    pos = NoPositions(32, n_heads=4, head_dim=8, max_seq_len=64, causal=causal)
    mask = Mask(causal=causal, key_valid=valid)
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


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kind", LAYERS)
def test_a_packed_row_equals_its_documents_alone(kind, causal):
    """Chunks of 4: documents start inside a chunk, on a chunk's first token, and outlast a chunk."""
    torch.manual_seed(0)
    layer, x = LAYERS[kind](), torch.randn(B, 18, 32, requires_grad=True)
    packed = layer(x, context(18, segments=SEGMENTS, causal=causal))
    for row, lengths in enumerate(LENGTHS):
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        alone = [layer(x[row : row + 1, s : s + n], context(n, causal=causal)) for s, n in zip(starts, lengths)]
        torch.testing.assert_close(packed[row : row + 1], torch.cat(alone, dim=1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(packed, layer(x, context(18, causal=causal)), atol=1e-3), "the documents made no difference"
    (grad,) = torch.autograd.grad(packed.square().sum(), x)
    assert grad.isfinite().all() and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", LAYERS)
def test_windows_are_refused(kind):
    with pytest.raises(ConfigError) as error:
        zoo.build([*SMALL, f"model/attention={kind}", "model/layers=local_global_1to1"])(torch.zeros(1, 4, dtype=torch.long))
    assert error.value.key == "model.layers.kinds.local.attention.window"


@pytest.mark.parametrize("arch", ["causal", "encoder"])
@pytest.mark.parametrize("kind", LAYERS)
def test_a_model_reads_a_packed_row_as_its_documents_alone(kind, arch):
    """Through a whole model (performer's features fixed: no redraw), positions restarting per document."""
    torch.manual_seed(0)
    model = zoo.build([*SMALL, f"model={arch}", f"model/attention={kind}", "model.attention.chunk=4"]).eval()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 64, (1, n), generator=g) for n in LENGTHS[0]]
    segments = torch.cat([torch.full((1, d.shape[1]), i) for i, d in enumerate(docs)], dim=1)
    with torch.no_grad():
        packed = model(torch.cat(docs, dim=1), segments=segments)
        torch.testing.assert_close(packed, torch.cat([model(d) for d in docs], dim=1), atol=2e-5, rtol=1e-4)
