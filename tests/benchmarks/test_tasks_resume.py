"""`benchmarks.tasks --resume`: a completed run under the same command is kept."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.tasks import SETTINGS, VARIANTS, chosen_variants, run_task


def _command(out, task="raee", rounds=2):
    command = ["-m", "cli", "run", "--task", task, "--rounds", str(rounds),
               "--seed", "0", "--results-dir", str(out)]  # fmt: skip
    for item in SETTINGS[task]:
        command += ["--set", item]
    return command


def _finished_run(out, status="completed"):
    run_dir = out / "raee-run"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status}))
    return run_dir


@pytest.mark.parametrize("claim", ["command.json", "started.json"])
def test_a_completed_run_of_the_same_command_is_kept(tmp_path, claim):
    # started.json alone: the run finished, the wrapper was killed before it
    # wrote command.json
    run_dir = _finished_run(tmp_path)
    (tmp_path / claim).write_text(json.dumps(_command(tmp_path)))
    assert run_task("raee", 2, 0, [], tmp_path, resume=True) == run_dir


@pytest.mark.parametrize("why", ["other-command", "failed", "no-resume"])
def test_anything_else_runs_again(tmp_path, monkeypatch, why):
    # Prepare: a run that must not be kept; the "run" that replaces it is `false`,
    # so that running at all is seen as the CalledProcessError it raises
    _finished_run(tmp_path, status="failed" if why == "failed" else "completed")
    rounds = 3 if why == "other-command" else 2
    (tmp_path / "command.json").write_text(json.dumps(_command(tmp_path)))
    monkeypatch.setattr(sys, "executable", "false")

    with pytest.raises(__import__("subprocess").CalledProcessError):
        run_task("raee", rounds, 0, [], tmp_path, resume=why != "no-resume")
    assert not (tmp_path / "command.json").exists()  # no stale claim left behind


def test_an_unfinished_run_of_the_same_command_goes_on_from_its_checkpoint(
    tmp_path, monkeypatch
):
    # Prepare: a run that the same command started and a session end cut short;
    # `echo` stands in for the interpreter, so run.log shows the command it got
    run_dir = _finished_run(tmp_path, status="running")
    (run_dir / "checkpoint.npz").write_bytes(b"")
    (tmp_path / "started.json").write_text(json.dumps(_command(tmp_path)))
    monkeypatch.setattr(sys, "executable", "echo")

    assert run_task("raee", 2, 0, [], tmp_path, resume=True) == run_dir

    logged = (tmp_path / "run.log").read_text().split()
    assert logged[-2:] == ["--resume", str(run_dir)]
    assert logged[:-2] == _command(tmp_path)  # the same flags, repeated
    assert json.loads((tmp_path / "command.json").read_text()) == _command(tmp_path)


def test_a_checkpoint_of_another_command_is_not_continued(tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path, status="running")
    (run_dir / "checkpoint.npz").write_bytes(b"")
    (tmp_path / "started.json").write_text(json.dumps(_command(tmp_path, rounds=3)))
    monkeypatch.setattr(sys, "executable", "echo")

    run_task("raee", 2, 0, [], tmp_path, resume=True)

    assert "--resume" not in (tmp_path / "run.log").read_text()
    assert json.loads((tmp_path / "started.json").read_text()) == _command(tmp_path)


def test_variants_are_chosen_by_label_and_an_unknown_label_names_the_known_ones():
    labels = [label for label, _, _ in chosen_variants("tips", ["expert", "own"])]
    assert labels == ["own", "expert"]  # the table's order, not the command line's
    assert len(chosen_variants("tips", [])) == len(VARIANTS["tips"])
    with pytest.raises(SystemExit, match="no variant fast.*own, expert"):
        chosen_variants("tips", ["own", "fast"])
