"""Gemma, Gemma 2 and Gemma 3 (zoo/hf/gemma.py): what their mapping reads beyond Llama's, each setting shown to matter."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_cases import CASES, TOL, inputs  # noqa: E402

from zoo.errors import ConfigError  # noqa: E402
from zoo.hf import from_pretrained, hf_overrides  # noqa: E402
from zoo.hf.checkpoint import HFCheckpoint  # noqa: E402
from zoo.hf.parity import hf_logits, zoo_logits  # noqa: E402

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@pytest.mark.parametrize(
    "case, override",
    [
        ("gemma-mqa-wide-heads", "model.scale_embed=false"),
        ("gemma-mqa-wide-heads", "model.ffn.approximate=none"),
        ("gemma2-window-4-capped", "model.scale_embed=false"),
        ("gemma2-window-4-capped", "model.attention.scale=null"),
        ("gemma2-window-4-capped", "model.attention.softcap=null"),
        ("gemma2-window-4-capped", "model.logit_softcap=null"),
        ("gemma2-window-4-capped", "model.layers.kinds.local.attention.window=null"),
        ("gemma3-local-rope", "model.layers.kinds.local.pos.theta=10000.0"),
        ("gemma3-local-rope", "model.logit_softcap=null"),
    ],
)
def test_each_setting_the_mapping_reads_changes_the_logits(case, override):
    """The parity cases engage every Gemma setting: leaving one out breaks parity, so parity tests it."""
    hf = CASES[case]()
    tokens, _ = inputs(hf)
    assert (zoo_logits(from_pretrained(hf, overrides=[override]), tokens) - hf_logits(hf, tokens)).abs().max() > 10 * TOL


def test_gemma_norm_weights_are_stored_as_one_plus_weight():
    hf = CASES["gemma-mqa-wide-heads"]()
    model = from_pretrained(hf)
    layer = hf.model.layers[1]
    assert torch.equal(model.stack.layers[1].norms[1].weight, 1 + layer.post_attention_layernorm.weight)
    assert torch.equal(model.stack.norm.weight, 1 + hf.model.norm.weight)


@pytest.mark.parametrize("spelling", [dict(hidden_act="gelu"), dict(hidden_act="gelu", hidden_activation="gelu_pytorch_tanh"), {}])
def test_a_released_gemma_config_means_tanh_gelu(spelling):
    """gemma-2b says hidden_act=gelu, gemma-1.1 adds hidden_activation=gelu_pytorch_tanh: both are the tanh
    GeLU, as transformers 5 reads them; the 2B model's one KV head and 256-wide heads carry over."""
    config = dict(model_type="gemma", num_hidden_layers=2, **{**SIZES, "num_key_value_heads": 1}, **spelling)
    cfg = import_config_of(config)
    assert transformers.GemmaConfig(**{k: v for k, v in config.items() if k not in ("model_type", "hidden_activation")}).hidden_act == "gelu_pytorch_tanh"
    assert cfg.model.ffn._target_ == "zoo.ffn.GeGLU" and cfg.model.ffn.approximate == "tanh"
    assert cfg.hydra.runtime.choices["model/attention"] == "mqa" and cfg.model.head_dim == 16
    assert cfg.model.scale_embed and cfg.model.tie_embeddings


def test_norm_weights_are_stored_as_one_plus_weight():
    hf = CASES["gemma3-local-rope"]()
    model = from_pretrained(hf)
    layer = hf.model.layers[0]
    assert torch.equal(model.stack.layers[0].norms[2].weight, 1 + layer.pre_feedforward_layernorm.weight)
    assert torch.equal(model.stack.layers[0].attn.qk_norm.k_norm.weight, 1 + layer.self_attn.k_norm.weight)
    assert torch.equal(model.stack.norm.weight, 1 + hf.model.norm.weight)


