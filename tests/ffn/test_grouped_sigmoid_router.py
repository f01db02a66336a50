"""DeepSeek-V3's router (zoo/ffn/moe/router.py, GroupedSigmoidRouter): group-limited choice by biased sigmoid affinities."""

import pytest
import torch

from zoo.errors import ConfigError
from zoo.ffn.moe import GroupedSigmoidRouter


def reference_choice(logits, bias, *, n_groups, top_k_groups, top_k):
    """Written out token by token: the best groups by their two highest biased affinities, then the best experts in them."""
    chosen = []
    for row in (logits.sigmoid() + bias).tolist():
        size = len(row) // n_groups
        groups = [row[g * size : (g + 1) * size] for g in range(n_groups)]
        best = sorted(range(n_groups), key=lambda g: -sum(sorted(groups[g])[-2:]))[:top_k_groups]
        allowed = [e for g in best for e in range(g * size, (g + 1) * size)]
        chosen.append(sorted(sorted(allowed, key=lambda e: -row[e])[:top_k]))
    return chosen


def router(**kwargs) -> GroupedSigmoidRouter:
    torch.manual_seed(0)
    return GroupedSigmoidRouter(16, **{"n_experts": 8, "top_k": 3, "n_groups": 4, "top_k_groups": 2, **kwargs})


@pytest.mark.parametrize("renormalize", [True, False])
def test_choice_and_gates_match_a_reference(renormalize):
    r = router(renormalize=renormalize, scale=2.5)
    r.score_bias.copy_(torch.randn(8) * 0.3)
    x = torch.randn(20, 16)
    probs, weight, expert = r.choose(r.logits(x))
    assert [sorted(e) for e in expert.tolist()] == reference_choice(r.logits(x), r.score_bias, n_groups=4, top_k_groups=2, top_k=3)
    affinity = r.logits(x).sigmoid().gather(1, expert)  # the bias chooses but does not weigh
    expected = affinity / affinity.sum(-1, keepdim=True) if renormalize else affinity
    torch.testing.assert_close(weight, 2.5 * expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(20))


def test_training_moves_the_bias_towards_the_underloaded_experts():
    r = router(n_groups=1, top_k_groups=1, bias_update_rate=0.01).train()
    with torch.no_grad():
        r.proj.weight[0] += 5.0 * torch.ones(16)  # expert 0 wins for most inputs
    x = torch.rand(64, 16)
    load = r(x).load
    assert load[0] == load.max() and r.score_bias[0] == -0.01
    assert (r.score_bias[load < load.mean()] == 0.01).all()
    r.eval()(x)
    assert r.score_bias[0] == -0.01, "inference leaves the bias alone"


@pytest.mark.parametrize(
    "kwargs, key",
    [({"n_groups": 3}, "n_groups"), ({"top_k_groups": 5}, "top_k_groups"), ({"top_k_groups": 1, "top_k": 3}, "top_k_groups"), ({"bias_update_rate": -1.0}, "bias_update_rate")],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        router(**kwargs)


def test_a_model_with_the_router_passes_the_contract():
    from zoo.testing import check_contract

    check_contract(["model/ffn=moe", "model/ffn/router=grouped_sigmoid", "model.ffn.router.n_groups=2", "model.ffn.n_shared_experts=1"])
