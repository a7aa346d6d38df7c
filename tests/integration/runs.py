"""Running `spry run` from the tests, and what two runs must agree on.

Every end-to-end test starts the real command line in a fresh process (Flower's
simulation engine starts Ray, which must not outlive it), on the same small
federation: three clients, all sampled, capped data. The uninterrupted 3-round run
of it is the shared reference (tests/integration/conftest.py).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Environment variable marking a test run's processes: the run's results folder
MARK = "SPRY_TEST_RESULTS"
# The command line's module: `python -m CLI_MODULE run ...` is what `spry run` runs
CLI_MODULE = "cli"
REFERENCE_ROUNDS = 3
# Three clients, all sampled and evaluated every round, on capped data
SMALL_RUN = (
    "--clients", "3", "--per-round", "3", "--set", "eval-clients-per-round=3",
    "--set", "max-train-examples=96", "--set", "max-test-examples=64",
    "--set", "lr=0.01",
)  # fmt: skip
REFERENCE_RUN = ("--rounds", str(REFERENCE_ROUNDS), *SMALL_RUN)

# Wall-clock and memory readings differ between identical runs; the rest must not
TIMING = {
    "round-seconds",
    "train-wall-seconds",
    "device-round-seconds",
    "elapsed-seconds",
    "client-train-seconds-max",
    "client-peak-mib",
    "client-peak-extra-mib",
    "client-step-tokens",  # the peak step's length: whichever step peaked
}


def spry_command(*args: str) -> list[str]:
    """`spry ARGS...` as a process the test starts (the same interpreter)."""
    return [sys.executable, "-m", CLI_MODULE, *args]


def marked_env(results: Path) -> dict[str, str]:
    """ENV, plus a mark every process of the run to `results` inherits."""
    return {**ENV, MARK: str(results)}


def run_spry(results: Path, *args: str, log: Path | None = None) -> Path:
    """`spry run ARGS --results-dir RESULTS` to completion; its run folder.

    The output goes to `log` when given (a long run's log, kept for failures).
    Its processes carry `results` as their mark (`survivors`).
    """
    command = spry_command("run", *args, "--results-dir", str(results))
    env = marked_env(results)
    if log is None:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
        )
        output = done.stderr
    else:
        with open(log, "w") as out:
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=600, env=env,
                cwd=ROOT,
            )  # fmt: skip
        output = log.read_text()
    assert done.returncode == 0, output[-3000:]
    (run_dir,) = results.iterdir()
    return run_dir


def _marked(results: Path) -> set[int]:
    """Processes whose environment carries the mark of the run to `results`."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == str(results):
                found.add(proc.pid)
        except (psutil.Error, OSError):  # gone, a zombie, or not ours to read
            continue
    return found


def survivors(results: Path, grace: float = 30.0) -> set[int]:
    """Processes of the run to `results` (Ray's daemons and workers included)
    still alive after it ended and a grace period.

    They are found by the mark in their environment, which Ray passes on to every
    process it starts, so other runs on the machine (other test sessions) do not
    count. ray.shutdown() stops Ray's daemons at once; its workers notice and exit
    a moment later, so allow them a few seconds.
    """
    deadline = time.monotonic() + grace
    while (left := _marked(results)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv of a run folder, one dict a round, timing columns left out."""
    with open(run_dir / "metrics.csv") as fh:
        return [
            {k: v for k, v in row.items() if k not in TIMING}
            for row in csv.DictReader(fh)
        ]
