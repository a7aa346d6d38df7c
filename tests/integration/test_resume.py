"""Kill a run after a round, resume it: it must end with the uninterrupted weights.

Real processes through Flower's simulation engine: `spry run` is started, SIGKILLed
(with every process it started) as soon as its first checkpoint is on disk, and
resumed with `spry run --resume FOLDER`. Clients keep nothing between rounds and
every draw is a function of (seed, round), so the resumed rounds compute exactly
what the uninterrupted run's did.

The kill-and-resume test runs `spry run` three times (about 2 minutes on two idle
cores). The same exactness is also checked without processes, at the strategy level
(tests/strategies/test_checkpoint_state.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from server.checkpoint import CHECKPOINT_FILE, load

from .runs import metrics_rows

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ROUNDS = 3
SMALL_RUN = [
    "--rounds", str(ROUNDS), "--clients", "3", "--per-round", "3",
    "--set", "eval-clients-per-round=3", "--set", "max-train-examples=96",
    "--set", "max-test-examples=64", "--set", "lr=0.01",
]  # fmt: skip

def _spry(*args: str) -> list[str]:
    return [sys.executable, "-m", "spry.cli", "run", *args]


def _finish(command: list[str], log: Path) -> None:
    with open(log, "w") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=600, env=ENV
        )
    assert result.returncode == 0, log.read_text()[-3000:]


def _kill_after_first_checkpoint(command: list[str], results: Path, log: Path) -> Path:
    """Start `command`, SIGKILL it and all it started once a checkpoint exists."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,  # its own process group, killed as a whole
        )
    try:
        deadline = time.monotonic() + 480
        while not (found := list(results.glob(f"*/{CHECKPOINT_FILE}"))):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 480 s"
            time.sleep(0.05)
        started = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in started:  # Ray daemons that left the process group
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"still running after SIGKILL: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return found[0].parent


def test_a_killed_run_resumes_to_the_uninterrupted_runs_final_weights(tmp_path):
    # Prepare: the uninterrupted run, and the same run killed after its checkpoint
    whole = tmp_path / "whole"
    _finish(_spry(*SMALL_RUN, "--results-dir", str(whole)), tmp_path / "whole.log")
    (whole_dir,) = whole.iterdir()
    killed = tmp_path / "killed"
    run_dir = _kill_after_first_checkpoint(
        _spry(*SMALL_RUN, "--results-dir", str(killed)), killed, tmp_path / "kill.log"
    )
    saved = load(run_dir)
    assert 1 <= saved.server_round < ROUNDS
    assert not (run_dir / "summary.json").exists()  # it never got to finish

    # Execute: resume with nothing but the folder (the config is the checkpoint's)
    _finish(_spry("--resume", str(run_dir)), tmp_path / "resume.log")

    # Assert: the same final weights, bit for bit, and the resume did train
    resumed_log = (tmp_path / "resume.log").read_text()
    assert f"resuming from round {saved.server_round} (" in resumed_log
    expected = np.load(whole_dir / "final-weights.npz")
    final = np.load(run_dir / "final-weights.npz")
    assert sorted(final.files) == sorted(expected.files)
    for name in expected.files:
        assert np.array_equal(final[name], expected[name]), name
    assert any(not np.array_equal(final[n], saved.weights[n]) for n in final.files)
    # The resumed run's records are the uninterrupted run's, round 0 to the last
    assert metrics_rows(run_dir) == metrics_rows(whole_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["resumed-from-rounds"] == [saved.server_round]
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert list(rounds) == [str(r) for r in range(1, ROUNDS + 1)]
    assert load(run_dir).server_round == ROUNDS


def test_resuming_with_another_seed_is_refused_in_one_line_before_any_work(tmp_path):
    from server.checkpoint import Checkpoint, save
    from spry.config import RunConfig

    save(
        tmp_path / CHECKPOINT_FILE,
        Checkpoint(server_round=1, weights={}, config=RunConfig().to_mapping()),
    )

    result = subprocess.run(
        _spry("--resume", str(tmp_path), "--seed", "1"),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )

    assert result.returncode == 2
    (line,) = [s for s in result.stderr.splitlines() if s.startswith("spry: error:")]
    assert "cannot resume from" in line and "seed 0 -> 1" in line
    assert "Traceback" not in result.stderr
