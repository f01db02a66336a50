import math

import pytest

from zoo.testing import build_tiny


def test_normal_init_std():
    model = build_tiny(["model.dim=256", "model/init=normal"])
    assert model.stack.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.stack.layers[0].attn.o_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_gpt2_init_scales_residual_outputs():
    model = build_tiny(["model.dim=256", "model.n_layers=8", "model/init=gpt2", "model/ffn=gelu"])
    layer = model.stack.layers[0]
    assert layer.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert layer.attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert layer.ffn.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)


def test_deepnorm_residual_overrides_the_scheme():
    model = build_tiny(["model.dim=256", "model/residual=deepnorm"])
    beta = (8 * 2) ** -0.25
    w = model.stack.layers[0].attn.v_proj.weight
    assert w.std().item() == pytest.approx(beta * math.sqrt(2 / sum(w.shape)), rel=0.1)
