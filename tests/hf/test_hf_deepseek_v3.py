"""DeepSeek-V3 (zoo/hf/deepseek_v3.py): the layouts it converts and the router settings it reads, each shown to matter."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from hf_cases import CASES, DEEPSEEK, TOL, inputs  # noqa: E402

from zoo.errors import ConfigError  # noqa: E402
from zoo.hf import from_pretrained, hf_overrides  # noqa: E402
from zoo.hf.checkpoint import HFCheckpoint  # noqa: E402
from zoo.hf.deepseek_v3 import interleaved_to_halves, permute_rope_rows  # noqa: E402
from zoo.hf.parity import hf_logits, zoo_logits  # noqa: E402

ROUTER = "model.layers.kinds.moe.ffn.router"


@pytest.fixture(scope="module")
def hf():
    return CASES["deepseek-v3"]()


@pytest.mark.parametrize("override", [f"{ROUTER}.top_k_groups=4", f"{ROUTER}.scale=1.0", f"{ROUTER}.renormalize=false", "model.layers.pattern=[moe]"])
def test_each_router_setting_changes_the_logits(hf, override):
    """The parity case engages group limits, the scale, renormalisation and the dense first layer."""
    tokens, _ = inputs(hf)
    model = from_pretrained(hf, overrides=[override], strict=False)
    assert (zoo_logits(model, tokens) - hf_logits(hf, tokens)).abs().max() > 10 * TOL


def test_the_correction_bias_is_loaded(hf):
    model = from_pretrained(hf)
    bias = hf.model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.abs().max() > 0 and torch.equal(model.stack.layers[1].ffn.router.score_bias, bias)


def test_reading_interleaved_pairs_as_halves_breaks_parity(hf, tmp_path):
    """rope_interleave is a real layout difference: the same weights read without the permutation differ."""
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_interleave": False}))
    tokens, _ = inputs(hf)
    assert (zoo_logits(from_pretrained(tmp_path), tokens) - hf_logits(hf, tokens)).abs().max() > 10 * TOL


def test_rope_rows_permute_back():
    w = torch.randn(3 * (5 + 8), 7)
    order = interleaved_to_halves(8)
    there = permute_rope_rows(w, heads=3, nope=5, rope=8, order=order)
    assert not torch.equal(there, w)
    assert torch.equal(permute_rope_rows(there, heads=3, nope=5, rope=8, order=order.argsort()), w)


def config(**changes) -> dict:
    return {"model_type": "deepseek_v3", "vocab_size": 128, **DEEPSEEK, "q_lora_rank": 20, "first_k_dense_replace": 1} | changes


@pytest.mark.parametrize(
    "changes, key",
    [({"num_key_value_heads": 2}, "num_key_value_heads"), ({"hidden_act": "gelu"}, "hidden_act"), ({"n_shared_experts": 0}, "n_shared_experts")],
)
def test_settings_zoo_cannot_build_are_named(changes, key):
    with pytest.raises(ConfigError, match=key):
        hf_overrides(HFCheckpoint(config(**changes), {}, "test"))


def test_all_dense_layers_need_no_experts():
    overrides = hf_overrides(HFCheckpoint(config(first_k_dense_replace=3, tie_word_embeddings=True), {}, "test"))[2]
    assert "model/ffn=swiglu" in overrides and not any("moe" in o for o in overrides)


def test_the_multi_token_prediction_layer_is_skipped_as_transformers_skips_it(hf):
    """DeepSeek-V3's checkpoints hold one more layer than num_hidden_layers, which only speculative decoding uses."""
    from zoo.hf.checkpoint import read
    from zoo.hf.convert import to_zoo

    ckpt = read(hf)
    mtp = {k.replace("model.layers.2.", "model.layers.3."): v for k, v in ckpt.weights.items() if k.startswith("model.layers.2.")}
    family = hf_overrides(ckpt)[0]
    assert to_zoo(family, HFCheckpoint(ckpt.config, {**ckpt.weights, **mtp}, "mtp"), tie=False).keys() == from_pretrained(hf).state_dict().keys()
