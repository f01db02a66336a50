"""Keep freed host memory in the process for reuse, as PyTorch's caching allocator does on CUDA.

CPU tensors come from the C library's ``malloc``. glibc serves a large block (the LM head's logits,
an FFN's activations) with a fresh ``mmap`` and gives it back to the kernel when the tensor dies, so
every step faults its big buffers in again, a 4 KiB page at a time: on 2 cores, a third of the LM
head's matmul in the peers' benchmark model (batch 8 x 256, vocabulary 8192) is the page faults of its
64 MB of logits. Told to serve every block from its heap and never to hand the heap back, glibc reuses
freed blocks instead; the process then holds its peak memory until it exits, as it would on CUDA.
"""

import ctypes
import os
import sys

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: the largest threshold mallopt takes (an int): the heap shrinks only when 2 GiB at its top are free
NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for the process's next allocations.

    Process-wide and for the rest of the process; blocks already mapped are not moved. Returns
    whether it applied: ``False``, with nothing changed, off Linux or with another C library (musl,
    or a jemalloc/tcmalloc preloaded, which cache on their own).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the symbols the process already has: its C library among them
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt") or _preloaded_allocator():
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def _preloaded_allocator() -> bool:
    """Whether ``malloc`` is someone else's (``LD_PRELOAD`` of jemalloc or tcmalloc): mallopt would not reach it."""
    return any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))
