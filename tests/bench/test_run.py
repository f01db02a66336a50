"""A whole benchmark job in miniature: matching, speed, seeds, extrapolation, the continuation score, MQAR, then the report."""

import math

import pytest

import zoo
from zoo.bench.report import summary_table, write_report
from zoo.bench.run import run_variant
from zoo.bench.speed import NA_LENGTH

SMALL = [
    "study=none", "logger=none", "tokenizer=byte", "data.corpus.sources=[pydoc]", "data.corpus.max_bytes=200000",
    "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32",
    "trainer.max_steps=2", "trainer.batch_size=4", "trainer.seq_len=32", "trainer.eval_every=0", "trainer.final_eval_batches=2",
    "bench.seeds=[0,1]", "bench.speed.steps=1", "bench.speed.warmup=0", "bench.speed.batch=2", "bench.speed.new_tokens=2",
    "bench.speed.prompt_len=4", "bench.speed.seq_lens=[16,64]", "bench.speed.tokens_per_batch=64", "bench.speed.matmul_size=64",
]  # fmt: skip


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    overrides = [
        *SMALL, "model/pos=learned", "model/ffn=swiglu",
        "bench.extrapolation.enabled=true", "bench.extrapolation.factors=[1,2]", "bench.extrapolation.eval_tokens=256",
        "bench.continuation.enabled=true", "bench.continuation.batches=1",
        "bench.mqar.enabled=true", "bench.mqar.cases=[[16,2]]", "bench.mqar.vocab_size=32", "bench.mqar.steps=2",
        "bench.match.by=params", "bench.match.reference=['model/ffn=gelu']",
    ]  # fmt: skip
    cfg = zoo.compose(overrides, config_name="bench")
    return run_variant(cfg, out_dir=tmp_path_factory.mktemp("job"), variant="pos=learned", overrides=overrides, choices={"model/pos": "learned"})


def finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def test_one_row_per_seed_with_every_figure(rows):
    assert [r["seed"] for r in rows] == [0, 1]
    for row in rows:
        assert row["status"] == "ok" and row["variant"] == "pos=learned" and row["choices"] == {"model/pos": "learned"}
        assert finite(row["val_loss"]) and finite(row["val_bpb"]) and len(row["curve"]) == 2
        assert row["budget"] == {"kind": "steps", "value": None, "steps": 2, "tokens": 256}
        assert row["match"]["knob"] == "model.ffn.hidden_dim" and row["match"]["value"] == 85
        for key in ("train_tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s", "mfu_train", "flops_total", "flops_lm_head"):
            assert finite(float(row[key])), key
        assert finite(row["extrapolation"]["1x"]) and row["extrapolation"]["2x"] == NA_LENGTH
        assert finite(row["continuation"]["loss"]) and row["continuation"]["prefix_len"] == 16 and row["continuation"]["tokens"] == 4 * 17
        assert set(row["mqar"]) == {"n16_p2"} and 0.0 <= row["mqar"]["n16_p2"] <= 1.0
        assert [p["seq_len"] for p in row["scaling"]] == [16, 64] and row["scaling"][1]["train_tokens_per_s"] == NA_LENGTH
        assert {"device", "threads", "torch", "date"} <= set(row["env"])


def test_report_of_the_job(rows, tmp_path):
    paths = write_report(rows, tmp_path, title="job")
    assert "loss_vs_tokens" in paths and "extrapolation" in paths
    assert "| pos=learned | 2/2 |" in summary_table(rows)


@pytest.mark.parametrize("study", ["attention"])
def test_a_study_mqar_case_trains_on_the_task_alone(study):
    """A study's text-data settings (data.corpus...) stay with the text: the task's config takes none."""
    from hydra.utils import instantiate

    from zoo.bench.run import mqar_case
    from zoo.bench.settings import BenchSettings

    overrides = [f"study={study}", "logger=none"]
    cfg = zoo.compose(overrides, config_name="bench")
    s = BenchSettings.from_config(cfg.bench)
    assert s.mqar.enabled and "corpus" in cfg.data
    for seq_len, n_pairs in s.mqar.cases:
        case = mqar_case(cfg, s, overrides=overrides, seq_len=seq_len, n_pairs=n_pairs)
        task = instantiate(case.data)
        assert (task.n_pairs, task.vocab_size) == (n_pairs, s.mqar.vocab_size)
        assert case.trainer.seq_len == seq_len and case.model.dim == cfg.model.dim
        assert case.model.ffn.hidden_dim == cfg.model.ffn.hidden_dim  # the matched size carries over


def test_a_stacked_learning_rate_screen_picks_what_separate_screens_pick(tmp_path):
    from zoo.bench.run import tune_lr
    from zoo.bench.settings import BenchSettings

    overrides = [*SMALL, "trainer.max_steps=4", "bench.lr.grid=[3e-4,3e-3,3e-1]", "bench.lr.screen_steps=3"]
    cfg = zoo.compose(overrides, config_name="bench")
    stacked, how = tune_lr(cfg, BenchSettings.from_config(cfg.bench), steps=4, out_dir=tmp_path / "a")
    alone_cfg = zoo.compose([*overrides, "bench.stack_seeds=false"], config_name="bench")
    alone, how_alone = tune_lr(alone_cfg, BenchSettings.from_config(alone_cfg.bench), steps=4, out_dir=tmp_path / "b")
    assert how == "stacked" and how_alone.startswith("alone")
    assert stacked.grid == alone.grid == (3e-4, 3e-3, 3e-1)
    assert stacked.losses == pytest.approx(alone.losses, rel=1e-4)
    assert stacked.chosen == alone.chosen and len(set(stacked.losses)) == 3
