"""benchmarks/bench_gpu.py's parts run on CPU at a tiny size (the GPU figures need a GPU; speeds are never asserted)."""

import importlib.util
import types
from pathlib import Path

import torch

BENCH_GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH_GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_part_of_the_gpu_check_runs_and_reports_on_cpu():
    module = bench_gpu()
    tiny = module.peers.LlamaShape(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=48, batch=2, seq_len=16)
    args = types.SimpleNamespace(rounds=1, steps=1, warmup=0)
    report = module.compare_size("tiny", tiny, names=["zoo", "reference"], device=torch.device("cpu"), rate=1e10, args=args)
    assert set(report["results"]) == {"zoo", "reference"}
    for name, row in report["results"].items():
        assert row["train_kernels"] > row["infer_kernels"] > 0 and row["peak_train_bytes"] > 0
        assert sum(report["kernel_names"][name]["infer_kernel_names"].values()) == row["infer_kernels"]
    assert [r["ratio"] for r in report["ratios"]] == ["zoo / reference"]
    decode = module.decode_speed(tiny, device=torch.device("cpu"), batches=[1], prompt_len=4, new_tokens=3, hf_static=False)
    assert {d["peer"] for d in decode} >= {"zoo"} and all(d["tokens_per_s"] > 0 for d in decode)
    table = module.markdown({"gpu": "cpu", "torch": torch.__version__, "transformers": "-", "matmul_tflops": 0.01}, [report], decode)
    assert "| zoo |" in table and "zoo / reference" in table
