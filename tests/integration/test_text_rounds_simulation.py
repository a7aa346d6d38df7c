"""A task that shares text, not weights, runs in Flower's real simulation engine.

The toy task (tests/tasks/toy_text_task.py) pools the words each client knows;
registered through `SPRY_TASKS` as a user's own task would be, it runs 2 rounds
through the same `spry run` a user types. What the files say is what the text
exchange did: the pooled share grows, no weights were saved as trained.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a simulation (about 40 s)
def test_a_text_task_runs_two_rounds_in_the_simulation(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "SPRY_TASKS": "toy-facts=tests.tasks.toy_text_task:FactsTask",
    }
    results = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable, "-m", "cli", "run", "--task", "toy-facts", "--rounds",
            "2", "--clients", "4", "--per-round", "2", "--set",
            "eval-clients-per-round=2", "--results-dir", str(results),
        ],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    (run_dir,) = results.iterdir()
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    shares = [float(r["test-accuracy"]) for r in rows]
    # 2 of 4 clients (3 words each) a round: half of the 12 words after round 1
    assert shares[0] == 0.0 and shares[1] == 0.5 and shares[2] >= 0.5
    assert all(r["clients"] == "2" for r in rows[1:])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    pooled = summary["shared-text"]["facts"]
    assert len(pooled) == round(12 * shares[2]) and pooled == sorted(set(pooled))
    log = json.loads((run_dir / "rounds.json").read_text())
    assert log["1"]["train"]["known-share"] == 0.0
    assert log["2"]["train"]["num-examples"] == 6.0
