"""Keep freed CPU memory in the process for the next step (glibc's malloc).

glibc gives every block over 32 MiB back to the kernel when it is freed and maps fresh pages for the next
one, and each fresh page faults on first touch. A training step frees and allocates the same large blocks
every time: the dense gradient of a word embedding (MiniLM's 30,522 x 384 floats, 47 MB; BERT-base's 94 MB)
costs ~10 ms of page faults a step on 2 CPU cores, a tenth of MiniLM's step (bench/README.md). CPU tuning
guides reach for jemalloc or tcmalloc for this; glibc's own mallopt does it without a new library: large
blocks come from the heap and the heap is not trimmed, so they are reused. The price: the process keeps the
memory it has freed (its resident size stays near its peak), and fragmentation raises the peak a little (+6%
for MiniLM's training, far more for DeepSpeed's flat buffers: the loop leaves it off there by default).
"""
from __future__ import annotations

import ctypes
import sys

from tlscale.logs import log

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Once per process; False where the C library is not glibc (macOS, musl) and nothing changed."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    log.debug("CPU allocator: freed blocks kept for reuse" if _applied else "CPU allocator: mallopt refused")
    return _applied


def reusing_freed_memory() -> bool:
    """Whether this process keeps freed memory (metrics.json says so beside its peak RSS)."""
    return _applied
