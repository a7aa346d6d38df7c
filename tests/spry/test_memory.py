"""The peak-memory measurement itself: a block that holds N MiB is measured as N.

Every memory figure in this project (client peaks, benchmarks) comes from
`spry.memory.track_peak_memory`, so it is checked against allocations of known size,
each in a fresh process (a high-water mark is per process) with glibc told to mmap
every tensor, so freed memory leaves the resident set at once. Each program first
runs the same kind of op once at small size, as every benchmark warms up before it
measures: torch's first op pages in kernel code and starts its thread pool (1 MiB on
one machine, 7 MiB on another), which is start-up cost, not the block's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.memory import LIVE_ENV

MIB = 2**20

_PROGRAM = """
import json, sys, torch
from spry.memory import track_peak_memory
pattern = sys.argv[1]
def block(mib):
    return torch.ones(mib * 2**20 // 4)  # float32, written, so resident
block(1).sum()  # warm-up: code pages and the thread pool
with track_peak_memory("cpu") as report:
    if pattern == "one-64":
        x = block(64); del x
    elif pattern == "two-32-together":
        a, b = block(32), block(32); del a, b
    elif pattern == "two-32-in-turn":
        a = block(32); del a
        b = block(32); del b
print(json.dumps({"extra": report.extra_bytes, "exact": report.exact}))
"""


def _measure(pattern: str) -> dict:
    env = {**os.environ, **LIVE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, pattern],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("pattern", "expected_mib"),
    [("one-64", 64), ("two-32-together", 64), ("two-32-in-turn", 32), ("none", 0)],
)
def test_a_block_holding_n_mib_is_measured_as_n(pattern, expected_mib):
    result = _measure(pattern)
    assert result["exact"], "the OS refused to reset the high-water mark"
    assert abs(result["extra"] / MIB - expected_mib) < 2.0, result
