"""``zoo-bench`` end to end, as a user runs it: a sweep with its report and W&B runs; a config mistake."""

import json
import sys

import pytest

from zoo.bench import main

TINY = [
    "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "model.vocab_size=64", "trainer.seq_len=32",
    "bench.quality=false", "bench.speed.steps=1", "bench.speed.warmup=0", "bench.speed.batch=2", "bench.speed.new_tokens=2",
    "bench.speed.prompt_len=4", "bench.speed.matmul_size=64", "tokenizer=byte",
]  # fmt: skip


@pytest.fixture
def zoo_bench(tmp_path, monkeypatch):
    """``zoo-bench ARGS`` in this process (as the console script runs it), from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")

    def run(args: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", ["zoo-bench", *args])
        try:
            main()
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    return run


def test_sweep_writes_one_report_and_logs_to_wandb(zoo_bench, tmp_path, capsys):
    assert zoo_bench(["-m", "model/ffn=gelu,swiglu", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["ffn=gelu", "ffn=swiglu"]
    assert rows[0]["choices"]["model/ffn"] == "gelu" and rows[0]["choices"]["tokenizer"] == "byte"
    assert rows[1]["train_tokens_per_s"] > 0
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| ffn=gelu | 1/1 |" in summary and "plots/speed_vs_quality.png" not in summary  # no quality: no Pareto plot
    out = capsys.readouterr()
    assert "| ffn=gelu |" in out.out and "study=none" in out.err  # the console table; no study named
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 3  # a run per job and the summary, one group


def test_config_mistake_is_one_line_and_exit_2(zoo_bench, capsys):
    assert zoo_bench(["study=none", "bench.budget.kind=epochs", *TINY, "logger=none"]) == 2
    err = capsys.readouterr().err
    assert "bench.budget.kind='epochs'" in err and "Traceback" not in err


@pytest.mark.parametrize("typo", ["model.dimm=3", "model/ffn=swiglux,gelu", "study=nope"])
def test_an_unknown_key_or_option_is_one_line_before_any_work(zoo_bench, tmp_path, capsys, typo):
    assert zoo_bench(["-m", typo, *TINY, "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zoo-bench: config error:") and typo.split("=")[0] in err[-1], err
    assert all("study=none" in line for line in err[:-1])  # at most the notice that a sweep runs alone
    assert not (tmp_path / "multirun").exists()  # nothing written


def test_default_study_runs_and_reports_in_its_own_folder(zoo_bench, tmp_path):
    # `zoo-bench` alone is study=quick, a sweep over positions; here at tiny sizes and without training
    assert zoo_bench([*TINY, "bench.speed.seq_lens=[]", "logger=none"]) == 0
    (summary,) = (tmp_path / "multirun" / "bench-quick").glob("*/summary.md")
    text = summary.read_text()
    assert all(f"| pos={p} | 1/1 |" in text for p in ("learned", "rope", "alibi")) and "Press et al. 2021" in text


def test_peers_study_runs_in_fresh_processes(zoo_bench, tmp_path):
    shape = "{vocab_size: 64, dim: 32, n_layers: 1, n_heads: 2, hidden_dim: 48, batch: 2, seq_len: 16}"
    args = ["study=peers", "bench.peers.processes=2", "bench.peers.rounds=1", "bench.peers.steps=1", "bench.peers.warmup=0",
            "bench.peers.names=[zoo,reference]", f"bench.peers.shape={shape}", "trainer.threads=1", "logger=none",
            f"hydra.run.dir={tmp_path / 'peers'}"]  # fmt: skip
    assert zoo_bench(args) == 0
    report = json.loads((tmp_path / "peers" / "peers.json").read_text())
    assert report["processes"] == 2 and report["keep_freed_memory"] is False  # the study's malloc: the system's
    (ratio,) = report["ratios"]
    assert ratio["ratio"] == "zoo / reference" and len(ratio["train_runs"]) == 2
    assert "Medians over 2 processes" in (tmp_path / "peers" / "peers.md").read_text()


#: trains (2 steps on 200 kB of prose), so seeds matter; no speed figures
TRAINED = [
    "logger=none", "tokenizer=byte", "data.corpus.sources=[pydoc]", "data.corpus.max_bytes=200000",
    "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "trainer.seq_len=32",
    "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_every=0", "trainer.final_eval_batches=2",
    "bench.speed.enabled=false",
]  # fmt: skip


def test_a_study_fans_out_per_seed_and_a_rerun_runs_only_what_is_missing(zoo_bench, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", "model/ffn=gelu,swiglu", "bench.seeds=[0],[1]", *TRAINED, f"hydra.sweep.dir={sweep}"]
    assert zoo_bench(args) == 0
    jobs = sorted(p.parent for p in sweep.glob("*/results.jsonl"))
    assert len(jobs) == 4  # 2 variants x 2 seeds, one job each
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    by_variant = {v: sorted(r["seed"] for r in rows if r["variant"] == v) for v in ("ffn=gelu", "ffn=swiglu")}
    assert by_variant == {"ffn=gelu": [0, 1], "ffn=swiglu": [0, 1]}  # the seeds' jobs are one variant in the report
    assert "| ffn=swiglu | 2/2 |" in (sweep / "summary.md").read_text()

    # interrupted midway: one job's results lost, another's cut short; a re-run into the folder redoes only those
    kept = jobs[0] / "results.jsonl"
    before = kept.stat().st_mtime_ns
    (jobs[1] / "results.jsonl").unlink()
    (jobs[2] / "results.jsonl").write_text('{"variant": "ffn=swi')
    capsys.readouterr()
    assert zoo_bench(args) == 0
    err = capsys.readouterr().err
    assert err.count("finished already") == 2 and kept.stat().st_mtime_ns == before
    again = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"], r["val_loss"]) for r in again] == [(r["variant"], r["seed"], r["val_loss"]) for r in rows]

    # another config into the same folder: nothing is kept
    capsys.readouterr()
    assert zoo_bench([*args, "trainer.max_steps=3"]) == 0
    assert "finished already" not in capsys.readouterr().err
