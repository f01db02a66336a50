"""Clocks, the device's matmul rate and peak memory: what every speed measurement shares.

On CUDA a call is timed with CUDA events after warm-up and run under bf16 autocast; on CPU with
``time.perf_counter`` in float32. Figures are medians of repeated calls: a shared machine's bursts of
other work move the mean, not the median.
"""

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (fp32 there: CPU bf16 matmuls are slower on most hosts)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], *, device: torch.device, repeats: int, warmup: int = 0) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


#: a timing whose spread exceeds this is marked noisy in the report (a shared machine's bursts)
NOISY_SPREAD = 0.2


def spread(values: list[float]) -> float:
    """The relative spread of repeated timings, ``(max - min) / median``: 0 for a quiet machine."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def matmul_rate(*, device: torch.device, size: int | None = None, repeats: int = 7) -> float:
    """FLOP/s of square matmuls in the dtype the benchmarks compute in (fp32 CPU, bf16 CUDA).

    The MFU denominator, measured in the same process and under the same thread count as the model:
    the fastest of a few sizes (or of ``size`` alone), as a BLAS's rate varies with the shape and MFU
    is against the peak.
    """
    sizes = [size] if size else [8192] if device.type == "cuda" else [512, 1024, 2048]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rates = []
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        times = time_calls(lambda: torch.mm(a, b, out=out), device=device, repeats=repeats, warmup=2)
        rates.append(2.0 * n**3 / median(times))
    return max(rates)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """Bytes: CUDA's max allocated since the last reset, or the process's peak RSS on CPU.

    The RSS peak is a high-water mark of the whole process and cannot be reset: in a sweep run in one
    process it only grows. Hydra's multirun starts each job in the same process, so read it per job as
    "at most this much".
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS reports bytes, Linux KiB


def page_faults() -> int:
    """Minor page faults of the process so far: a CPU step that faults in thousands of pages is paying for
    fresh memory from the allocator (a 64 MB tensor is ~16,000 pages of 4 KiB), not for its arithmetic."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
