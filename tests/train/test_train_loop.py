"""The training loop in process: it learns, accumulates exactly, stops on NaN, refuses bad configs (resuming: test_resume.py)."""

import contextlib
import json
import math
import shutil

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.train import run
from zoo.train.loop import METRICS_FILE
from zoo.train.steps import LOG_FILE


def test_training_reduces_the_loss_on_the_default_corpus(tmp_path, tiny):
    corpus = ["data.corpus.sources=[python,pydoc]", "data.corpus.max_bytes=300000"]  # code and prose, as by default
    result = run([*tiny, *corpus, "trainer.max_steps=30", "trainer.batch_size=8", "optim.lr=1e-2", "trainer.eval_every=15"], out_dir=tmp_path)
    assert result.status == "ok" and len(result.history) == 30
    first, last = sum(result.history[:3]) / 3, sum(result.history[-3:]) / 3
    assert last < first - 0.5, result.history
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics["status"] == "ok" and metrics["val_loss"] < first
    # bits per byte: nats over ln 2 and the bytes of the targets; a byte tokenizer's <eos> has no bytes
    assert metrics["val_bpb"] >= metrics["val_loss"] / 0.6931471805599453
    # the compressors' reference on the same validation split, given the training split
    assert 1.0 < metrics["val_lzma_bpb"] < metrics["val_zlib_bpb"] < 8.0
    for key in ("val_ppl", "tokens_per_s", "parameters", "flops_per_token", "corpus_fingerprint", "sample", "checkpoint"):
        assert metrics[key], key
    assert metrics["choices"]["model/ffn"] == "swiglu" and metrics["choices"]["tokenizer"] == "byte"
    assert metrics["sample"].startswith("def ")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny):
    one = run([*tiny, "trainer.max_steps=3"], out_dir=tmp_path / "one")
    accumulated = run([*tiny, "trainer.max_steps=3", "trainer.grad_accum=2"], out_dir=tmp_path / "two")
    assert accumulated.history == pytest.approx(one.history, abs=1e-5)


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, tiny):
    plain = run([*tiny, "trainer.max_steps=3"], out_dir=tmp_path / "plain")
    recomputed = run([*tiny, "trainer.max_steps=3", "trainer.activation_checkpointing=true"], out_dir=tmp_path / "ckpt")
    assert recomputed.history == pytest.approx(plain.history, abs=1e-5)


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny, capsys):
    result = run([*tiny, "optim.lr=1e30", "sched.warmup_steps=0", "optim.grad_clip=null", "trainer.ckpt_every=1", "trainer.max_steps=50"], out_dir=tmp_path)
    assert result.status == "diverged"
    assert "non-finite" in capsys.readouterr().err
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics["status"] == "diverged" and "non-finite" in metrics["error"]
    good = result.checkpoint
    assert good is not None and good.exists()
    assert int(good.name.split("_")[1]) == metrics["steps"] - 1


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data=text", "data.corpus.path=/no/such/folder"], "data.corpus.path"),
        (["data=hf_disk"], "data.corpus.path"),
        (["tokenizer=bpe", "tokenizer.vocab_size=100"], "tokenizer.vocab_size"),
        (["objective=span_corruption"], "objective"),
        (["model=encdec"], "objective"),
        (["model/pos=learned", "trainer.seq_len=64"], "trainer.seq_len"),
        (["trainer.batch_size=3", "trainer.grad_accum=2"], "trainer.batch_size"),
        (["trainer.precision=fp16"], "trainer.precision"),
        (["trainer.resume=/no/such/run"], "trainer.resume"),
    ],
)
def test_bad_configs_name_their_key_before_training(tmp_path, tiny, overrides, key):
    if overrides[0].startswith("data="):  # other data options lack data=stdlib's keys
        tiny = [o for o in tiny if not o.startswith("data.")]
    with pytest.raises(ConfigError) as error:
        run([*tiny, *overrides], out_dir=tmp_path)
    assert str(error.value).startswith(f"{key}="), str(error.value)
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics["status"] == "failed" and key in metrics["error"]


def test_objectives_train_their_architectures(tmp_path, tiny):
    for arch, objective in (("prefix", "prefix_lm"), ("encoder", "mlm"), ("encdec", "span_corruption")):
        result = run([*tiny, f"model={arch}", f"objective={objective}", "trainer.max_steps=2"], out_dir=tmp_path / arch)
        assert result.status == "ok" and all(torch.isfinite(torch.tensor(result.history)))
        # bits per byte where the targets are the text itself; sentinels and masked picks are not
        assert ("val_bpb" in result.metrics) == (arch == "prefix")


