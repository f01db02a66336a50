"""Based's linear attention (arXiv:2402.18668): the Taylor kernel identity, the layer against a written-out
reference of its scores, decoding from the sums, the hybrid with sliding-window layers, and refusals
(the chunked form against the quadratic reference: tests/attention/test_linear_attention.py)."""

import pytest
import torch

import zoo
from zoo.attention import Context, Mask
from zoo.attention.based import BasedAttention, TaylorFeatures
from zoo.errors import ConfigError
from zoo.generation import generate
from zoo.pos.base import NoPositions
from zoo.testing import check_contract

TINY = ["model/attention=based", "model.dim=32", "model.n_layers=2", "model.vocab_size=64", "model.n_heads=4"]
HYBRID = ["model/layers=based_hybrid", "model.dim=32", "model.n_layers=4", "model.vocab_size=64", "model.n_heads=4"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("f", [1, 5, 16])
def test_taylor_features_give_the_second_order_expansion_of_exp(f):
    g = torch.Generator().manual_seed(f)
    q, k = torch.randn(50, f, generator=g), torch.randn(50, f, generator=g)
    feature_map = TaylorFeatures(f)
    fq, fk = feature_map(q, k)
    assert fq.shape == (50, 1 + f + f * (f + 1) // 2) == (50, feature_map.n_features)
    s = (q * k).sum(-1)
    torch.testing.assert_close((fq * fk).sum(-1), 1 + s + s.square() / 2, atol=1e-4, rtol=1e-5)


def context(n: int, *, causal: bool = True) -> Context:
    pos = NoPositions(32, n_heads=4, head_dim=8, max_seq_len=64, causal=causal)
    return Context(positions=torch.arange(n)[None], mask=Mask(causal=causal), pos=pos, rotation=None)


def written_out(layer: BasedAttention, x: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Attention with weights ``1 + s + s^2 / 2`` for ``s = q . k / sqrt(f)``, normalised per query, from the
    layer's projections alone (no feature map): the paper's definition."""
    b, n, _ = x.shape
    q = (x @ layer.q_proj.weight.T).view(b, n, 4, 6).transpose(1, 2)
    k = (x @ layer.k_proj.weight.T).view(b, n, 2, 6).transpose(1, 2).repeat_interleave(2, dim=1)
    v = (x @ layer.v_proj.weight.T).view(b, n, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    s = q @ k.transpose(-1, -2) / 6**0.5
    weights = 1 + s + s.square() / 2
    if causal:
        weights = weights.tril()
    out = (weights / weights.sum(-1, keepdim=True)) @ v
    return out.transpose(1, 2).reshape(b, n, 32) @ layer.o_proj.weight.T


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_layer_equals_its_written_out_scores(causal):
    torch.manual_seed(0)
    layer = BasedAttention(32, n_heads=4, head_dim=8, feature_dim=6, n_kv_heads=2, chunk=4)
    x = torch.randn(2, 13, 32)
    torch.testing.assert_close(layer(x, context(13, causal=causal)), written_out(layer, x, causal=causal), atol=1e-5, rtol=1e-4)


def test_no_output_depends_on_a_later_token():
    torch.manual_seed(0)
    layer = BasedAttention(32, n_heads=4, head_dim=8, chunk=4)
    x = torch.randn(1, 11, 32, requires_grad=True)
    out = layer(x, context(11))
    for t in range(10):
        (grad,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        assert grad[0, t + 1 :].abs().max() == 0, f"position {t} reads a later token"
        assert grad[0, : t + 1].abs().sum() > 0


def test_contract_across_several_chunks():
    check_contract(["model/attention=based", "model.attention.chunk=3", "model.attention.n_kv_heads=2", "model.attention.feature_dim=4"])


def test_contract_in_an_encoder():
    check_contract(["model=encoder", "model/attention=based"])


def test_contract_of_the_hybrid_with_windows_shorter_than_its_rows():
    check_contract(["model/layers=based_hybrid", "model.layers.kinds.window.attention.window=4"])


@pytest.mark.parametrize("overrides", [[*TINY, "model.attention.chunk=4"], [*HYBRID, "model.layers.kinds.window.attention.window=8"]], ids=["based", "hybrid"])
def test_decoding_from_the_sums_equals_the_full_forward_and_the_cache_stays_small(overrides):
    torch.manual_seed(0)
    model = zoo.build(overrides).eval()
    tokens = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :13], cache=cache)]
        sizes = [layer.nbytes() for layer in cache]
        steps += [model(tokens[:, t : t + 1], cache=cache) for t in range(13, 40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    linear = [i for i, layer in enumerate(model.stack.layers) if isinstance(layer.attn, BasedAttention)]
    assert linear and all(cache[i].nbytes() == sizes[i] for i in linear), "a linear layer's cache grew with the tokens"
    rows = model.layer_costs(seq_len=40)
    assert [rows[i]["kv_cache_bytes"] * 2 for i in linear] == [cache[i].nbytes() for i in linear]  # per sequence, batch of 2
    assert rows[linear[0]]["kv_cache_bytes"] == 4 * 4 * (1 + 16 + 16 * 17 // 2) * (8 + 1)  # float32 sums per KV head


def test_batched_prompts_of_different_lengths_generate_what_each_does_alone():
    """Left padding: a padding key adds nothing to the sums."""
    torch.manual_seed(0)
    model = zoo.build(HYBRID).eval()
    prompts = [[5, 9, 3, 7, 1, 2, 8], [4, 6], [11, 12, 13, 14]]
    together = generate(model, prompts, max_new_tokens=4, pad_id=0).tokens
    assert together == [generate(model, [p], max_new_tokens=4, pad_id=0).tokens[0] for p in prompts]


def test_cost_is_linear_in_the_length():
    model = zoo.build(TINY)
    per_token = [model.flops(seq_len=n).per_token()["attn_scores"] for n in (256, 1024, 4096)]
    assert per_token[0] == per_token[1] == per_token[2] > 0
    assert zoo.build(TINY[1:]).flops(seq_len=4096).per_token()["attn_scores"] > per_token[2]


def test_what_it_cannot_express_is_refused_in_one_line():
    tokens = torch.randint(0, 64, (1, 8))
    with pytest.raises(ConfigError, match="model/pos='a score bias': based has no scores"):
        zoo.build([*TINY, "model/pos=alibi"])(tokens)
    with pytest.raises(ConfigError, match="model='prefix': based has no bidirectional prefix"):
        zoo.build([*TINY, "model=prefix"])(tokens, prefix_len=torch.tensor([3]))
    with pytest.raises(ConfigError, match="model.attention.feature_dim=0"):
        zoo.build([*TINY, "model.attention.feature_dim=0"])
    model = zoo.build(TINY).eval()
    with pytest.raises(ConfigError, match="model/attention='based': sums its tokens"):
        model.open_session([[1, 2, 3]], pad_id=0, room=4, rollback=3)
