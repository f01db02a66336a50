"""AdamW's decay groups and the learning-rate schedules."""

import math

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.train.optim import AdamW, WarmupConstant, WarmupCosine, WarmupLinear, WarmupStableDecay, param_groups

TINY = ["model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.vocab_size=61", "model.max_seq_len=16"]


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("overrides", [[], ["model/norm=layernorm", "model/pos=learned", "model.tie_embeddings=false", "model.attention.bias=true"]])
def test_decay_skips_norms_biases_and_embeddings(overrides):
    model = zoo.build([*TINY, *overrides])
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed, exempt = _names(model, decay["params"]), _names(model, no_decay["params"])
    assert not decayed & exempt
    assert decayed | exempt == {n for n, _ in model.named_parameters()}
    assert "embed.weight" in exempt and not any("norm" in n for n in decayed)
    assert not any(n.endswith("bias") for n in decayed)
    assert "stack.layers.0.attn.q_proj.weight" in decayed and "stack.layers.0.ffn.down_proj.weight" in decayed
    if "model/pos=learned" in overrides:
        assert "stack.pos.weight" in exempt
        assert "lm_head.weight" in decayed  # an untied head is a projection


def test_tied_head_counted_once_and_exempt():
    model = zoo.build(TINY)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert model.lm_head.weight is model.embed.weight
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_adamw_is_the_llama_recipe():
    opt = AdamW().build(zoo.build(TINY))
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.param_groups[0]["weight_decay"] == 0.1


def test_cosine_warms_up_then_decays_to_the_floor():
    s = WarmupCosine(warmup_steps=10, min_lr_ratio=0.1)
    f = [s.factor(i, max_steps=100) for i in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.1) and f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_other_schedules():
    assert WarmupLinear(warmup_steps=0, min_lr_ratio=0.0).factor(50, max_steps=100) == pytest.approx(0.5)
    assert WarmupConstant(warmup_steps=5).factor(99, max_steps=100) == 1.0
    wsd = WarmupStableDecay(warmup_steps=0, decay_fraction=0.2)
    assert wsd.factor(70, max_steps=100) == 1.0 and wsd.factor(90, max_steps=100) == pytest.approx(0.5)


def test_schedule_sets_every_group():
    opt = AdamW(lr=1.0).build(zoo.build(TINY))
    lr = WarmupCosine(warmup_steps=4).apply(opt, step=1, max_steps=10, lr=2.0)
    assert lr == pytest.approx(1.0) and all(g["lr"] == lr for g in opt.param_groups)


@pytest.mark.parametrize("make, key", [(lambda: AdamW(lr=0), "optim.lr"), (lambda: AdamW(betas=(0.9, 1.5)), "optim.betas"), (lambda: WarmupCosine(min_lr_ratio=2), "sched.min_lr_ratio")])
def test_bad_settings_name_the_key(make, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        make()


def test_weight_decay_leaves_exempt_params_alone():
    model = zoo.build(TINY)
    opt = AdamW(lr=0.1, weight_decay=0.5).build(model)
    norm, proj = model.stack.norm.weight, model.stack.layers[0].attn.q_proj.weight
    norm_before, proj_before = norm.detach().clone(), proj.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(norm, norm_before)  # zero gradient and no decay: unchanged
    assert torch.allclose(proj, proj_before * (1 - 0.1 * 0.5))  # decoupled decay: w <- w (1 - lr wd)


def test_adamw_uses_the_fused_kernel_on_cpu_and_steps_as_the_loop_does():
    model, twin = zoo.build(TINY), zoo.build(TINY)
    twin.load_state_dict(model.state_dict())
    fused, loop = AdamW().build(model), AdamW(fused=False).build(twin)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for m, opt in ((model, fused), (twin, loop)):
        for _ in range(3):
            m(torch.arange(12)[None] % 61).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
