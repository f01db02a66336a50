"""Reading checkpoint folders, the ``zoo-import`` CLI, ablation overrides, and refusing what zoo cannot build."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from hf_cases import CASES, TOL, inputs  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from zoo.errors import ConfigError  # noqa: E402
from zoo.hf import from_pretrained, hf_overrides, import_config, load  # noqa: E402
from zoo.hf.checkpoint import HFCheckpoint, read  # noqa: E402
from zoo.hf.cli import main  # noqa: E402
from zoo.hf.convert import merge_overrides, to_zoo  # noqa: E402
from zoo.hf.parity import hf_logits, zoo_logits  # noqa: E402


@pytest.fixture(scope="module")
def llama():
    return CASES["llama"]()


def test_cli_imports_a_sharded_folder_and_checks_parity(llama, tmp_path, capsys):
    llama.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert main([str(tmp_path / "hf"), str(tmp_path / "zoo"), "--check", "model.attention.kernel=eager"]) == 0
    assert "parity: max_abs_diff=" in capsys.readouterr().out
    config = (tmp_path / "zoo" / "config.yaml").read_text()
    assert "model/pos=rope" in config and "kernel: eager" in config
    tokens, _ = inputs(llama)
    assert (zoo_logits(load(tmp_path / "zoo"), tokens) - hf_logits(llama, tokens)).abs().max() <= TOL


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "local checkpoint folder" in capsys.readouterr().err


def test_a_base_model_checkpoint_with_legacy_buffers_imports(tmp_path):
    """The hub's gpt2: saved from GPT2Model (no ``transformer.`` prefix), with its causal-mask buffers."""
    hf = CASES["gpt2"]()
    weights = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    weights |= {f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(2)}
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config = {k: v for k, v in hf.config.to_dict().items() if k in ("model_type", "vocab_size", "n_embd", "n_layer", "n_head", "n_positions")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokens, _ = inputs(hf)
    assert (zoo_logits(from_pretrained(tmp_path), tokens) - hf_logits(hf, tokens)).abs().max() <= TOL


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ConfigError, match="safetensors only"):
        read(tmp_path)


def test_remote_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Model"}}))
    with pytest.raises(ConfigError, match="auto_map"):
        read(tmp_path)


def llama_config(**changes) -> dict:
    config = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    return config | changes


@pytest.mark.parametrize(
    "config, key",
    [
        (llama_config(rope_parameters={"rope_type": "longrope", "rope_theta": 5e5, "factor": 8.0}), "rope_parameters.rope_type"),
        (llama_config(rope_scaling={"type": "llama3", "factor": 8.0, "short_factor": [1.0]}), "rope_parameters.short_factor"),
        (dict(model_type="gpt_neox", rope_scaling={"type": "linear", "factor": 2.0}), "rope_parameters.rope_type"),
        (llama_config(model_type="mamba"), "model_type"),
        (llama_config(model_type="mixtral", num_local_experts=4, hidden_act="quick_gelu"), "hidden_act"),
        (llama_config(hidden_act="quick_gelu"), "hidden_act"),
        (dict(model_type="qwen2", **{k: v for k, v in llama_config().items() if k != "model_type"}, use_sliding_window=True, max_window_layers=1), "layer_types"),
        (dict(model_type="falcon", alibi=True), "alibi"),
        (dict(model_type="falcon", new_decoder_architecture=True, parallel_attn=False), "parallel_attn"),
        (dict(model_type="gpt2", scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(model_type="bloom", apply_residual_connection_post_layernorm=True), "apply_residual_connection_post_layernorm"),
        (dict(model_type="t5", feed_forward_proj="gated-quick_gelu"), "feed_forward_proj"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_features_zoo_lacks_are_named(config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        hf_overrides(HFCheckpoint(config=config, weights={}, source="test"))


def test_unknown_settings_are_refused_but_metadata_passes(monkeypatch):
    from zoo.hf.llama import Llama

    assert hf_overrides(HFCheckpoint(llama_config(is_llama_config=True, tie_word_embeddings=True), {}, "smollm"))
    # a setting transformers' LlamaConfig has and the mapping would not know
    monkeypatch.setattr(Llama, "known_keys", Llama.known_keys - {"mlp_bias"})
    with pytest.raises(ConfigError, match="mlp_bias"):
        hf_overrides(HFCheckpoint(llama_config(mlp_bias=True), {}, "test"))


def test_every_tensor_must_find_its_place(llama):
    ckpt = read(llama)
    family, tie, _ = hf_overrides(ckpt)
    extra = HFCheckpoint(ckpt.config, {**ckpt.weights, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, "test")
    with pytest.raises(ConfigError, match="no place"):
        to_zoo(family, extra, tie=tie)
    missing = HFCheckpoint(ckpt.config, {k: v for k, v in ckpt.weights.items() if "layers.1.mlp" not in k}, "test")
    with pytest.raises(ConfigError, match="are not in"):
        to_zoo(family, missing, tie=tie)


def test_overrides_start_an_ablation_from_the_checkpoint(llama):
    base = ["model/pos=rope", "model.pos.theta=500000.0", "model.dim=64"]
    assert merge_overrides(base, ["model/pos=alibi", "model.dim=64"]) == ["model/pos=alibi", "model.dim=64"]
    alibi = from_pretrained(llama, overrides=["model/pos=alibi"])
    assert type(alibi.stack.pos).__name__ == "ALiBi"
    assert import_config(llama, overrides=["model/pos=alibi"]).model.pos._target_ == "zoo.pos.ALiBi"


def test_overrides_that_add_parameters_need_strict_false(llama):
    with pytest.raises(ConfigError, match="strict=False"):
        from_pretrained(llama, overrides=["model/norm=layernorm"])
    model = from_pretrained(llama, overrides=["model/norm=layernorm"], strict=False)
    assert torch.equal(model.stack.norm.weight, llama.model.norm.weight)


def test_a_key_transformers_derives_from_the_rest_passes_and_a_contradicting_one_is_refused(monkeypatch):
    from zoo.hf.llama import Llama

    pytest.importorskip("transformers")
    # LlamaConfig derives num_key_value_heads = num_attention_heads when it is absent: the same model
    monkeypatch.setattr(Llama, "known_keys", Llama.known_keys - {"num_key_value_heads"})
    assert hf_overrides(HFCheckpoint(llama_config(num_key_value_heads=4, tie_word_embeddings=True), {}, "derived"))
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        hf_overrides(HFCheckpoint(llama_config(num_key_value_heads=2, tie_word_embeddings=True), {}, "not derived"))


@pytest.mark.parametrize("multi_query, derived, ok", [(True, 1, True), (False, 4, True), (True, 4, False)])
def test_falcon_checks_the_kv_heads_it_is_told_against_the_ones_it_derives(multi_query, derived, ok):
    config = dict(model_type="falcon", vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    ckpt = HFCheckpoint(config | dict(multi_query=multi_query, num_key_value_heads=derived), {}, "falcon")
    if ok:
        assert f"model.attention.n_kv_heads={derived}" in hf_overrides(ckpt)[2]
    else:
        with pytest.raises(ConfigError, match=r"hf_config\.num_key_value_heads"):
            hf_overrides(ckpt)
