"""``zoo-bench trainer.init_from=...``: every seed of a variant starts from the pretrained weights (fresh
optimizer), adapters change what trains, the job's model keys win over the source's, and the report says
where each variant started."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.bench.report import write_report
from zoo.bench.run import run_variant
from zoo.errors import ConfigError

SIZE = ["model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "tokenizer=byte"]
DATA = ["data.corpus.sources=[pydoc]", "data.corpus.max_bytes=150000", "trainer.seq_len=32", "trainer.batch_size=4"]
#: a job: two seeds, one step each at a learning rate that moves no float32 weight, quick speed figures
JOB = [
    "study=none", "logger=none", *DATA, "trainer.max_steps=1", "optim.lr=1e-30", "trainer.eval_every=0", "trainer.final_eval_batches=1",
    "bench.seeds=[0,1]", "bench.speed.steps=1", "bench.speed.warmup=0", "bench.speed.batch=2", "bench.speed.new_tokens=2",
    "bench.speed.prompt_len=4", "bench.speed.matmul_size=64",
]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained tiny causal decoder: the pretrained source."""
    from zoo.train import run

    out = tmp_path_factory.mktemp("base")
    result = run([*SIZE, *DATA, "logger=none", "trainer.max_steps=3", "trainer.eval_every=0", "trainer.final_eval_batches=1",
                  "trainer.quiet=true", "trainer.sample.max_new_tokens=0", "optim.lr=1e-2"], out_dir=out)  # fmt: skip
    assert result.status == "ok"
    return out


def job(tmp_path, overrides: list[str], variant: str = "v") -> list[dict]:
    overrides = [*JOB, *overrides]
    return run_variant(zoo.compose(overrides, config_name="bench"), out_dir=tmp_path, variant=variant, overrides=overrides)


def base_weights(base) -> dict[str, torch.Tensor]:
    return load_file(str(next((base / "checkpoints").glob("step_*")) / "model.safetensors"))


def test_every_seed_starts_from_the_weights(tmp_path, base):
    rows = job(tmp_path, [f"trainer.init_from={base}"])
    weights = base_weights(base)
    for row in rows:
        assert row["status"] == "ok" and row["trained"].startswith("alone")  # the loop loads them: no stacked seeds
        assert row["start"]["from"] == str(base) and row["start"]["kind"] == "checkpoint"
        # every tensor loaded (a tied matrix under both its names), none new or left over
        assert row["init"]["loaded"] >= len(weights) and row["init"]["new"] == row["init"]["dropped"] == 0
        after = load_file(f"{row['checkpoint']}/model.safetensors")
        assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
        assert row["steps"] == 1  # not a resume of the base's 3 steps


def test_a_seed_named_in_the_source_opens_its_own(tmp_path, base):
    (tmp_path / "bases").mkdir()
    for seed in (0, 1):
        (tmp_path / "bases" / f"seed{seed}").symlink_to(base)
    rows = job(tmp_path / "job", ["trainer.init_from=" + str(tmp_path / "bases") + "/seed${trainer.seed}"])
    assert [f"/seed{r['seed']}/checkpoints/" in r["init"]["from"] for r in rows] == [True, True]


def test_lora_trains_fewer_parameters_with_less_optimizer_state(tmp_path, base):
    full = job(tmp_path / "full", [f"trainer.init_from={base}"])[0]
    lora = job(tmp_path / "lora", [f"trainer.init_from={base}", "adapter=lora", "adapter.rank=2"])[0]
    assert lora["start"]["adapter"] == "LoRA" and full["start"]["adapter"] == "FullFineTuning"
    assert 0 < lora["parameters_trainable"] < full["parameters_trainable"] == full["params"]
    # AdamW keeps two float32 moments (and a step count) per trainable tensor; frozen weights get none
    assert 8 * full["parameters_trainable"] <= full["optimizer_state_bytes"] < 8 * full["parameters_trainable"] + 4096
    assert 8 * lora["parameters_trainable"] <= lora["optimizer_state_bytes"] < full["optimizer_state_bytes"] / 10
    assert lora["init"]["loaded"] == full["init"]["loaded"]  # the adapter goes on after the weights load


def test_the_jobs_model_keys_win_over_the_sources(tmp_path, base):
    """U-PaLM's recipe (arXiv:2210.11399) as a job: the causal source continued as a prefix decoder."""
    rows = job(tmp_path, [f"trainer.init_from={base}", "model=prefix", "objective=prefix_lm"])
    for row in rows:
        assert row["status"] == "ok" and row["init"]["new"] == 0
        assert "zoo.arch.PrefixLM" in open(f"{row['checkpoint']}/config.yaml").read()


def test_the_report_says_where_each_variant_started(tmp_path, base):
    scratch = job(tmp_path / "a", SIZE, variant="scratch")
    started = job(tmp_path / "b", [f"trainer.init_from={base}"], variant="from base")
    summary = (write_report([*scratch, *started], tmp_path / "report", title="t")["summary"]).read_text()
    line = next(line for line in summary.splitlines() if line.startswith("Started from"))
    assert "scratch: scratch" in line and f"from base: {base}/checkpoints/step_00000003 (checkpoint, adapter FullFineTuning; " in line and "tensors loaded" in line
    assert "trainable (M)" in summary and "optim state MiB" in summary


@pytest.mark.parametrize(
    "extra, key",
    [(["bench.match.by=params"], "bench.match.by"), (["bench.mqar.enabled=true"], "bench.mqar.enabled"),
     (["bench.extrapolation.enabled=true", "adapter=lora"], "bench.extrapolation.enabled")],
)  # fmt: skip
def test_what_cannot_start_from_fixed_weights_is_refused_first(tmp_path, base, extra, key):
    with pytest.raises(ConfigError, match=key):
        job(tmp_path, [f"trainer.init_from={base}", *extra])
    assert not any(tmp_path.iterdir())  # before any training


def test_a_sweep_of_adapters_from_the_command_line(tmp_path, base, monkeypatch):
    """``zoo-bench -m trainer.init_from=BASE adapter=none,lora``: one report over both."""
    from zoo.bench import main

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["zoo-bench", "-m", f"trainer.init_from={base}", "adapter=none,lora", *JOB[1:], f"hydra.sweep.dir={sweep}"])
    try:
        main()
    except SystemExit as e:
        assert not e.code
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["adapter=none"] * 2 + ["adapter=lora"] * 2
    assert all(r["status"] == "ok" and r["init"]["from"].startswith(str(base)) for r in rows)
    assert "Started from" in (sweep / "summary.md").read_text()


def test_a_frozen_body_on_a_task_trains_its_head_and_has_no_training_speed(tmp_path, base):
    from zoo.bench.speed import NA_FROZEN

    overrides = [*(o for o in JOB if not o.startswith("data.corpus")), f"trainer.init_from={base}", "adapter=frozen", "task=compile", "data.max_chars=32"]
    rows = run_variant(zoo.compose(overrides, config_name="bench"), out_dir=tmp_path, variant="probe", overrides=overrides)
    for row in rows:
        assert row["status"] == "ok" and 0 < row["parameters_trainable"] < row["params"]  # the head alone
        assert row["train_tokens_per_s"] == NA_FROZEN and row["optimizer_state_bytes"] == 0 and row["prefill_tokens_per_s"] > 0
