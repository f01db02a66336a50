"""LoRA: starts as the base model, merges exactly, trains only itself, round-trips through PEFT, resumes exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.errors import ConfigError
from zoo.finetune.lora import LoRA, LoRALinear
from zoo.train import run

SMOKE = ["experiment=smoke", "model.vocab_size=276"]


def _model():
    torch.manual_seed(0)
    return zoo.build(SMOKE)


def _tokens():
    return torch.randint(0, 276, (2, 12), generator=torch.Generator().manual_seed(1))


def _randomise_b(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.normal_(std=0.1)


def test_b_zero_leaves_the_logits_unchanged():
    model = _model()
    before = model(_tokens())
    LoRA(rank=4, targets="all_linear").apply(model)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * 7  # q k v o gate up down per layer
    torch.testing.assert_close(model(_tokens()), before, rtol=0, atol=0)


def test_merged_and_unmerged_adapters_give_the_same_logits():
    model, adapter = _model(), LoRA(rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    names = set(model.state_dict())
    adapter.apply(model)
    _randomise_b(model)
    unmerged = model(_tokens())
    adapter.merge(model)
    assert set(model.state_dict()) == names and not any(isinstance(m, LoRALinear) for m in model.modules())
    merged = model(_tokens())
    assert not torch.allclose(unmerged, _model()(_tokens()), atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_only_adapter_parameters_receive_gradients():
    model = _model()
    LoRA(rank=2, targets=["q_proj", "stack.layers.1.ffn.*"]).apply(model)
    _randomise_b(model)
    model(_tokens()).logsumexp(-1).mean().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable and got and all(".lora_" in n for n in got)
    assert {n.rsplit(".lora_", 1)[0] for n in got} == {"stack.layers.0.attn.q_proj", "stack.layers.1.attn.q_proj"} | {
        f"stack.layers.1.ffn.{p}" for p in ("gate_proj", "up_proj", "down_proj")
    }


@pytest.mark.parametrize(
    "kwargs, key", [({"rank": 0}, "adapter.rank"), ({"targets": ["qkv"]}, "adapter.targets"), ({"dropout": 1.0}, "adapter.dropout")]
)
def test_bad_settings_are_one_line_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key) as e:
        LoRA(**kwargs).apply(_model())
    assert "\n" not in str(e.value)


def test_the_adapter_group_composes_and_sweeps_ranks_and_targets():
    cfg = zoo.compose(["adapter=lora", "adapter.rank=4", "adapter.targets=all_linear"])
    assert cfg.adapter.rank == 4 and cfg.adapter.targets == "all_linear"
    assert zoo.compose([]).adapter._target_.endswith("FullFineTuning")


def test_a_lora_run_trains_and_checkpoints_only_the_adapter_and_resumes_exactly(tmp_path, tiny, base_run):
    common = [*tiny, f"trainer.init_from={base_run}", "adapter=lora", "adapter.rank=2", "adapter.dropout=0.1", "optim.lr=1e-2"]
    whole = run([*common, "trainer.ckpt_every=2", "trainer.keep_last=0"], out_dir=tmp_path / "whole")
    assert whole.metrics["parameters_trainable"] == 2 * 2 * (2 * 32 * 2)  # layers x (q, v) x (A + B) of rank 2, dim 32
    step2 = tmp_path / "whole" / "checkpoints" / "step_00000002"
    saved = load_file(str(step2 / "trainable.safetensors"))
    assert not (step2 / "model.safetensors").exists() and saved and all(".lora_" in k for k in saved)
    resumed = run([*common, f"trainer.resume={step2}"], out_dir=tmp_path / "resumed")
    assert resumed.history == whole.history[2:]
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]


def test_merge_writes_a_model_with_the_runs_logits_and_peft_loads_the_adapter(tmp_path, tiny, base_run):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from zoo.finetune.merge import load_run, main

    result = run([*tiny, f"trainer.init_from={base_run}", "adapter=lora", "adapter.rank=4", "adapter.targets=all_linear", "optim.lr=3e-2"], out_dir=tmp_path / "run")
    assert main([str(tmp_path / "run"), str(tmp_path / "out"), "--peft", "--hf"]) == 0
    adapted, _, _, _ = load_run(result.checkpoint)
    tokens = _tokens()
    with torch.no_grad():
        want = adapted(tokens)
        merged = zoo.hf.load(tmp_path / "out")
        torch.testing.assert_close(merged(tokens), want, rtol=1e-4, atol=1e-4)
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "base_hf", attn_implementation="eager").eval()
        assert (base(tokens).logits - want).abs().max() > 1e-3  # the trained adapter matters
        with_peft = peft.PeftModel.from_pretrained(base, tmp_path / "out" / "peft").eval()
        torch.testing.assert_close(with_peft(tokens).logits, want, rtol=1e-4, atol=1e-4)
        hf_merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf", attn_implementation="eager").eval()
        torch.testing.assert_close(hf_merged(tokens).logits, want, rtol=1e-4, atol=1e-4)
    config = json.loads((tmp_path / "out" / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 4 and "model.layers.0.mlp.down_proj" in config["target_modules"]
