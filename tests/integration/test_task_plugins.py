"""Task plug-ins: a task from outside the core, found by entry point, runs for real.

The toy task (tests/tasks/toy_task.py) is registered the way an installed package
registers one: a `spry.tasks` entry point in a dist-info folder on the path. The
test then runs it for 2 rounds in Flower's real simulation engine, through the
same `spry run` a user types, with no change to spry/.
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


def _plugin_path(tmp_path: Path) -> Path:
    """A site folder holding the toy package's metadata, as pip would write it."""
    site = tmp_path / "site"
    info = site / "spry_toy_task-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: spry-toy-task\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[spry.tasks]\ntoy = tests.tasks.toy_task:ToyTask\n"
    )
    return site


def _spry(tmp_path: Path, *args: str, timeout: float = 600):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(_plugin_path(tmp_path)), str(ROOT)]),
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.slow  # a simulation
def test_a_task_registered_by_entry_point_runs_two_rounds_in_the_simulation(
    tmp_path,
):
    listed = _spry(tmp_path, "tasks")
    assert listed.returncode == 0, listed.stderr
    assert "toy" in listed.stdout and "two Gaussian blobs" in listed.stdout
    assert "toy.width = 8" in listed.stdout

    results = tmp_path / "results"
    run = _spry(
        tmp_path, "run", "--task", "toy", "--rounds", "2", "--clients", "4",
        "--per-round", "2", "--set", "eval-clients-per-round=2",
        "--set", "toy.width=6", "--set", "batch-size=8", "--set", "lr=0.05",
        "--results-dir", str(results),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    (run_dir,) = results.iterdir()
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(r["clients"] == "2" and r["dropped"] == "0" for r in rows[1:])
    assert float(rows[1]["coverage-trained"]) == 1.0
    # The global model changed; the task's own evaluation scored it
    assert rows[2]["test-loss"] != rows[0]["test-loss"]
    assert all(0 <= float(r["test-accuracy"]) <= 1 for r in rows)
    manifest = json.loads((run_dir / "config.json").read_text())
    assert manifest["task"] == "toy"
    assert manifest["config"]["toy.width"] == 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    # What the clients shared besides weights: counts, merged by the task
    report = summary["task-report"]
    assert report["clients"] == 4
    assert report["examples"] == 40  # 10 held-out points on each of 4 clients
    assert 0 <= report["held-out-accuracy"] <= 1


def test_a_task_option_that_is_invalid_fails_before_training(tmp_path):
    run = _spry(tmp_path, "run", "--task", "toy", "--set", "toy.width=0", timeout=120)
    assert run.returncode == 2
    assert "task 'toy': `width` should be at least 1, got 0" in run.stderr
    assert "Starting" not in run.stderr + run.stdout  # no simulation started
    assert len(run.stderr.strip().splitlines()) == 1

    unknown = _spry(tmp_path, "run", "--task", "toy", "--set", "toy.depth=3")
    assert unknown.returncode == 2
    assert "toy.depth" in unknown.stderr and "toy.width" in unknown.stderr


def test_an_unknown_task_lists_the_registered_ones(tmp_path):
    run = _spry(tmp_path, "run", "--task", "no-such-task", timeout=120)
    assert run.returncode == 2
    assert "unknown task 'no-such-task'; registered tasks:" in run.stderr
    assert "classification" in run.stderr and "toy" in run.stderr
