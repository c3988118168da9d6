"""Host memory reuse: keep freed blocks in the process instead of handing them back to the kernel.

glibc's malloc serves every block over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it with ``munmap`` when freed. A training step on a CPU allocates and frees tensors of that size
every step (a text decoder's (batch, length, vocabulary) logits and the copy mechanism's mixture are
50 MB each at the tiny preset on SciTLDR: 32 x 39 x 10,111 floats), so each step maps fresh pages and faults every one of them
in: 7.5 million page faults and a third of the run's CPU time in the kernel over 30 steps
(docs/benchmarks.md). Serving large blocks from the heap and not trimming it lets the next step reuse the
same pages; the process keeps its peak footprint, which a training run reaches at every step anyway.
"""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREE_BYTES = 2**31 - 1  # free memory kept at the top of the heap before it is given back


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and keep freed memory for reuse; True when set
    (False elsewhere than on Linux with glibc, where nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES))
    log.debug("malloc keeps freed memory for reuse: %s", done)
    return done
