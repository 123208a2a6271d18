"""The CPU allocator tuning: freed large blocks stay in the process for reuse (glibc only)."""
from __future__ import annotations

import subprocess
import sys

import pytest

FREE_64_MIB = """
import sys
import torch
from tlscale.training.allocator import keep_freed_memory

def rss_anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # a second call changes nothing and says so
before = rss_anon_mib()
block = torch.ones(64 * 2**20 // 4)
del block
print(rss_anon_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_block_stays_in_the_process_only_when_asked():
    def kept_mib(mode: str) -> float:
        result = subprocess.run([sys.executable, "-c", FREE_64_MIB, mode], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return float(result.stdout.strip().splitlines()[-1])

    assert kept_mib("default") < 16  # glibc maps blocks over 32 MiB and unmaps them when freed
    assert kept_mib("keep") > 60  # kept for the next allocation: no page faults when it comes
