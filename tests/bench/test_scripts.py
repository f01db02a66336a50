"""The scripts in benchmarks/ run end to end at tiny sizes (what they print is not asserted: speeds never are)."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_optim_times_every_adamw_variant():
    ms = script("bench_optim").main(["--rounds", "1", "--threads", "1"])
    assert set(ms) == {"loop", "foreach", "fused"} and all(v > 0 for v in ms.values())


def test_bench_moe_trains_the_moe_and_its_dense_ceiling():
    speed = script("bench_moe").main(["--peers", "zoo", "dense", "--seq-len", "16", "--batch", "2", "--rounds", "1", "--steps", "1", "--warmup", "0", "--threads", "1"])
    assert set(speed) == {"zoo", "dense"} and all(v > 0 for v in speed.values())
