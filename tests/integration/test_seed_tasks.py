"""The seed tasks end to end in Flower's simulation engine, cut down to seconds.

Slow (`make test-all`): each is a simulation; the tasks' own tests cover them
without one (tests/tasks/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SMALL = ["--rounds", "1", "--clients", "4", "--per-round", "2",
         "--set", "eval-clients-per-round=2"]  # fmt: skip


def _run(tmp_path: Path, *args: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", *SMALL, *args,
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    return run_dir


def test_verix_trains_then_explains_with_verified_masks(tmp_path):
    run_dir = _run(
        tmp_path, "--task", "verix",
        "--set", "verix.hidden=8", "--set", "verix.explain-images=2",
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["verix"]["explained"] == 2 and summary["verix"]["sound"] == 2
    assert len(list((run_dir / "explanations").glob("*.png"))) == 2
    weights = dict(__import__("numpy").load(run_dir / "final-weights.npz"))
    assert set(weights) == {
        "hidden1.weight", "hidden1.bias", "classifier.weight", "classifier.bias"
    }  # fmt: skip


def test_raee_clients_share_counts_the_server_merges(tmp_path):
    run_dir = _run(
        tmp_path, "--task", "raee",
        "--set", "max-train-examples=200", "--set", "max-test-examples=32",
        "--set", "client-eval-fraction=0.2",
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    report = summary["task-report"]
    assert report["clients"] == 4 and report["examples"] == 40  # 20% of 200
    assert 1 <= report["average-exit-layer"] <= 6
    assert 0 <= report["accuracy"] <= 1 and report["speed-up"] > 0
    assert {f"fixed-exit-{i}-accuracy" for i in range(1, 7)} <= set(report)
    # The task's tuned settings were applied under the command line's
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["num-tangents"] == 16 and config["num-clients"] == 4
