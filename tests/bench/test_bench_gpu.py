"""benchmarks/bench_gpu.py's parts run on CPU at a tiny size (the GPU figures need a GPU; speeds are never asserted)."""

import importlib.util
import types
from pathlib import Path

import torch

from zoo.bench.launches import kernel_counts

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


def test_eager_zoo_runs_no_more_operators_than_the_hand_written_reference():
    """What a GPU launches, counted on CPU: composition must add no work over the reference (issue 21:
    extra launches cost 10-22% of eager speed on a GPU). Training is allowed 1% for the host-side scalar
    conversions of ``addcmul``'s backward (RoPE), which launch no GPU kernel."""
    module = bench_gpu()
    shape = module.peers.LlamaShape(vocab_size=256, dim=64, n_layers=2, n_heads=4, hidden_dim=128, batch=2, seq_len=32)
    built, _ = module.peers.build_peers(["zoo", "reference"], shape, device=torch.device("cpu"))
    x, y = torch.randint(256, (2, 2, 32))
    zoo, reference = (kernel_counts(p, x, y, torch.device("cpu")) for p in built)
    assert zoo["infer_kernels"] <= reference["infer_kernels"], (zoo["infer_kernel_names"], reference["infer_kernel_names"])
    assert zoo["train_kernels"] <= 1.01 * reference["train_kernels"], (zoo["train_kernel_names"], reference["train_kernel_names"])
    assert "aten::dropout" not in zoo["train_kernel_names"]  # a zero rate builds no dropout at all
