"""The `tips` task runs 2 text rounds in Flower's real simulation engine.

Through the same `spry run` a user types: 2 clients play 2 real generated
TextWorld games each (a scripted agent, tests/tasks/tips_scripts.py), write tips
from the games' walkthroughs (`source=expert`, a scripted tip writer), and the
server merges them with MiniLM and evaluates on 2 unseen games. What the files
say is what the exchange did: round 1's tips are in round 2's prompts, with which
each client wins its own games; nothing trained.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("textworld")

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = "tests.tasks.tips_scripts"


@pytest.mark.slow  # a simulation plus 6 generated games (about 110 s here)
def test_tips_run_two_text_rounds_in_the_simulation(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    results = tmp_path / "results"
    run = subprocess.run(
        [
            sys.executable, "-m", "cli", "run", "--task", "tips", "--rounds", "2",
            "--clients", "2", "--per-round", "2",
            "--set", f"tips.generator={SCRIPTS}:agent",
            "--set", f"tips.tip-writer={SCRIPTS}:expert_writer",
            "--set", "tips.source=expert",
            "--set", "tips.test-games=2",
            "--set", f"tips.cache-dir={tmp_path / 'cache'}",
            "--results-dir", str(results),
        ],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    (run_dir,) = results.iterdir()
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(r["clients"] == "2" for r in rows[1:])

    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    by_round = {e["round"]: e for e in evaluations}
    assert by_round[0]["tips"] == 0.0 and by_round[2]["tips"] >= 1.0
    for row in evaluations:
        assert row["num-examples"] == 2.0 and 0 <= row["score"] <= 1
        assert row["score-no-tips"] == by_round[0]["score"]  # no tips: the same play
    assert [float(r["test-accuracy"]) for r in rows] == [
        by_round[r]["score"] for r in range(3)
    ]

    log = json.loads((run_dir / "rounds.json").read_text())
    assert log["1"]["train"]["num-examples"] == 4.0  # 2 clients x 2 games
    assert log["1"]["train"]["tips-written"] == 2.0  # one tip a game
    assert log["2"]["train"]["won"] == 1.0  # their own expert tips win their games

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    shared = summary["shared-text"]["tips"]
    assert 1 <= len(shared) <= 8 and all(
        t.startswith("The expert typed") for t in shared
    )
    tips = json.loads((run_dir / "tips.json").read_text())
    assert [t["text"] for t in tips["final-tips"]] == shared
    assert [r["round"] for r in tips["rounds"]] == [1, 2]
    played = (run_dir / "tips-trajectories.jsonl").read_text().splitlines()
    assert len(played) == 2
