"""End to end through Flower's real simulation engine (Ray), on the real default model.

Two runs with the same seed must give identical per-round metrics; every Ray process
they start must be gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .runs import metrics_rows

SMALL_RUN = [
    "--rounds",
    "2",
    "--clients",
    "3",
    "--per-round",
    "3",
    "--set",
    "eval-clients-per-round=3",
    "--set",
    "max-train-examples=96",
    "--set",
    "max-test-examples=64",
    "--set",
    "lr=0.01",
]


def _ray_pids() -> set[int]:
    out = subprocess.run(
        ["pgrep", "-f", "raylet|gcs_server|ray::|default_worker.py"],
        capture_output=True,
        text=True,
    ).stdout
    return {int(pid) for pid in out.split()}


ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _command(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "spry.cli", "run", *SMALL_RUN,
            "--results-dir", str(results), *extra]  # fmt: skip


def _new_ray_pids(before: set[int], grace: float = 30.0) -> set[int]:
    """Ray processes started since `before` still alive after a grace period.

    ray.shutdown() stops Ray's daemons at once; its workers notice and exit a moment
    later, so allow them a few seconds.
    """
    deadline = time.monotonic() + grace
    while (left := _ray_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _run(results: Path, *extra: str) -> Path:
    result = subprocess.run(
        _command(results, *extra), capture_output=True, text=True, timeout=600, env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = results.iterdir()
    return run_dir


def test_two_round_spry_run_is_complete_reproducible_and_leaves_nothing(tmp_path):
    before = _ray_pids()

    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")

    # The run wrote its results
    rows = metrics_rows(first)
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(r["federated-accuracy"] for r in rows[1:])
    assert all(r["dropped"] == "0" and r["clients"] == "3" for r in rows[1:])
    assert float(rows[1]["coverage-trained"]) == 1.0
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "completed"
    # The pooled head's feature center came from the clients' training examples
    assert 0 < summary["feature-center-examples"] <= 96
    assert (first / "plot.png").stat().st_size > 10_000
    manifest = json.loads((first / "config.json").read_text())
    assert manifest["config"]["num-server-rounds"] == 2
    # The global model changed: the test loss moved after training
    assert rows[2]["test-loss"] != rows[0]["test-loss"]
    # Reproducible: identical per-round metrics with the same seed
    assert metrics_rows(second) == rows
    # Nothing left behind
    assert _new_ray_pids(before) == set()


def test_ctrl_c_stops_the_run_and_every_worker(tmp_path):
    import signal

    before = _ray_pids()
    proc = subprocess.Popen(
        _command(tmp_path, "--rounds", "50"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        # Interrupt once the first training round has started on the Ray workers
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            if "[ROUND 1/50]" in line or time.monotonic() > deadline:
                break
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest[-2000:]
    assert "interrupted" in rest
    assert _new_ray_pids(before) == set()
    # What was measured before the interrupt is on disk
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "metrics.csv").read_text().count("\n") >= 2


# Every strategy and engine, 2 rounds each; K cut down where a preset's is costly.
BASELINES = {
    "fedavg": [],
    "fedavg-ckpt": [],
    "fedmezo": [],
    "fedsgd": [],
    "spry-iter": [],
    "baffle": ["--set", "num-tangents=4"],
    "fwdllm": [],
    "baffle-plus": ["--set", "num-tangents=2"],
    "fwdllm-plus": ["--set", "num-tangents=2"],
}


@pytest.mark.parametrize("method", list(BASELINES))
def test_baseline_methods_run_two_rounds_in_the_same_harness(method, tmp_path):
    run_dir = _run(tmp_path, "--method", method, *BASELINES[method])

    rows = metrics_rows(run_dir)
    manifest = json.loads((run_dir / "config.json").read_text())
    assert manifest["method"] == method
    assert run_dir.name.split("-", 2)[2].startswith(method)
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(r["dropped"] == "0" and r["clients"] == "3" for r in rows[1:])
    assert all(int(r["forward-passes"]) > 0 for r in rows[1:])
    assert rows[2]["test-loss"] != rows[0]["test-loss"]
    if manifest["config"]["upload-scalars"]:  # K float64 scalars, not tensors
        k = manifest["config"]["num-tangents"]
        assert float(rows[1]["upload-bytes-per-client"]) == 8 * k


def test_spry_with_scalar_uploads_ends_where_spry_with_weights_does(tmp_path):
    # The server replays each client's AdamW from its scalars: same model, ~300x
    # less upload. (Scalars name random tangents: the head shares them.)
    shared = ("--set", "head-gradient=shared")
    weights = metrics_rows(_run(tmp_path / "weights", *shared))
    scalars = metrics_rows(
        _run(tmp_path / "scalars", *shared, "--set", "upload-scalars=true")
    )
    for a, b in zip(weights, scalars, strict=True):
        assert float(b["test-loss"]) == pytest.approx(float(a["test-loss"]), rel=1e-5)
        assert b["test-accuracy"] == a["test-accuracy"]
    upload = [float(r["upload-bytes-per-client"]) for r in (weights[1], scalars[1])]
    assert upload[1] < upload[0] / 100
