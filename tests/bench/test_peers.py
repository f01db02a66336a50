"""The peer comparison compares like with like, and produces its tables (tiny sizes, no timing asserted)."""

import pytest
import torch

from zoo.bench import peers

TINY = peers.LlamaShape(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=48, batch=2, seq_len=16)


def test_reference_computes_zoos_function():
    zoo_model, reference = peers.build_zoo(TINY), peers.build_reference(TINY)
    assert sum(p.numel() for p in zoo_model.parameters()) == sum(p.numel() for p in reference.parameters())
    peers.copy_weights(zoo_model, "reference", reference)
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reference(tokens), zoo_model(tokens), atol=1e-5, rtol=1e-5)


def test_hf_computes_zoos_function():
    pytest.importorskip("transformers")
    zoo_model, hf = peers.build_zoo(TINY), peers.build_hf(TINY)
    peers.copy_weights(zoo_model, "hf", hf)
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=tokens, use_cache=False).logits, zoo_model(tokens), atol=1e-5, rtol=1e-5)


def test_xtransformers_has_the_same_shape():
    pytest.importorskip("x_transformers")
    xt = peers.build_xtransformers(TINY)
    zoo_params = sum(p.numel() for p in peers.build_zoo(TINY).parameters())
    # its gated FFN's input projection always has a bias: hidden_dim * 2 per layer more
    assert sum(p.numel() for p in xt.parameters()) == zoo_params + TINY.n_layers * 2 * TINY.hidden_dim
    assert xt(torch.randint(0, 64, (2, 16))).shape == (2, 16, 64)


def test_run_produces_results_ratios_and_tables():
    report = peers.run(names=["zoo", "reference"], shape=TINY,
                       device=torch.device("cpu"), rounds=2, steps=1, warmup=1, matmul_flops=1e10)  # fmt: skip
    assert set(report["results"]) == {"zoo", "reference"}
    for row in report["results"].values():
        assert row["train_tokens_per_s"] > 0 and row["infer_tokens_per_s"] > 0 and row["mfu_train"] > 0
        assert row["train_page_faults"] >= 0 and row["infer_page_faults"] >= 0
    (ratio,) = report["ratios"]
    assert ratio["ratio"] == "zoo / reference" and ratio["target"] == 0.97 and ratio["train"] > 0
    text = peers.markdown(report)
    assert "| zoo / reference | >= 0.97 |" in text and "MFU" in text and "page faults / step" in text


def test_ratios_pair_each_round():
    """A ratio is the median of the rounds' ratios: a stretch where the machine runs 2x slower cancels
    in each pair; hand-made seconds per step (HF 10% slower to train, 10% faster to infer)."""
    zoo_s = [1.0, 2.0, 2.0, 2.0, 1.0, 3.0]
    results = {
        "zoo": {"train_rounds_s": zoo_s, "infer_rounds_s": zoo_s},
        "hf": {"train_rounds_s": [1.1 * s for s in zoo_s], "infer_rounds_s": [0.9 * s for s in zoo_s[:-1]] + [9.0]},
    }
    (row,) = peers.ratios(results)
    assert row["ratio"] == "zoo / hf" and row["target"] == 1.0
    assert row["train"] == pytest.approx(1.1) and row["train_met"]
    assert row["infer"] == pytest.approx(0.9) and not row["infer_met"]  # one outlier round moves no median


def test_a_peer_that_does_not_import_is_skipped(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name.startswith("transformers"):
            raise ImportError(name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    built, notes = peers.build_peers(["reference", "hf"], TINY, device=torch.device("cpu"))
    assert [p.name for p in built] == ["reference"]
    assert len(notes) == 1 and notes[0].startswith("hf skipped")


def test_merge_takes_medians_over_processes():
    """Three processes' hand-made reports: a figure is the median of the processes' figures, a ratio
    the median of their ratios (not a ratio of medians), with each process's ratio kept."""

    def report(zoo_tps: float, ratio: float, rate: float) -> dict:
        row = {"train_tokens_per_s": zoo_tps, "infer_tokens_per_s": 2 * zoo_tps, "mfu_train": 0.5, "mfu_infer": 0.5,
               "train_page_faults": zoo_tps / 100, "infer_page_faults": 0.0, "train_rounds_s": [1.0]}
        ratios = [{"ratio": "zoo / hf", "target": 1.0, "train": ratio, "infer": ratio + 0.1}]
        return {"results": {"zoo": row}, "ratios": ratios, "matmul_flops": rate, "notes": []}

    merged = peers.merge([report(100.0, 0.97, 1e9), report(300.0, 1.02, 3e9), report(200.0, 1.10, 2e9)])
    assert merged["processes"] == 3 and merged["matmul_flops"] == 2e9
    assert merged["results"]["zoo"] == {"train_tokens_per_s": 200.0, "infer_tokens_per_s": 400.0, "mfu_train": 0.5, "mfu_infer": 0.5,
                                        "train_page_faults": 2.0, "infer_page_faults": 0.0}
    (row,) = merged["ratios"]
    assert row["train"] == 1.02 and row["train_met"] and row["train_runs"] == [0.97, 1.02, 1.10]
    assert row["infer"] == pytest.approx(1.12) and row["infer_met"]
    assert "processes: 0.970, 1.020, 1.100" in peers.markdown(merged | {"params": {"zoo": 1}, "flops_per_token": 1.0})


def test_run_in_processes_runs_each_in_a_fresh_process():
    report = peers.run_in_processes(2, threads=1, names=["zoo", "reference"], shape=TINY,
                                    device=torch.device("cpu"), rounds=1, steps=1, warmup=0)  # fmt: skip
    assert report["processes"] == 2 and set(report["results"]) == {"zoo", "reference"}
    (ratio,) = report["ratios"]
    assert len(ratio["train_runs"]) == 2 and ratio["train"] > 0
    assert report["keep_freed_memory"] is False
