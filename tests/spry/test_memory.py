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


# -- the live allocator, and a training step's own peak ---------------------------

_LIVE_PROGRAM = """
import json, os, sys
from spry.memory import LIVE_ENV, freed_blocks_leave_rss, live_allocator, live_env_set
if sys.argv[1] == "set-late":  # in the environment, but after glibc started
    os.environ.update(LIVE_ENV)
print(json.dumps({"env": live_env_set(), "glibc": freed_blocks_leave_rss(),
                  "live": live_allocator()}))
"""


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("at-start", {"env": True, "glibc": True, "live": True}),
        ("set-late", {"env": True, "glibc": False, "live": False}),
        ("absent", {"env": False, "glibc": False, "live": False}),
    ],
)
def test_the_live_allocator_is_what_glibc_does_not_only_the_variable(how, expected):
    # Prepare: LIVE_ENV in the environment the process starts with, or set by the
    # process itself once running (glibc has read its settings by then), or not
    env = {k: v for k, v in os.environ.items() if k not in LIVE_ENV}
    if how == "at-start":
        env.update(LIVE_ENV)

    # Execute
    done = subprocess.run(
        [sys.executable, "-c", _LIVE_PROGRAM, how],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


_STEPS_PROGRAM = """
import json, torch
from spry.memory import StepPeaks
def block(mib):
    return torch.ones(mib * 2**20 // 4)
block(1).sum()  # warm-up
peaks = StepPeaks("cpu")
peaks.start()
kept = []
with peaks.step(tokens=5):  # 24 MiB for the step, 16 MiB kept after it
    kept.append(block(16)); x = block(8); del x
with peaks.step(tokens=7):  # 32 MiB more while the 16 are held: 48 above baseline
    x = block(32); del x
between = block(64); del between  # building a batch: between steps, not counted
with peaks.step(tokens=9):  # 8 MiB: smaller
    x = block(8); del x
print(json.dumps({"extra": peaks.extra_bytes, "tokens": peaks.tokens,
                  "steps": peaks.steps, "exact": peaks.exact,
                  "above": peaks.peak_bytes - peaks.baseline_bytes}))
"""


def test_the_step_peak_is_the_largest_step_above_one_baseline_taken_before_them():
    done = subprocess.run(
        [sys.executable, "-c", _STEPS_PROGRAM],
        capture_output=True, text=True, env={**os.environ, **LIVE_ENV}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exact"] and result["steps"] == 3
    # the second step: its 32 MiB over the 16 the first one left (48, clear of the
    # first step's 24), not the 64 MiB allocated between steps, nor its 32 alone
    assert abs(result["extra"] / MIB - 48) < 2.0, result
    assert result["tokens"] == 7
