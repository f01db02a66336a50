"""keep_freed_memory: a freed large tensor's memory is reused without faulting its pages in again."""

import ctypes
import subprocess
import sys

import pytest

from zoo.malloc import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# minor page faults per step of a loop that fills a 64 MB tensor each step and lets it die, measured
# once the loop is in its steady state (the first steps grow the heap to what the loop needs)
FAULTS = """
import sys, torch
from zoo.bench.timing import page_faults as faults
from zoo.malloc import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step(i):
    torch.ones(16 * 2**20)
    return str(i) * 10  # a small object between two big ones, as a real loop makes
kept = [step(i) for i in range(20)]
before = faults()
kept += [step(i) for i in range(10)]
print((faults() - before) // 10)
"""


def faults_per_step(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096
    assert faults_per_step("system") > pages // 2  # glibc maps it afresh each step: the test can fail
    assert faults_per_step("keep") < pages // 20


def test_a_preloaded_allocator_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert keep_freed_memory() is False
