"""The report: the summary table's bold best and noise flags, the files and plots, sweep labels."""

import json

from zoo.bench.plots import pareto_front
from zoo.bench.report import collect, read_jsonl, relabel, summary_table, write_jsonl, write_report


def rows() -> list[dict]:
    out = []
    losses = {"A": [3.0, 3.01, 2.99], "B": [3.2, 3.21, 3.19], "C": [3.0, 3.1, 2.9]}
    speeds = {"A": 100.0, "B": 200.0, "C": 150.0}
    for variant, values in losses.items():
        for seed, loss in enumerate(values):
            out.append({
                "variant": variant, "seed": seed, "status": "ok", "val_loss": loss, "train_tokens_per_s": speeds[variant],
                "curve": [[100, 5.0 + seed], [200, 4.0], [300, loss]],
                "extrapolation": {"1x": loss, "2x": "n/a (max length)" if variant == "C" else loss + 0.1},
                "scaling": [{"seq_len": 64, "train_tokens_per_s": 10.0, "prefill_tokens_per_s": 30.0},
                            {"seq_len": 128, "train_tokens_per_s": 9.0, "prefill_tokens_per_s": 25.0}],
                "overrides": [f"model/pos={variant.lower()}", "trainer.max_steps=5"],
            })  # fmt: skip
    return out


def cells(table: str, variant: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_best_is_bold_and_noise_flags():
    table = summary_table(rows())
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    loss, speed, at2 = header.index("val loss"), header.index("train tok/s"), header.index("loss @2x")
    a, b, c = cells(table, "A"), cells(table, "B"), cells(table, "C")
    assert a[loss].startswith("**3") and a[loss].endswith("**")
    assert b[loss].endswith("†")  # 0.2 worse with a spread of 0.01: beyond the noise
    assert not c[loss].endswith("†") and not c[loss].startswith("**")  # same mean, large spread: within noise
    assert b[speed] == "**200**" and a[speed] == "100"
    assert c[at2] == "n/a"
    assert a[1] == "3/3"


def test_failed_seed_is_counted_and_listed(tmp_path):
    data = rows()
    data[0] = {**data[0], "status": "diverged", "val_loss": None, "error": "non-finite loss"}
    assert cells(summary_table(data), "A")[1] == "2/3"
    summary = write_report(data, tmp_path, title="t")["summary"].read_text()
    assert "diverged" in summary


def test_write_report_makes_every_file(tmp_path):
    paths = write_report(rows(), tmp_path, title="test", command="zoo-bench study=x", notes=["a note"])
    assert {"results", "summary", "loss_vs_tokens", "speed_vs_quality", "extrapolation", "tokens_per_s_vs_seq_len"} <= set(paths)
    for name in ("loss_vs_tokens", "speed_vs_quality", "extrapolation", "tokens_per_s_vs_seq_len"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    assert read_jsonl(paths["results"]) == json.loads(json.dumps(rows()))
    summary = paths["summary"].read_text()
    assert "zoo-bench study=x" in summary and "a note" in summary and "plots/extrapolation.png" in summary


def test_sweep_collects_jobs_and_names_variants_by_what_differs(tmp_path):
    data = rows()
    for i, variant in enumerate("ABC"):
        write_jsonl([r for r in data if r["variant"] == variant], tmp_path / f"{i}-job" / "results.jsonl")
    collected = relabel(collect(tmp_path))
    assert len(collected) == 9
    assert [r["variant"] for r in collected[::3]] == ["pos=a", "pos=b", "pos=c"]


def test_pareto_front():
    # (speed, loss): the second point is beaten by the first on both
    assert pareto_front([(100, 3.0), (90, 3.1), (200, 3.5), (150, 2.9)]) == [3, 2]


def test_noisy_speed_is_marked():
    data = [{**r, "train_spread": 0.5 if r["variant"] == "B" else 0.05} for r in rows()]
    table = summary_table(data)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    speed = header.index("train tok/s")
    assert "~" in cells(table, "B")[speed] and "~" not in cells(table, "A")[speed]