@pytest.mark.parametrize("model_type, layers, option", [("gemma2", 4, "local_global_1to1"), ("gemma3_text", 8, "local_global_5to1")])
def test_default_layer_types_name_their_pattern(model_type, layers, option):
    config = dict(model_type=model_type, num_hidden_layers=layers, **SIZES)
    cfg = import_config_of(config)
    assert cfg.hydra.runtime.choices["model/layers"] == option
    kinds = ["local" if (i + 1) % (2 if model_type == "gemma2" else 6) else "global" for i in range(layers)]
    assert [cfg.model.layers.pattern[i % len(cfg.model.layers.pattern)] for i in range(layers)] == kinds


def import_config_of(config: dict):
    from zoo.config import compose

    return compose(hf_overrides(HFCheckpoint(config, {}, "test"))[2])


def test_a_transformers_4_gemma3_config_maps_as_transformers_5_reads_it():
    """4.x spelled the RoPEs rope_theta + rope_scaling (global) and rope_local_base_freq, the rhythm
    sliding_window_pattern; transformers 5 converts them to rope_parameters per layer type and layer_types."""
    old = dict(
        model_type="gemma3_text", num_hidden_layers=5, sliding_window=8, rope_theta=1e5, rope_local_base_freq=100.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=3, **SIZES,
    )  # fmt: skip
    new = transformers.Gemma3TextConfig(**{k: v for k, v in old.items() if k != "model_type"}).to_dict()
    assert "layer_types" in new and "sliding_attention" in new["rope_parameters"]
    overrides = hf_overrides(HFCheckpoint(old, {}, "4.x"))[2]
    assert overrides == hf_overrides(HFCheckpoint(new, {}, "5.x"))[2]
    assert "model.layers.pattern=[local,local,global]" in overrides and "model.layers.kinds.local.pos.theta=100.0" in overrides


def test_a_transformers_4_gemma2_config_keeps_its_rope_theta():
    overrides = hf_overrides(HFCheckpoint(dict(model_type="gemma2", num_hidden_layers=2, rope_theta=500.0, **SIZES), {}, "4.x"))[2]
    assert "model.pos.theta=500.0" in overrides


def test_a_gemma3_without_a_mix_of_layers_is_uniform():
    """All local: the model's window and the local RoPE; no layer pattern."""
    config = dict(model_type="gemma3_text", num_hidden_layers=2, layer_types=["sliding_attention"] * 2, sliding_window=8, **SIZES)
    cfg = import_config_of(config)
    assert cfg.model.attention.window == 8 and cfg.model.pos.theta == 1e4
    assert cfg.hydra.runtime.choices["model/layers"] == "uniform"


@pytest.mark.parametrize(
    "config, key",
    [
        (dict(model_type="gemma3_text", attn_logit_softcapping=50.0), "attn_logit_softcapping"),
        (dict(model_type="gemma2", use_bidirectional_attention=True), "use_bidirectional_attention"),
        (dict(model_type="gemma", use_bidirectional_attention=True), "use_bidirectional_attention"),
        (dict(model_type="gemma", hidden_act="silu"), "hidden_activation"),  # 4.x read tanh GeLU, 5.x SiLU
        (dict(model_type="gemma", hidden_act="gelu", hidden_activation="gelu"), "hidden_activation"),
        (dict(model_type="gemma2", layer_types=["sliding_attention", "chunked_attention"]), "layer_types"),
        (dict(model_type="gemma2", hidden_activation="quick_gelu"), "hidden_activation"),
        (dict(model_type="gemma3", text_config={}), "model_type"),  # the multimodal model: text only here
    ],
)
def test_settings_zoo_cannot_build_are_named(config, key):
    config = dict(num_hidden_layers=2, **SIZES) | config
    with pytest.raises(ConfigError, match=key):
        hf_overrides(HFCheckpoint(config, {}, "test"))


def test_a_gemma3_round_trip_keeps_each_layer_types_rope(tmp_path):
    from zoo.hf import save_pretrained

    hf = CASES["gemma3-local-rope"]()
    model, cfg = from_pretrained(hf, with_config=True)
    save_pretrained(model, tmp_path, config=cfg)
    exported = transformers.AutoConfig.from_pretrained(str(tmp_path))
    assert exported.rope_parameters == hf.config.rope_parameters and exported.layer_types == hf.config.layer_types
