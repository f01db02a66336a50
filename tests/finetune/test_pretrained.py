"""trainer.init_from: every tensor loads, or the difference is reported (strict refuses it)."""

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.errors import ConfigError
from zoo.finetune.pretrained import load_weights, rebase_model
from zoo.train import run

SMOKE = ["experiment=smoke", "model.vocab_size=276"]


def _model(*overrides):
    torch.manual_seed(0)
    return zoo.build([*SMOKE, *overrides])


def test_strict_load_fills_every_tensor_and_copies_it():
    source, model = _model(), _model("model.attention.qkv_bias=false")
    torch.manual_seed(1)
    for p in source.parameters():
        p.data.normal_()
    report = load_weights(model, source.state_dict())
    assert report.complete and not report.new and not report.dropped
    for (name, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_tied_matrix_stored_once_fills_both_names():
    source, model = _model(), _model()
    weights = {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}
    report = load_weights(model, weights)
    assert report.complete and "lm_head.weight" in report.loaded and model.lm_head.weight is model.embed.weight


def test_new_tensors_are_refused_under_strict_and_reported_otherwise():
    source, model = _model(), _model("model.attention.qkv_bias=true")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"trainer.init_from.*6 new \(stack.layers.0.attn.q_proj.bias"):
        load_weights(model, source.state_dict())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a refused load changes nothing
    report = load_weights(model, source.state_dict(), strict=False)
    assert sorted(report.new) == sorted(f"stack.layers.{i}.attn.{p}_proj.bias" for i in range(2) for p in "qkv")
    assert not report.dropped and not report.complete
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    for name in report.new:
        assert torch.equal(model.state_dict()[name], before[name])  # new tensors keep their init


def test_dropped_grown_and_reshaped_tensors_are_named():
    source = _model("model.attention.qkv_bias=true", "model.vocab_size=260")
    model = _model("model.ffn.hidden_dim=96")
    report = load_weights(model, source.state_dict(), strict=False)
    assert len(report.dropped) == 6 and all(n.endswith("_proj.bias") for n in report.dropped)
    assert set(report.grown) == {"embed.weight", "lm_head.weight"}
    assert torch.equal(model.embed.weight[:260], source.embed.weight)  # the old rows; new rows keep their init
    assert report.reshaped and all(".ffn." in n for n in report.reshaped)


def test_rebase_takes_the_sources_model_and_the_command_lines_model_keys():
    source = zoo.compose(["experiment=smoke", "model.dim=48", "model/pos=alibi"]).model
    composed = zoo.compose(["model=prefix", "model/ffn=gelu", "model.dropout=0.1"]).model
    model = rebase_model(source, composed, ["model=prefix", "model/ffn=gelu", "model.dropout=0.1", "trainer.max_steps=3"])
    assert model._target_ == "zoo.arch.PrefixLM" and model.dim == 48 and model.pos._target_ == source.pos._target_
    assert model.ffn._target_ == composed.ffn._target_ and model.dropout == 0.1


def test_init_from_a_run_starts_from_its_weights_with_a_fresh_optimizer(tmp_path, tiny, base_run):
    # a learning rate of 1e-30 moves no float32 weight: the checkpoint holds the initial weights
    result = run([*tiny, f"trainer.init_from={base_run}", "optim.lr=1e-30", "trainer.max_steps=1"], out_dir=tmp_path)
    assert result.metrics["init"]["loaded"] > 0 and result.metrics["init"]["new"] == result.metrics["init"]["dropped"] == 0
    base = load_file(str(next((base_run / "checkpoints").glob("step_*")) / "model.safetensors"))
    after = load_file(str(result.checkpoint / "model.safetensors"))
    assert base.keys() == after.keys() and all(torch.equal(base[k], after[k]) for k in base)
    assert result.metrics["steps"] == 1  # not a resume: the step count starts at 0


def test_a_causal_decoder_continues_as_a_prefix_decoder(tmp_path, tiny, base_run):
    # U-PaLM (arXiv:2210.11399): the same weights, another mask and objective
    result = run([*tiny, f"trainer.init_from={base_run}", "model=prefix", "objective=prefix_lm", "trainer.max_steps=1"], out_dir=tmp_path)
    assert result.status == "ok" and result.metrics["init"]["new"] == 0
    assert "PrefixLM" in (result.checkpoint / "config.yaml").read_text()


def test_init_from_hf_and_zoo_import_folders(tmp_path, tiny):
    from zoo.hf import convert, save_pretrained

    cfg = zoo.compose([*SMOKE])
    torch.manual_seed(3)
    model = zoo.config.instantiate_model(cfg.model)
    save_pretrained(model, tmp_path / "hf", config=cfg)
    convert(tmp_path / "hf", tmp_path / "imported")
    for source in ("hf", "imported"):
        result = run([*tiny, "tokenizer.n_sentinels=16", f"trainer.init_from={tmp_path / source}", "optim.lr=1e-30", "trainer.max_steps=1"], out_dir=tmp_path / f"run-{source}")
        assert result.metrics["init"]["new"] == 0, source
        after = load_file(str(result.checkpoint / "model.safetensors"))
        assert torch.equal(after["stack.layers.1.attn.q_proj.weight"], model.stack.layers[1].attn.q_proj.weight), source


@pytest.mark.parametrize("path, match", [("/no/such/folder", "an existing folder"), ("{tmp}", "a zoo checkpoint")])
def test_a_source_that_is_not_one_is_a_one_line_error(tmp_path, tiny, path, match):
    with pytest.raises(ConfigError, match=match):
        run([*tiny, f"trainer.init_from={path.format(tmp=tmp_path)}"], out_dir=tmp_path / "run")
