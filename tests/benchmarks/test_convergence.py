from __future__ import annotations

import pytest

from benchmarks.convergence import RunSpec, main, markdown, summarize, time_to


def _rows(accuracies, seconds_per_round=10.0, extra=100.0):
    return [
        {
            "round": float(i),
            "test-accuracy": acc,
            "majority-rate": 0.578,
            "elapsed-seconds": 5.0 + seconds_per_round * i,
            **({"client-peak-mib": 800.0, "client-peak-extra-mib": extra} if i else {}),
        }
        for i, acc in enumerate(accuracies)
    ]


def test_a_run_spec_names_a_label_a_method_and_settings():
    assert RunSpec.parse("spry") == RunSpec("spry", "spry")
    assert RunSpec.parse("fedavg:lr=1e-3") == RunSpec("fedavg", "fedavg", ("lr=1e-3",))
    assert RunSpec.parse("pooler=fedavg:pooling=model,lr=1e-3") == RunSpec(
        "pooler", "fedavg", ("pooling=model", "lr=1e-3")
    )
    with pytest.raises(ValueError, match="unknown method 'fedprox'"):
        RunSpec.parse("fedprox")
    with pytest.raises(ValueError, match="LABEL=]METHOD"):
        RunSpec.parse("spry:lr")


def test_time_to_a_target_skips_the_untrained_round():
    rows = _rows([0.66, 0.60, 0.66, 0.71])
    assert time_to(rows, 0.65) == (2, 25.0)
    assert time_to(rows, 0.70) == (3, 35.0)
    assert time_to(rows, 0.80) is None


def test_the_table_gives_times_and_ratios_to_the_reference():
    targets = [0.65, 0.70]
    fedavg = summarize(RunSpec.parse("fedavg"), _rows([0.5, 0.66, 0.72]), targets)
    spry = summarize(
        RunSpec.parse("spry"), _rows([0.5, 0.6, 0.66, 0.7], 15.0, 40.0), targets
    )
    mezo = summarize(RunSpec.parse("fedmezo"), _rows([0.5, 0.57]), targets)

    table = markdown([fedavg, spry, mezo], targets, "fedavg")

    # fedavg reaches 70% at round 2 (25 s); spry at round 3 (50 s): ratio 2.00
    assert "| fedavg | fedavg | - | 72.0% | 72.0% | 1 / 15 | 2 / 25 | 1.00 |" in table
    assert "| spry | spry | - | 70.0% | 70.0% | 2 / 35 | 3 / 50 | 2.00 |" in table
    assert "| 800 (40) | 0.40 | 15.0 |" in table
    assert (
        "| fedmezo | fedmezo | - | 57.0% | 57.0% | not reached | not reached | - |"
        in (table)
    )
    assert "majority class is 57.8%" in table


def test_bad_runs_are_refused_before_anything_runs(capsys):
    assert main(["--run", "fedprox"]) == 2
    assert "known: spry" in capsys.readouterr().err
    assert main(["--run", "a=spry", "--run", "a=fedavg"]) == 2
    assert "distinct" in capsys.readouterr().err