def test_moe_router_losses_and_load_are_logged(tmp_path, tiny):
    result = run([*tiny, "model/ffn=moe", "model.ffn.n_experts=4", "model.ffn.router.capacity_factor=1.0", "trainer.max_steps=2"], out_dir=tmp_path)
    assert result.status == "ok"
    lines = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    train = [line for line in lines if "train/loss" in line]
    assert len(train) == 2
    for line in train:
        assert line["train/moe/load_balance"] > 0 and line["train/moe/z_loss"] > 0
        assert 0 <= line["train/moe/dropped"] < 1 and line["train/moe/max_load"] >= 1
        loads = [line[f"train/moe/load_{i}"] for i in range(4)]
        assert sum(loads) == pytest.approx(1.0) and max(loads) * 4 <= line["train/moe/max_load"] + 1e-6


def test_dense_runs_log_no_routing(tmp_path, tiny):
    run([*tiny, "trainer.max_steps=1"], out_dir=tmp_path)
    assert not any("moe/" in key for line in (tmp_path / LOG_FILE).read_text().splitlines() for key in json.loads(line))


def test_synthetic_task_needs_no_tokenizer(tmp_path, tiny):
    tiny = [o for o in tiny if not o.startswith("data.")]
    result = run([*tiny, "data=mqar", "data.vocab_size=64", "data.n_pairs=4", "trainer.max_steps=2"], out_dir=tmp_path)
    assert result.status == "ok" and result.metrics["vocab_size"] == 64 and result.metrics["sample"] is None
    assert "val_bpb" not in result.metrics and 0 <= result.metrics["val_accuracy"] <= 1


def test_compose_knows_every_training_group():
    cfg = zoo.compose([])
    assert {"data", "tokenizer", "objective", "optim", "sched", "logger", "trainer"} <= set(cfg)
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.weight_decay == 0.1 and cfg.optim.grad_clip == 1.0


@pytest.mark.parametrize("ffn", [["model/ffn=swiglu"], ["model/ffn=moe", "model.ffn.n_experts=2"]], ids=["dense", "moe"])
def test_compiled_training_matches_eager(tmp_path, tiny, ffn):
    """``trainer.compile=true`` (inductor) compiles the forward with the loss and trains the same model:
    equal losses, a checkpoint of the plain model."""
    from torch._dynamo.utils import counters

    common = [*tiny, *ffn, "trainer.max_steps=3", "trainer.ckpt_every=3"]
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile's inductor needs a C++ compiler")
    counters.clear()
    compiled = run([*common, "trainer.compile=true"], out_dir=tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] >= 1
    eager = run(common, out_dir=tmp_path / "eager")
    assert compiled.status == eager.status == "ok"
    assert compiled.history == pytest.approx(eager.history, rel=1e-4)
    assert (tmp_path / "compiled" / "checkpoints" / "step_00000003" / "model.safetensors").exists()


def test_bf16_autocast_trains_and_evaluates_on_cpu(tmp_path, tiny):
    result = run([*tiny, "trainer.device=cpu", "trainer.precision=bf16", "trainer.max_steps=4"], out_dir=tmp_path)
    assert result.status == "ok" and all(torch.isfinite(torch.tensor(result.history)))
    assert math.isfinite(result.metrics["val_loss"]) and result.metrics["sample"]


@pytest.mark.parametrize("arch", ["causal", "encoder"])
def test_bf16_autocast_on_cpu_runs_the_model_in_bf16_for_training_and_inference(arch):
    from zoo.testing import build_tiny
    from zoo.train.loop import autocast_for
    from zoo.train.settings import Settings

    bf16 = autocast_for(Settings(precision="bf16"), torch.device("cpu"))
    assert autocast_for(Settings(precision="auto"), torch.device("cpu")) is contextlib.nullcontext  # fp32 stays the CPU default
    model = build_tiny([f"model={arch}", "model/attention=sliding_window", "model.attention.window=4"])
    tokens = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(0))
    with bf16():
        logits = model(tokens)
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    logits.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        reference = model.eval()(tokens)
        with bf16():
            inferred = model(tokens)
            if model.can_generate:  # decoding through the KV cache, token by token
                cache = model.new_cache()
                stepped = torch.cat([model(tokens[:, i : i + 1], cache=cache) for i in range(tokens.shape[1])], dim=1)
                torch.testing.assert_close(stepped.float(), inferred.float(), atol=0.1, rtol=0.05)
    torch.testing.assert_close(inferred.float(), reference, atol=0.1, rtol=0.05)  # bf16 keeps ~3 digits
