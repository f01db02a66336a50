"""Run names, job folders and the sweep summary table."""

import csv
import json

from omegaconf import OmegaConf

import zoo
from zoo.run.naming import default_name, job_dir, job_name, register_resolvers, sweep_group
from zoo.train.sweep import RunInfo, collect, write_summary


def test_job_names_are_readable_flat_and_put_choices_first():
    name = job_name("model.dim=64,model/ffn=geglu,model/norm=layernorm,trainer.max_steps=5")
    assert name == "ffn=geglu,norm=layernorm,dim=64,trainer.max_steps=5"
    assert "/" not in job_name(["data=text", "data.corpus.path=/a/b c"])
    assert job_name(["data.corpus.sources=[python,pydoc]", "model=encdec"]) == "model=encdec,data.corpus.sources=[python,pydoc]"
    assert job_name(["experiment=smoke", "model/ffn=gelu", "model.dim=8"]) == "ffn=gelu,experiment=smoke,dim=8"
    long = job_name([f"model.k{i}={'x' * 20}" for i in range(10)])
    assert len(long) <= 100 and long != job_name([f"model.k{i}={'y' * 20}" for i in range(10)])
    assert job_dir(3, "") == "3" and job_dir(0, "model/pos=alibi") == "0-pos=alibi"


def test_a_sweep_group_is_its_folder_name_made_unique_to_the_folder(tmp_path):
    # two sweeps started in the same second, from two places, must not share a W&B dashboard
    a, b = tmp_path / "a" / "2026-12-05_17-01-00", tmp_path / "b" / "2026-12-05_17-01-00"
    assert sweep_group(str(a)).startswith("2026-12-05_17-01-00-")
    assert sweep_group(str(a)) != sweep_group(str(b))
    assert sweep_group(str(a)) == sweep_group(str(tmp_path / "a" / "." / "2026-12-05_17-01-00"))  # one folder, one group
    assert sweep_group(None) is None


def test_the_job_folder_resolver_reads_hydra_values():
    register_resolvers()
    cfg = OmegaConf.create({"num": 2, "dirname": "model/ffn=gelu,model/pos=rope", "subdir": "${zoo.job_dir:${num},${dirname}}"})
    assert cfg.subdir == "2-ffn=gelu,pos=rope"


def test_run_info_from_a_composed_config():
    info = RunInfo.from_hydra(zoo.compose(["model/ffn=gelu", "logger=none", "trainer.max_steps=3"]).hydra)
    assert info.name == "ffn=gelu,trainer.max_steps=3"  # logger is where a run goes, not what it is
    assert info.choices["model/ffn"] == "gelu" and info.choices["optim"] == "adamw" and not info.multirun
    assert default_name(RunInfo.from_hydra(zoo.compose([]).hydra).choices) == "causal-rmsnorm-pre-swiglu-rope-mha"


def test_summary_lists_every_job_and_its_failure(tmp_path):
    records = [
        {"job": 1, "name": "ffn=gelu,dim=8", "status": "failed", "error": "ConfigError: model.n_heads=3: must divide",
         "choices": {"model/ffn": "gelu"}, "overrides": ["model/ffn=gelu", "model.dim=8"]},
        {"job": 0, "name": "ffn=swiglu,dim=8", "status": "ok", "val_loss": 2.5, "val_bpb": 1.25,
         "choices": {"model/ffn": "swiglu"}, "overrides": ["model/ffn=swiglu", "model.dim=8"]},
    ]
    for r in records:
        (tmp_path / f"{r['job']}-{r['name']}").mkdir()
        (tmp_path / f"{r['job']}-{r['name']}" / "metrics.json").write_text(json.dumps(r))
    rows = collect(tmp_path)
    assert [r["job"] for r in rows] == [0, 1]
    csv_path, md_path = write_summary(tmp_path, rows)
    table = list(csv.DictReader(csv_path.open()))
    assert [(t["variant"], t["status"], t["model/ffn"]) for t in table] == [("ffn=swiglu", "ok", "swiglu"), ("ffn=gelu", "failed", "gelu")]
    assert table[0]["val_bpb"] == "1.25" and "must divide" in table[1]["error"]
    assert md_path.read_text().splitlines()[0].startswith("| job | variant | status | val_loss | val_bpb")


def test_a_job_that_started_and_left_no_metrics_is_listed_interrupted(tmp_path):
    (tmp_path / "0-ffn=gelu").mkdir()
    (tmp_path / "0-ffn=gelu" / "metrics.json").write_text(json.dumps({"job": 0, "name": "ffn=gelu", "status": "ok"}))
    (tmp_path / "1-ffn=swiglu").mkdir()  # its worker stopped before it wrote metrics.json
    (tmp_path / "wandb").mkdir()  # not a job
    rows = collect(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [(0, "ok"), (1, "interrupted")]
    assert "metrics.json" in rows[1]["error"]
