"""Twenty kinds of malformed client replies through Flower's real simulation engine.

Eight clients, three rounds, all sampled every round: seven of them send one of
tests/malformed.py's kinds each round until all twenty are sent
(malformed_client_app.py), the rest are the real client. The server must reject
each with a log line naming round, node, partition and reason, finish every
round, apply the honest replies, and count the rejections in its results.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers import strict_json
from tests.integration.malformed_client_app import kind_for
from tests.malformed import KINDS

ROOT = Path(__file__).resolve().parents[2]
ROUNDS, CLIENTS = 3, 8
# `spry run`, with the ClientApp swapped for the lying one
MAIN = (
    "import sys, cli.main, cli.run; "
    "cli.run.CLIENT_APP = 'tests.integration.malformed_client_app:app'; "
    "sys.exit(cli.main.main(sys.argv[1:]))"
)


def _run(results: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-c", MAIN, "run", "--rounds", str(ROUNDS),
        "--clients", str(CLIENTS), "--per-round", str(CLIENTS),
        "--partitioner", "iid", "--results-dir", str(results),
        "--set", "eval-clients-per-round=2", "--set", "max-train-examples=64",
        "--set", "max-test-examples=32",
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        # The Ray workers import the lying ClientApp from the tests package
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )


def test_twenty_kinds_of_malformed_replies_are_rejected_and_the_run_finishes(
    tmp_path,
):
    # Every kind is sent once, by a known (round, partition)
    plan = {
        (r, p): kind_for(r, p)
        for r in range(1, ROUNDS + 1)
        for p in range(CLIENTS)
        if kind_for(r, p) is not None
    }
    assert sorted(k.name for k in plan.values()) == sorted(k.name for k in KINDS)

    done = _run(tmp_path / "results")

    assert done.returncode == 0, done.stderr[-3000:]
    # One rejection line for each kind, naming its round, partition and reason
    lines = [line for line in done.stderr.splitlines() if "invalid reply:" in line]
    assert len(lines) == len(KINDS), "\n".join(lines)
    for (r, p), kind in plan.items():
        (line,) = [x for x in lines if f"round {r}: " in x and f"(partition {p})" in x]
        assert kind.reason in line, (kind.name, line)
    # Every round finished; the honest replies were aggregated
    (run_dir,) = (tmp_path / "results").iterdir()
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "completed"
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2", "3"]
    honest = [CLIENTS - sum(1 for (r, _) in plan if r == n) for n in (1, 2, 3)]
    assert [int(r["clients"]) for r in rows[1:]] == honest
    assert [int(r["dropped-invalid"]) for r in rows[1:]] == [
        CLIENTS - h for h in honest
    ]
    assert rows[-1]["test-loss"] != rows[0]["test-loss"]
    final = np.load(run_dir / "final-weights.npz")
    assert all(np.all(np.isfinite(final[name])) for name in final.files)
    # The results count them, and say who was rejected for what
    assert summary["dropouts"]["dropped-invalid"] == len(KINDS)
    assert summary["dropouts"]["dropped"] == len(KINDS)
    rejected = summary["rejected-replies"]
    for (r, p), kind in plan.items():
        assert kind.reason in rejected[str(r)][f"partition {p}"]
    assert "rejected 7 invalid replies" in done.stderr
