"""Random-feature attention (Performer's FAVOR+): its approximation of softmax attention as the features
grow, decoding from running sums, refusals, and redrawing the features during training (the chunked
form against the quadratic reference: tests/attention/test_linear_attention.py)."""

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.attention.linear_attention import FeatureState, quadratic_reference
from zoo.attention.random_features import RandomFeatures, orthogonal_features, positive_features
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
        state = FeatureState(owner="performer")
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


# --- redrawing the features during training -----------------------------------------------------------


def feature_maps(model) -> list[RandomFeatures]:
    return [m for m in model.modules() if isinstance(m, RandomFeatures)]


def train_forwards(model, n: int, *, seed: int = 0) -> list[torch.Tensor]:
    """``n`` training-mode forwards (each with a backward, as in training) on seeded tokens; their logits."""
    model.train()
    g, outs = torch.Generator().manual_seed(seed), []
    for _ in range(n):
        logits = model(torch.randint(0, 64, (2, 9), generator=g))
        logits.square().mean().backward()
        outs.append(logits.detach())
    return outs


def test_features_are_redrawn_every_n_training_forwards_and_never_in_eval():
    torch.manual_seed(0)
    model = zoo.build([*TINY, "model.attention.redraw_every=3"])
    first = [m.features.clone() for m in feature_maps(model)]
    assert not torch.equal(first[0], first[1]), "two layers drew the same features"
    train_forwards(model, 3)  # forwards 0, 1, 2: the draw made at build time
    assert all(torch.equal(m.features, f) for m, f in zip(feature_maps(model), first))
    train_forwards(model, 1)  # forward 3 draws anew
    second = [m.features.clone() for m in feature_maps(model)]
    assert not any(torch.equal(s, f) for s, f in zip(second, first)), "no redraw after 3 training forwards"
    model.eval()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randint(0, 64, (2, 9)))
    assert all(torch.equal(m.features, s) for m, s in zip(feature_maps(model), second)), "evaluation redrew"
    assert [int(m.forwards) for m in feature_maps(model)] == [4, 4], "evaluation forwards were counted"


def test_without_redraw_every_the_features_stay():
    torch.manual_seed(0)
    model = zoo.build(TINY)
    first = [m.features.clone() for m in feature_maps(model)]
    train_forwards(model, 3)
    assert all(torch.equal(m.features, f) for m, f in zip(feature_maps(model), first))


def test_two_runs_with_one_seed_draw_the_same_features():
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        model = zoo.build([*TINY, "model.attention.redraw_every=2"])
        train_forwards(model, 5)  # draws 0, 1, 2
        runs.append(torch.cat([m.features for m in feature_maps(model)]))
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert not torch.equal(runs[0], runs[2]), "another seed drew the same features"


def test_a_reloaded_state_continues_as_the_run_would_have():
    torch.manual_seed(0)
    run = zoo.build([*TINY, "model.attention.redraw_every=3"])
    train_forwards(run, 4)  # a checkpoint after draw 1 was made
    torch.manual_seed(1)
    resumed = zoo.build([*TINY, "model.attention.redraw_every=3"])
    resumed.load_state_dict(run.state_dict())
    # forwards 4..7: forward 6 draws anew, in both
    for went_on, came_back in zip(train_forwards(run, 4, seed=1), train_forwards(resumed, 4, seed=1)):
        torch.testing.assert_close(came_back, went_on, atol=0, rtol=0)
    for a, b in zip(feature_maps(run), feature_maps(resumed)):
        assert torch.equal(a.features, b.features) and int(a.forwards) == int(b.forwards) == 8


def test_contract_while_redrawing_every_forward():
    check_contract(["model/attention=performer", "model.attention.redraw_every=1"])


def test_a_redraw_period_below_one_is_refused():
    with pytest.raises(ConfigError, match="model.attention.redraw_every=0"):
        zoo.build([*TINY, "model.attention.redraw_every=0"])


def test_recomputing_blocks_that_redraw_is_refused():
    """A recomputed block would run the feature map's forward twice per step: counted twice, redrawn between."""
    from zoo.train.recompute import Recomputed, recompute_blocks

    with pytest.raises(ConfigError, match="trainer.activation_checkpointing=True: false with model.attention.redraw_every=2"):
        recompute_blocks(zoo.build([*TINY, "model.attention.redraw_every=2"]))
    model = zoo.build(TINY)
    recompute_blocks(model)
    assert all(isinstance(layer, Recomputed) for layer in model.stack.layers)
