"""End to end through Flower's real simulation engine (Ray), on the real default model.

Two runs with the same seed must give identical per-round metrics and final weights;
every Ray process they start must be gone afterwards. The first run is the session's
shared reference run (conftest.py); the other tests here are slow (`make test-all`).
"""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest

from tests.helpers import strict_json

from .runs import (
    REFERENCE_ROUNDS,
    REFERENCE_RUN,
    SMALL_RUN,
    marked_env,
    metrics_rows,
    run_spry,
    spry_command,
    survivors,
)

# The 2-round runs of every method
TWO_ROUNDS = ("--rounds", "2", *SMALL_RUN)


def test_a_spry_run_is_complete_reproducible_and_leaves_nothing(
    reference_run, tmp_path
):
    first = reference_run.run_dir

    second = run_spry(tmp_path, *REFERENCE_RUN)

    # The run wrote its results
    rows = metrics_rows(first)
    assert [r["round"] for r in rows] == [str(r) for r in range(REFERENCE_ROUNDS + 1)]
    assert all(r["federated-accuracy"] for r in rows[1:])
    assert all(r["dropped"] == "0" and r["clients"] == "3" for r in rows[1:])
    assert float(rows[1]["coverage-trained"]) == 1.0
    # Class scores beside accuracy, every round; balanced accuracy of two classes
    # is the mean recall, so it lies in [0, 1] and so does macro-F1
    for row in rows:
        assert 0.0 <= float(row["test-macro-f1"]) <= 1.0
        assert 0.0 <= float(row["test-balanced-accuracy"]) <= 1.0
    # Valid JSON for any reader: no Infinity (the unbudgeted host) or NaN
    summary = strict_json(first / "summary.json")
    strict_json(first / "rounds.json")
    assert summary["status"] == "completed"
    assert summary["profiles"]["host"]["budget-mib"] is None  # no budget
    # The pooled head's feature center came from the clients' training examples
    assert 0 < summary["feature-center-examples"] <= 96
    assert (first / "plot.png").stat().st_size > 10_000
    manifest = strict_json(first / "config.json")
    assert manifest["config"]["num-server-rounds"] == REFERENCE_ROUNDS
    # The global model changed: the test loss moved after training
    assert rows[-1]["test-loss"] != rows[0]["test-loss"]
    # Reproducible: identical per-round metrics and final weights with the same seed
    assert metrics_rows(second) == rows
    expected, final = (np.load(d / "final-weights.npz") for d in (first, second))
    assert sorted(final.files) == sorted(expected.files)
    assert all(np.array_equal(final[n], expected[n]) for n in expected.files)
    # Nothing left behind, by either run
    assert reference_run.survivors == set()
    assert survivors(tmp_path) == set()


def test_clients_report_their_step_peak_from_workers_running_the_live_allocator(
    reference_run,
):
    """Each reply's step peak is measured inside a real Ray worker under LIVE_ENV.

    The worker checks it runs the live allocator (`spry.memory.live_allocator`:
    LIVE_ENV in its environment and glibc returning freed blocks), which it can
    only do when `spry run` put LIVE_ENV in the environment Ray's workers start
    with; the step peak must then be the step's own memory: positive, well below
    the worker's whole resident set, at a batch length the data can have.
    """
    run = reference_run.run_dir
    rounds = strict_json(run / "rounds.json")
    rows = metrics_rows(run)
    summary = strict_json(run / "summary.json")

    # Every trained round: every client ran the live allocator
    assert all(r["client-live-allocator"] == "1" for r in rows[1:])
    assert summary["client-step-peak"]["live-allocator"] is True
    # Each client-round: (partition, tensors, extra, worker RSS, predicted, tokens)
    peaks = [p for r in range(1, REFERENCE_ROUNDS + 1) for p in rounds[str(r)]["peaks"]]
    assert len(peaks) == 3 * REFERENCE_ROUNDS
    for _, _, extra, total, _, tokens in peaks:
        assert 0 < extra < total / 4, (extra, total)  # the step, not the worker
        assert 0 < tokens <= 64  # max-length
    assert summary["client-step-peak"]["extra-mib"] == max(p[2] for p in peaks) / 2**20


@pytest.mark.slow  # a third simulation
def test_ctrl_c_stops_the_run_and_every_worker(tmp_path):
    proc = subprocess.Popen(
        spry_command(
            "run", "--rounds", "50", *SMALL_RUN, "--results-dir", str(tmp_path)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=marked_env(tmp_path),
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
    assert survivors(tmp_path) == set()
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


@pytest.mark.slow  # nine simulations
@pytest.mark.parametrize("method", list(BASELINES))
def test_baseline_methods_run_two_rounds_in_the_same_harness(method, tmp_path):
    run_dir = run_spry(tmp_path, *TWO_ROUNDS, "--method", method, *BASELINES[method])

    rows = metrics_rows(run_dir)
    manifest = strict_json(run_dir / "config.json")
    assert manifest["method"] == method
    assert run_dir.name.split("-", 2)[2].startswith(method)
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(r["dropped"] == "0" and r["clients"] == "3" for r in rows[1:])
    assert all(int(r["forward-passes"]) > 0 for r in rows[1:])
    assert rows[2]["test-loss"] != rows[0]["test-loss"]
    if manifest["config"]["upload-scalars"]:  # K float64 scalars, not tensors
        k = manifest["config"]["num-tangents"]
        assert float(rows[1]["upload-bytes-per-client"]) == 8 * k


@pytest.mark.slow  # two simulations
def test_spry_with_scalar_uploads_ends_where_spry_with_weights_does(tmp_path):
    # The server replays each client's AdamW from its scalars: same model, ~300x
    # less upload. (Scalars name random tangents: the head shares them.)
    shared = ("--set", "head-gradient=shared")
    weights = metrics_rows(run_spry(tmp_path / "weights", *TWO_ROUNDS, *shared))
    scalars = metrics_rows(
        run_spry(
            tmp_path / "scalars", *TWO_ROUNDS, *shared, "--set", "upload-scalars=true"
        )
    )
    for a, b in zip(weights, scalars, strict=True):
        assert float(b["test-loss"]) == pytest.approx(float(a["test-loss"]), rel=1e-5)
        assert b["test-accuracy"] == a["test-accuracy"]
    upload = [float(r["upload-bytes-per-client"]) for r in (weights[1], scalars[1])]
    assert upload[1] < upload[0] / 100
