"""Export to Hugging Face checkpoints: transformers loads them, with equal logits, and they import back."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hf_cases import CASES, TOL, inputs  # noqa: E402

import zoo  # noqa: E402
from zoo.config import instantiate_model  # noqa: E402
from zoo.errors import ConfigError  # noqa: E402
from zoo.hf import from_pretrained, save_pretrained  # noqa: E402
from zoo.hf.parity import hf_logits, load_hf, zoo_logits  # noqa: E402

SMALL = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.vocab_size=128", "model.max_seq_len=64"]


def load_exported(folder, auto_class: str) -> torch.nn.Module:
    """The exported folder in transformers, refusing any missing, unexpected or reshaped tensor."""
    cls = getattr(transformers, auto_class)
    model, info = cls.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize(
    "case",
    [
        "llama-biases-tied-wide-heads", "llama-3.1-rope", "llama-yarn-rope", "llama-linear-rope", "mistral-window-4",
        "mixtral-window-6", "qwen2", "qwen3-window-5", "qwen3-biases-tied", "olmo2", "gemma-mqa-wide-heads", "gemma-biases", "gemma2-window-4-capped", "gemma3-local-rope", "deepseek-v3", "deepseek-v3-yarn-biases", "gpt2", "bloom-6-heads",
        "falcon-40b-style", "gpt-neox", "t5-v1.1-untied",
    ],
)
def test_round_trip_gives_identical_weights(case, tmp_path):
    hf = CASES[case]()
    model, cfg = from_pretrained(hf, with_config=True)
    save_pretrained(model, tmp_path, config=cfg)
    exported = load_exported(tmp_path, "AutoModelForSeq2SeqLM" if hf.config.is_encoder_decoder else "AutoModelForCausalLM")
    tokens, src = inputs(hf)
    assert torch.equal(hf_logits(exported, tokens, src=src), hf_logits(hf, tokens, src=src))
    again = from_pretrained(tmp_path).state_dict()
    assert again.keys() == model.state_dict().keys()
    assert all(torch.equal(w, again[name]) for name, w in model.state_dict().items())


@pytest.mark.parametrize(
    "overrides",
    [
        ["preset=llama"],
        ["preset=llama", "model/pos=rope_llama3", "model.pos.original_max_seq_len=8"],
        ["preset=llama", "model/pos=rope_yarn", "model.pos.original_max_seq_len=4"],
        ["preset=llama", "model/pos=rope_dynamic", "model.pos.factor=3.0"],
        ["preset=mistral", "model.attention.window=4"],
        ["preset=llama", "model/attention=qk_norm", "model.attention.n_kv_heads=2"],
        ["preset=llama", "model/residual=reordered", "model/attention=qk_norm_across_heads"],
        ["preset=gemma", "model.head_dim=32"],
        ["preset=gemma2", "model.layers.kinds.local.attention.window=4", "model.attention.scale=0.25"],
        ["preset=gemma3", "model.layers.kinds.local.attention.window=4", "model.layers.pattern=[local,global]"],
        ["preset=deepseek_v3", "model.head_dim=8"],
        ["preset=gpt2"],
        ["preset=gpt2", "model/ffn=relu2", "~model.ffn.approximate"],
        ["preset=bloom", "model.tie_embeddings=false"],
        ["preset=palm", "model/norm=layernorm", "model/ffn=gelu", "model.norm.bias=true"],
    ],
    ids=["llama", "llama-3.1-rope", "llama-yarn-rope", "llama-dynamic-rope", "mistral", "qwen3", "olmo2", "gemma", "gemma2", "gemma3", "deepseek-v3", "gpt2", "gpt2-squared-relu", "bloom-untied", "falcon-from-palm"],
)
def test_composed_models_export_with_parity(overrides, tmp_path):
    torch.manual_seed(0)
    cfg = zoo.compose([*overrides, *SMALL])
    model = instantiate_model(cfg.model).eval()
    save_pretrained(model, tmp_path, config=cfg)
    tokens = torch.randint(0, 128, (2, 12))
    diff = (zoo_logits(model, tokens) - hf_logits(load_hf(tmp_path), tokens)).abs().max()
    assert diff <= TOL


def test_a_squared_relu_gpt2_imports_back_as_relu2(tmp_path):
    """transformers' ``relu2`` is Primer's squared ReLU: exported from ``model/ffn=relu2`` and read back as it."""
    from zoo.ffn import SquaredReLUMLP

    torch.manual_seed(0)
    cfg = zoo.compose(["preset=gpt2", "model/ffn=relu2", "~model.ffn.approximate", *SMALL])
    model = instantiate_model(cfg.model).eval()
    save_pretrained(model, tmp_path, config=cfg)
    again = from_pretrained(tmp_path).eval()
    assert all(isinstance(layer.ffn, SquaredReLUMLP) for layer in again.stack.layers)
    tokens = torch.randint(0, 128, (2, 12))
    torch.testing.assert_close(zoo_logits(again, tokens), zoo_logits(model, tokens))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["preset=llama", "model/residual=sandwich"], "model.residual._target_"),
        (["preset=t5", "model.attention.scale=null"], "model.attention.scale"),  # T5 does not scale its scores
        (["preset=t5", "model/layers=local_global_1to1"], "T5ForConditionalGeneration: model.layers.pattern"),
        (["preset=t5", "model/layers@model.decoder_layers=local_global_1to1"], "T5ForConditionalGeneration: model.decoder_layers.pattern"),
        # settings some families have are refused by those that lack them, not dropped
        (["preset=llama", "model.logit_softcap=30.0"], "LlamaForCausalLM: model.logit_softcap"),
        (["preset=llama", "model/attention=softcap"], "LlamaForCausalLM: model.attention.softcap"),
        (["preset=gemma", "model.ffn.approximate=none"], "GemmaForCausalLM: model.ffn.approximate"),  # transformers reads gelu as tanh
        (["preset=gemma", "model.logit_softcap=30.0"], "GemmaForCausalLM: model.logit_softcap"),
        (["preset=gemma3", "model/attention=softcap"], "Gemma3ForCausalLM: model.attention.softcap"),
        (["preset=llama", "model/attention=bigbird"], "LlamaForCausalLM: model.attention.pattern"),  # exported dense, it would see more
        (["preset=mistral", "model.attention.sinks=true"], "MistralForCausalLM: model.attention.sinks"),  # no family carries sinks
        (["preset=llama", "model/attention=performer"], "LlamaForCausalLM: model.attention._target_"),
        (["preset=llama", "model/attention=mamba2"], "LlamaForCausalLM: model.attention._target_"),
        (["preset=gemma2", "model.layers.kinds.global.attention.window=8"], "Gemma2ForCausalLM: model.layers.kinds"),  # one sliding_window
        (["preset=gemma2", "+model.layers.kinds.local.pos.theta=100.0"], "Gemma2ForCausalLM: model.layers.kinds.local.pos"),  # one RoPE
        (["preset=deepseek_v3", "model.layers.pattern=[moe,dense]"], "DeepseekV3ForCausalLM: model.layers.pattern"),  # dense layers first
        (["preset=deepseek_v3", "model.attention.scale=0.3"], "DeepseekV3ForCausalLM: model.attention.scale"),  # YaRN only
        (["preset=deepseek_v3", "model.attention.softcap=30.0"], "DeepseekV3ForCausalLM: model.attention.softcap"),
        (["preset=gemma2", "model.attention.scale=0.3"], "Gemma2ForCausalLM: model.attention.scale"),  # not 1 / sqrt(a whole number)
    ],
)
def test_compositions_outside_every_family_are_refused(overrides, key, tmp_path):
    cfg = zoo.compose([*overrides, *SMALL])
    with pytest.raises(ConfigError, match=key):
        save_pretrained(instantiate_model(cfg.model), tmp_path, config=cfg)
