"""Speed measurements produce well-formed figures for every architecture (never asserting a speed)."""

import math

import pytest
import torch

from zoo.bench.speed import NA_LENGTH, decode_speed, measure, scaling, workload
from zoo.bench.timing import matmul_rate, page_faults, peak_memory, time_calls
from zoo.testing import build_tiny

CPU = torch.device("cpu")


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_timing_helpers():
    assert positive(matmul_rate(device=CPU, size=64, repeats=2))
    assert len(time_calls(lambda: None, device=CPU, repeats=3, warmup=1)) == 3
    assert peak_memory(CPU) > 0


def test_page_faults_count_fresh_pages():
    """Touching each page of a fresh 8 MiB anonymous mapping faults every one of them in (whatever malloc does)."""
    import mmap

    size, page = 8 << 20, mmap.PAGESIZE
    with mmap.mmap(-1, size) as fresh:
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            fresh.madvise(mmap.MADV_NOHUGEPAGE)  # with transparent huge pages always on, one fault maps 512 pages
        before = page_faults()
        for offset in range(0, size, page):
            fresh[offset] = 1
        assert page_faults() - before >= size // page


def test_measure_causal_model():
    model = build_tiny()
    figures = measure(
        model, device=CPU, batch=2, seq_len=16, steps=2, warmup=1, decode_batch=2, prompt_len=4, new_tokens=3, matmul_flops=1e10
    )
    for key in ("train_tokens_per_s", "train_step_s", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_latency_s", "mfu_train", "mfu_prefill"):
        assert positive(figures[key]), key
    # 2 layers x keys and values x 2 sequences x 4 heads x 7 tokens x 8 channels x 4 bytes
    assert figures["kv_cache_bytes"] >= 2 * 2 * 2 * 4 * 7 * 8 * 4
    assert figures["peak_memory_bytes"] > 0


@pytest.mark.parametrize("arch", ["prefix", "encdec", "encoder"])
def test_every_architecture_runs(arch):
    model = build_tiny([f"model={arch}"])
    work = workload(model, batch=2, seq_len=8, device=CPU)
    assert work.forward().shape == (2, 8, model.vocab_size)
    assert work.tokens == (32 if arch == "encdec" else 16)
    figures = decode_speed(model, batch=2, prompt_len=4, new_tokens=2, device=CPU, repeats=1)
    if arch == "encoder":
        assert figures["decode_tokens_per_s"] is None
    else:
        assert positive(figures["decode_tokens_per_s"])


def test_scaling_reports_lengths_a_scheme_cannot_encode():
    rows = scaling(build_tiny(["model/pos=learned"]), device=CPU, seq_lens=[16, 32, 64], tokens_per_batch=64, steps=1, warmup=0)
    assert [r["seq_len"] for r in rows] == [16, 32, 64]
    assert positive(rows[0]["train_tokens_per_s"]) and positive(rows[1]["prefill_tokens_per_s"])
    assert rows[2]["train_tokens_per_s"] == NA_LENGTH  # learned positions stop at max_seq_len=32
    rope = scaling(build_tiny(["model/pos=rope"]), device=CPU, seq_lens=[64], tokens_per_batch=64, steps=1, warmup=0)
    assert positive(rope[0]["train_tokens_per_s"])


def test_decode_stops_at_the_max_length():
    figures = decode_speed(build_tiny(["model/pos=learned"]), batch=1, prompt_len=30, new_tokens=10, device=CPU, repeats=1)
    assert positive(figures["decode_tokens_per_s"])
