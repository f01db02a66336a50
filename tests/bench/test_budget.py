"""Budget matching: sizes solved to a reference's parameters or FLOPs; training budgets in steps."""

import pytest

import zoo
from zoo.bench.budget import Budget, match_knob, measure
from zoo.errors import ConfigError

TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=61", "model.max_seq_len=32"]


def model_cfg(*overrides):
    return zoo.compose([*TINY, *overrides]).model


def test_gated_ffn_matched_to_the_gelu_mlp():
    target = measure(model_cfg("model/ffn=gelu"), by="params", seq_len=32)
    swiglu = model_cfg("model/ffn=swiglu")
    hidden = match_knob(swiglu, target=target, by="params", seq_len=32)
    assert hidden == 85  # 3 * 32 * h = 2 * 32 * 128 -> h = 85.3
    swiglu.ffn.hidden_dim = hidden
    assert abs(measure(swiglu, by="params", seq_len=32) - target) <= 2 * 3 * 32 / 2  # half a step of the knob per layer


def test_mqa_savings_go_back_into_the_ffn():
    target = measure(model_cfg("model/attention=mha"), by="flops", seq_len=32)
    mqa = model_cfg("model/attention=mqa")
    hidden = match_knob(mqa, target=target, by="flops", seq_len=32)
    assert hidden > 85  # the default hidden size, before matching


def test_moe_matched_on_active_parameters():
    target = measure(model_cfg("model/ffn=swiglu", "model.ffn.hidden_dim=64"), by="active_params", seq_len=32)
    moe = model_cfg("model/ffn=moe", "model.ffn.router.top_k=2")
    hidden = match_knob(moe, target=target, by="active_params", knob="ffn.expert.hidden_dim", seq_len=32)
    # two experts of 32 would carry what one FFN of 64 does; the router's 4 x 32 weights are active too
    assert hidden == 31


def test_bad_knob_is_a_config_error():
    with pytest.raises(ConfigError, match="bench.match.knob"):
        match_knob(model_cfg(), target=1000, by="params", knob="ffn.no_such_size", seq_len=32)


def test_budget_steps():
    args = dict(default_steps=7, tokens_per_step=100, train_flops_per_token=1000.0, train_tokens_per_s=500.0)
    assert Budget().steps(**args) == 7
    assert Budget(kind="steps", value=3).steps(**args) == 3
    assert Budget(kind="tokens", value=1000).steps(**args) == 10
    assert Budget(kind="flops", value=1e6).steps(**args) == 10
    assert Budget(kind="time", value=2.0).steps(**args) == 10
    with pytest.raises(ConfigError, match="bench.budget.kind"):
        Budget(kind="epochs", value=1)
    with pytest.raises(ConfigError, match="bench.budget.value"):
        Budget(kind="tokens")
