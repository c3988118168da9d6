"""Host memory reuse during training (mmtl/training/allocator.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAULTS_OF_REPEATED_LARGE_TENSORS = """
import resource, sys, torch
from mmtl.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(16 * 2**20)  # 64 MiB, over any mmap threshold of glibc's malloc, freed at once
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_large_tensors_are_reused_without_new_page_faults() -> None:
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_LARGE_TENSORS, mode], capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        return int(out.stdout.split()[-1])

    pages = 64 * 2**20 // 4096
    # by default each tensor is freshly mapped and faulted in page by page; kept, freed pages serve the next
    # tensors (after a few while the heap's holes settle: about 7 tensors' pages in all, measured)
    default, kept = faults("default"), faults("keep")
    assert default > 30 * pages
    assert kept < default / 3
