"""Training metrics count the model's cost with the model's own counter, as zoo-bench does."""

import pytest

import zoo
from zoo.arch.cost import training_flops_per_token
from zoo.bench.run import run_variant
from zoo.train import run
from zoo.train.metrics import count_parameters, flops_per_token

#: a sliding-window MoE model: the two costs the 6N + 12 L n d rule got wrong
WINDOWED_MOE = ["model/attention=sliding_window", "model.attention.window=8", "model/ffn=moe", "model.ffn.router.top_k=1"]


def test_training_and_zoo_bench_report_one_flop_figure(tmp_path, tiny):
    trained = run([*tiny, *WINDOWED_MOE, "trainer.max_steps=1", "trainer.sample.max_new_tokens=0"], out_dir=tmp_path / "train")
    bench_overrides = [*tiny, *WINDOWED_MOE, "study=none", "bench.quality=false", "bench.speed.enabled=false"]
    (row,) = run_variant(zoo.compose(bench_overrides, config_name="bench"), out_dir=tmp_path / "bench", variant="windowed-moe")
    assert trained.status == "ok"
    assert trained.metrics["flops_per_token"] == row["train_flops_per_token"] == pytest.approx(3 * row["flops_total"])
    assert trained.metrics["parameters_active"] == row["active_params"] < trained.metrics["parameters"] == row["params"]


def test_flops_count_windows_and_active_experts_only():
    dense = zoo.build(["experiment=smoke"])
    windowed_moe = zoo.build(["experiment=smoke", *WINDOWED_MOE])
    assert flops_per_token(windowed_moe, seq_len=32) == training_flops_per_token(windowed_moe, seq_len=32)
    per_layer_scores = 3 * 4 * 32 * 32  # forward and backward of q k^T and weights @ v, per token at dim 32
    layers = dense.n_layers
    saved = layers * per_layer_scores * (32 - 8) / 32
    moe_ffn = windowed_moe.flops(seq_len=32).ffn / 32
    dense_ffn = dense.flops(seq_len=32).ffn / 32
    assert flops_per_token(dense, seq_len=32) - flops_per_token(windowed_moe, seq_len=32) == pytest.approx(saved + 3 * (dense_ffn - moe_ffn))
    counts = count_parameters(windowed_moe)
    assert counts["parameters_active"] < counts["parameters"]
