"""`eval-finetune-epochs` end to end: the paper's metric beside, nothing else moves.

The reference run (conftest.py) again with each evaluation client fine-tuning a
copy for one local epoch: the fine-tuned scores fill their columns, and every other
number (central test scores, the plain federated scores, training) is the
reference's, so the fine-tuning reached neither training nor the global model.
"""

from __future__ import annotations

import pytest

from tests.helpers import strict_json

from .runs import REFERENCE_RUN, metrics_rows, run_spry

FINETUNED = ("federated-finetuned-accuracy", "federated-finetuned-loss")


@pytest.mark.slow  # a second simulation beside the shared reference
def test_the_finetuned_score_is_reported_and_changes_nothing_else(
    reference_run, tmp_path
):
    run_dir = run_spry(tmp_path, *REFERENCE_RUN, "--set", "eval-finetune-epochs=1")

    rows, expected = metrics_rows(run_dir), metrics_rows(reference_run.run_dir)
    assert [{k: v for k, v in r.items() if k not in FINETUNED} for r in rows] == [
        {k: v for k, v in r.items() if k not in FINETUNED} for r in expected
    ]
    assert all(r[k] == "" for r in expected for k in FINETUNED)
    assert rows[0]["federated-finetuned-accuracy"] == ""  # round 0: no clients
    for row in rows[1:]:
        assert 0.0 <= float(row["federated-finetuned-accuracy"]) <= 1.0
        assert float(row["federated-finetuned-loss"]) > 0.0
    summary = strict_json(run_dir / "summary.json")
    final = float(rows[-1]["federated-finetuned-accuracy"])
    assert summary["final-federated-finetuned-accuracy"] == final
