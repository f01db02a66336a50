import functools
import math

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.ffn import GeGLU, GeLUMLP, MoE, ReLUMLP, SwiGLU
from zoo.ffn.moe import (
    ExpertChoiceRouter,
    TopKRouter,
    aux_loss,
    load_balancing_loss,
    moe_stats,
    router_z_loss,
)
from zoo.testing import TINY

DIM = 16


def make_moe(*, top_k=2, renormalize=True, capacity_factor=None, n_experts=4, n_shared=0, expert=SwiGLU, hidden=24, seed=0):
    torch.manual_seed(seed)
    moe = MoE(
        DIM,
        expert=functools.partial(expert, hidden_dim=hidden, bias=False),
        router=functools.partial(TopKRouter, top_k=top_k, renormalize=renormalize, capacity_factor=capacity_factor),
        n_experts=n_experts,
        n_shared_experts=n_shared,
    )
    # a router away from uniform, so top-k choices and gates differ between tokens
    torch.nn.init.normal_(moe.router.proj.weight, std=1.0)
    return moe


def dense_reference(moe: MoE, x: torch.Tensor, *, top_k: int, renormalize: bool) -> torch.Tensor:
    """Loops over tokens and their experts by hand."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            token = x[b, i]
            probs = torch.softmax(moe.router.proj.weight.float() @ token.float(), dim=-1)
            gates, chosen = probs.topk(top_k)
            if renormalize:
                gates = gates / gates.sum()
            for gate, e in zip(gates, chosen):
                out[b, i] += gate * moe.experts[int(e)](token[None, None])[0, 0]
            for shared in moe.shared_experts:
                out[b, i] += shared(token[None, None])[0, 0]
    return out


def test_load_balancing_loss_is_alpha_at_uniform_routing():
    e = 8
    uniform = load_balancing_loss(probs=torch.full((32, e), 1 / e), load=torch.full((e,), 1 / e))
    torch.testing.assert_close(0.01 * uniform, torch.tensor(0.01))


def test_load_balancing_loss_grows_with_imbalance():
    e, t = 4, 64
    values = []
    for skew in [0.0, 0.3, 0.6, 0.9, 1.0]:
        share = torch.full((e,), (1 - skew) / e)
        share[0] += skew
        values.append(float(load_balancing_loss(probs=share.expand(t, e), load=share)))
    assert values == sorted(values) and values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(e)


def test_moe_records_alpha_times_balancing_loss():
    moe = make_moe()
    x = torch.randn(2, 5, DIM)
    moe(x)
    routing = moe.router(x.reshape(-1, DIM))
    assert routing.load.sum() == pytest.approx(1.0)
    torch.testing.assert_close(moe.losses["load_balance"], 0.01 * load_balancing_loss(probs=routing.probs, load=routing.load))


def test_z_loss_matches_formula():
    logits = torch.randn(6, 5) * 3
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 6
    assert float(router_z_loss(logits)) == pytest.approx(expected, rel=1e-5)
    moe = make_moe()
    x = torch.randn(2, 3, DIM)
    moe(x)
    logits = x.reshape(-1, DIM) @ moe.router.proj.weight.t()
    torch.testing.assert_close(moe.losses["z_loss"], 1e-3 * router_z_loss(logits))


# how the experts run: one padded batched matmul, grouped matmuls on sorted rows, each module on its slice
LAYOUTS = {"padded": (True, math.inf), "sorted": (True, 0.0), "one_by_one": (False, 0.0)}


def set_layout(moe, monkeypatch, layout):
    moe.grouped, limit = LAYOUTS[layout]
    monkeypatch.setattr("zoo.ffn.moe.moe.PADDING_LIMIT", limit)


@pytest.mark.parametrize("top_k, renormalize", [(1, False), (1, True), (2, True), (2, False), (3, True)])
def test_dropless_equals_dense_reference(top_k, renormalize, monkeypatch):
    moe = make_moe(top_k=top_k, renormalize=renormalize)
    x = torch.randn(2, 5, DIM, requires_grad=True)
    expected = dense_reference(moe, x, top_k=top_k, renormalize=renormalize)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *moe.parameters()], allow_unused=True)
    for layout in LAYOUTS:
        set_layout(moe, monkeypatch, layout)
        out = moe(x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
        grads = torch.autograd.grad(out.square().sum(), [x, *moe.parameters()], allow_unused=True)
        for got, want in zip(grads, expected_grads):
            if want is None:  # an expert no token chose
                assert got is None or not got.any()
            else:
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert float(moe.stats["dropped"]) == 0.0


def test_high_capacity_drops_nothing_and_equals_reference():
    moe = make_moe(top_k=2, capacity_factor=4.0)  # capacity = t * k: room for every assignment
    x = torch.randn(2, 6, DIM)
    torch.testing.assert_close(moe(x), dense_reference(moe, x, top_k=2, renormalize=True), atol=1e-5, rtol=1e-4)
    assert float(moe.stats["dropped"]) == 0.0


def test_dropped_tokens_pass_through_unchanged():
    moe = make_moe(top_k=1, renormalize=False, capacity_factor=1.0)
    with torch.no_grad():  # every token prefers expert 0
        moe.router.proj.weight.zero_()
        moe.router.proj.weight[0, 0] = 10.0
    x = torch.randn(1, 12, DIM)
    x[..., 0] = 1.0
    x.requires_grad_()
    out = moe(x)
    capacity = math.ceil(1.0 * 12 * 1 / 4)
    # the first `capacity` tokens fit, the rest get nothing: x + moe(x) leaves them unchanged
    assert torch.all(out[0, :capacity].abs().sum(-1) > 0)
    assert torch.equal(out[0, capacity:], torch.zeros_like(out[0, capacity:]))
    torch.testing.assert_close(out[:, :capacity], dense_reference(moe, x[:, :capacity], top_k=1, renormalize=False))
    assert float(moe.stats["dropped"]) == pytest.approx(1 - capacity / 12)
    assert moe.stats["load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    (x + out).sum().backward()
    assert torch.equal(x.grad[0, capacity:], torch.ones_like(x.grad[0, capacity:]))  # only the residual


def test_capacity_keeps_first_choices_before_second_choices():
    router = TopKRouter(DIM, n_experts=2, top_k=2, capacity_factor=0.5)  # capacity = t * 2 / 2 / 2 = t / 2
    with torch.no_grad():
        router.proj.weight.copy_(torch.zeros(2, DIM))
        router.proj.weight[0, 0] = 1.0
    x = torch.zeros(8, DIM)
    x[:4, 0], x[4:, 0] = 1.0, -1.0  # tokens 0-3 prefer expert 0, tokens 4-7 expert 1
    routing = router(x)
    n_kept = sum(routing.counts)
    kept = sorted(zip(routing.expert[:n_kept].tolist(), routing.token[:n_kept].tolist()))
    assert kept == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6), (1, 7)]
    assert float(routing.dropped) == pytest.approx(0.5)


@pytest.mark.parametrize("top_k, renormalize", [(1, False), (2, True)])
def test_gradients_reach_the_router(top_k, renormalize):
    moe = make_moe(top_k=top_k, renormalize=renormalize)
    moe(torch.randn(2, 5, DIM)).square().sum().backward()
    assert moe.router.proj.weight.grad.abs().sum() > 0
    moe.zero_grad()
    moe(torch.randn(2, 5, DIM))
    sum(moe.losses.values()).backward()  # the auxiliary losses alone train the router too
    assert moe.router.proj.weight.grad.abs().sum() > 0


def test_shared_expert_sees_every_token():
    moe = make_moe(n_shared=1)
    x = torch.randn(2, 4, DIM)
    torch.testing.assert_close(moe(x), dense_reference(moe, x, top_k=2, renormalize=True), atol=1e-5, rtol=1e-4)
    moe.zero_grad()
    moe(x).sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in moe.shared_experts.parameters())


@pytest.mark.parametrize("expert, hidden", [(SwiGLU, 24), (SwiGLU, 10), (GeGLU, 7), (GeLUMLP, 32), (ReLUMLP, 9)])
@pytest.mark.parametrize("layout", ["padded", "sorted"])
def test_stacked_experts_equal_one_by_one(expert, hidden, layout, monkeypatch):
    moe = make_moe(expert=expert, hidden=hidden)
    assert moe.grouped
    x = torch.randn(3, 7, DIM, requires_grad=True)
    results = []
    for run in (layout, "one_by_one"):
        set_layout(moe, monkeypatch, run)
        moe.zero_grad()
        x.grad = None
        out = moe(x)
        out.square().sum().backward()
        results.append([out, x.grad] + [p.grad for p in moe.parameters()])
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["padded", "sorted"])
def test_moe_runs_under_torch_compile(layout, monkeypatch):
    """Compiled, the MoE equals itself eager, forward and gradients."""
    moe = make_moe()
    set_layout(moe, monkeypatch, layout)
    x = torch.randn(2, 5, DIM, requires_grad=True)
    expected = moe(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch._dynamo.reset()
    out = torch.compile(moe, backend="eager")(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_a_compiled_moe_does_not_recompile_for_each_routing():
    moe = make_moe()
    compiled = torch.compile(moe, backend="eager")
    torch._dynamo.reset()
    compiled(torch.randn(2, 5, DIM))
    counts = set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(1, 6):
            x = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(compiled(x), moe(x))
            counts.add(tuple(moe.router(x.flatten(0, 1)).counts))
    assert len(counts) > 1  # the routings differed


def test_experts_with_biases_run_one_by_one():
    torch.manual_seed(0)
    moe = MoE(DIM, expert=functools.partial(ReLUMLP, hidden_dim=8, bias=True), router=TopKRouter, n_experts=3)
    assert not moe.grouped
    assert moe(torch.randn(2, 3, DIM)).shape == (2, 3, DIM)


def test_expert_choice_fills_every_expert_and_equals_reference():
    torch.manual_seed(0)
    moe = MoE(DIM, expert=functools.partial(SwiGLU, hidden_dim=12), router=functools.partial(ExpertChoiceRouter, capacity_factor=1.0), n_experts=4)
    x = torch.randn(2, 6, DIM)
    out = moe(x)
    flat = x.reshape(-1, DIM)
    probs = torch.softmax(flat @ moe.router.proj.weight.t(), dim=-1)
    c = math.ceil(1.0 * 12 / 4)
    expected = torch.zeros_like(flat)
    for e, expert in enumerate(moe.experts):
        gates, tokens = probs[:, e].topk(c)
        for gate, t in zip(gates, tokens):
            expected[t] += gate * expert(flat[t][None, None])[0, 0]
    torch.testing.assert_close(out.reshape(-1, DIM), expected, atol=1e-5, rtol=1e-4)
    assert set(moe.losses) == {"z_loss"}  # balanced by construction
    assert moe.stats["load"].tolist() == [0.25] * 4


def test_router_runs_in_float32_under_autocast():
    router = TopKRouter(DIM, n_experts=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(torch.randn(5, DIM, dtype=torch.bfloat16))
    assert routing.logits.dtype == torch.float32 and routing.weight.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(top_k=5), "model.ffn.router.top_k"),
        (dict(top_k=0), "model.ffn.router.top_k"),
        (dict(capacity_factor=0.0), "model.ffn.router.capacity_factor"),
    ],
)
def test_bad_router_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as error:
        TopKRouter(DIM, n_experts=4, **kwargs)
    assert str(error.value).startswith(key)


def test_active_params_count_the_chosen_experts():
    moe = make_moe(top_k=2, n_experts=4, n_shared=1)
    per_expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert moe.active_params() == DIM * 4 + per_expert * (2 + 1)


def test_full_model_trains_and_aux_loss_sums_over_layers():
    model = zoo.build(["model/ffn=moe", *TINY])
    tokens = torch.randint(0, model.vocab_size, (2, 12))
    logits = model(tokens)
    per_layer = [layer.ffn.losses for layer in model.stack.layers]
    assert len(per_layer) == 2 and all(set(losses) == {"load_balance", "z_loss"} for losses in per_layer)
    expected = sum(sum(losses.values()) for losses in per_layer)
    torch.testing.assert_close(model.aux_loss(), expected)
    assert set(model.aux_losses()) == {"load_balance", "z_loss"}
    (logits.logsumexp(-1).mean() + model.aux_loss()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert float(moe_stats(model)["dropped"]) == 0.0 and float(moe_stats(model)["max_load"]) >= 1.0
    total = sum(p.numel() for p in model.parameters())
    ffn = model.stack.layers[0].ffn
    inactive_per_layer = sum(p.numel() for p in ffn.parameters()) - ffn.active_params()
    assert model.param_counts()["active_params"] == total - 2 * inactive_per_layer < total


def test_dense_model_has_no_aux_loss():
    model = zoo.build(TINY)
    model(torch.randint(0, model.vocab_size, (1, 4)))
    assert model.aux_loss() is None and model.aux_losses() == {} and aux_loss(model) is None


def test_expert_and_router_are_config_choices():
    model = zoo.build(["model/ffn=moe", "model/ffn@model.ffn.expert=relu", "model/ffn/router=expert_choice", *TINY])
    ffn = model.stack.layers[0].ffn
    assert isinstance(ffn.experts[0], ReLUMLP) and isinstance(ffn.router, ExpertChoiceRouter)
    model = zoo.build(["model=encdec", "model/ffn=moe", *TINY])
    model(torch.randint(0, 61, (2, 6)), torch.randint(0, 61, (2, 5)))
    assert len([m for m in model.modules() if isinstance(m, MoE)]) == 4
    assert set(model.aux_losses()) == {"load_balance", "z_loss"}


def test_presets():
    mixtral = zoo.build(["preset=mixtral", *TINY])
    ffn = mixtral.stack.layers[0].ffn
    assert (len(ffn.experts), ffn.router.top_k, ffn.router.renormalize, type(ffn.experts[0])) == (8, 2, True, SwiGLU)
    assert mixtral.stack.layers[0].attn.n_kv_heads == 2
    switch = zoo.build(["preset=switch", *TINY])
    ffn = switch.encoder.layers[0].ffn
    assert (ffn.router.top_k, ffn.router.renormalize, ffn.router.capacity_factor) == (1, False, 1.25)
    assert isinstance(ffn.experts[0], ReLUMLP)


def test_cached_decoding_equals_full_forward():
    torch.manual_seed(0)
    model = zoo.build(["model/ffn=moe", *TINY]).eval()
    tokens = torch.randint(0, model.vocab_size, (2, 9))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache()
        steps = [model(tokens[:, :4], cache=cache)] + [model(tokens[:, i : i + 1], cache=cache) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_empty_batch():
    moe = make_moe()
    assert moe(torch.randn(0, 3, DIM)).shape == (0, 3, DIM)
