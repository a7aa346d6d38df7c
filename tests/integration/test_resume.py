"""Kill a run after a round, resume it: it must end with the uninterrupted weights.

Real processes through Flower's simulation engine: `spry run` is started, SIGKILLed
(with every process it started) as soon as its first checkpoint is on disk, and
resumed with `spry run --resume FOLDER`. Clients keep nothing between rounds and
every draw is a function of (seed, round), so the resumed rounds compute exactly
what the uninterrupted run's did.

The uninterrupted run is the session's shared reference run (conftest.py); the
kill-and-resume test adds two runs (slow: `make test-all`). The same exactness is
also checked without processes, at the strategy level
(tests/strategies/test_checkpoint_state.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from server.checkpoint import CHECKPOINT_FILE, load
from tests.helpers import strict_json

from .runs import ENV, REFERENCE_ROUNDS, REFERENCE_RUN, ROOT, metrics_rows, spry_command


def _finish(command: list[str], log: Path) -> None:
    with open(log, "w") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=600, env=ENV,
            cwd=ROOT,
        )  # fmt: skip
    assert result.returncode == 0, log.read_text()[-3000:]


def _kill_after_first_checkpoint(command: list[str], results: Path, log: Path) -> Path:
    """Start `command`, SIGKILL it and all it started once a checkpoint exists."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=ROOT,
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


@pytest.mark.slow  # two more runs, one killed
def test_a_killed_run_resumes_to_the_uninterrupted_runs_final_weights(
    reference_run, tmp_path
):
    # Prepare: the uninterrupted run, and the same run killed after its checkpoint
    whole_dir = reference_run.run_dir
    killed = tmp_path / "killed"
    run_dir = _kill_after_first_checkpoint(
        spry_command("run", *REFERENCE_RUN, "--results-dir", str(killed)),
        killed,
        tmp_path / "kill.log",
    )
    saved = load(run_dir)
    assert 1 <= saved.server_round < REFERENCE_ROUNDS
    assert not (run_dir / "summary.json").exists()  # it never got to finish

    # Execute: resume with nothing but the folder (the config is the checkpoint's)
    _finish(spry_command("run", "--resume", str(run_dir)), tmp_path / "resume.log")

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
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "completed"
    assert summary["resumed-from-rounds"] == [saved.server_round]
    rounds = strict_json(run_dir / "rounds.json")
    assert list(rounds) == [str(r) for r in range(1, REFERENCE_ROUNDS + 1)]
    assert load(run_dir).server_round == REFERENCE_ROUNDS


def test_resuming_with_another_seed_is_refused_in_one_line_before_any_work(tmp_path):
    from server.checkpoint import Checkpoint, save
    from spry.config import RunConfig

    save(
        tmp_path / CHECKPOINT_FILE,
        Checkpoint(server_round=1, weights={}, config=RunConfig().to_mapping()),
    )

    result = subprocess.run(
        spry_command("run", "--resume", str(tmp_path), "--seed", "1"),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=ROOT,
    )

    assert result.returncode == 2
    (line,) = [s for s in result.stderr.splitlines() if s.startswith("spry: error:")]
    assert "cannot resume from" in line and "seed 0 -> 1" in line
    assert "Traceback" not in result.stderr
