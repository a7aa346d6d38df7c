"""A run's results files are standard JSON, whatever the run measured.

Python's json module writes `Infinity` and `NaN` unless told not to, and most
readers (jq, browsers, JSON.parse) then reject the whole file. The files are read
back here with a parser that refuses them.
"""

from __future__ import annotations

import math

from server.results import RunRecorder, profile_summary
from spry.config import RunConfig
from spry.devices import CATALOG, HOST, Fleet
from spry.jsonfile import write_json
from tests.helpers import strict_json

MIB = 2**20


def _round_log() -> dict[int, dict]:
    """Two rounds of a strategy's log: one measured peak per round on partition 2."""
    return {
        r: {
            "dropped": 0,
            "device-seconds": 1.5,
            "train-wall-seconds": 2.0,
            # (partition, slice tensors, extra, worker RSS, predicted) in bytes
            "peaks": [(2, 4, 100 * MIB, 900 * MIB, 800 * MIB)],
        }
        for r in (1, 2)
    }


def test_an_unbudgeted_device_is_null_budget_mib_not_infinity(tmp_path):
    # Prepare: two host clients (no budget) and a phone
    cfg = RunConfig.from_run_config({"results-dir": str(tmp_path)})
    recorder = RunRecorder.create(cfg)
    recorder.fleet = Fleet([HOST, HOST, CATALOG["phone-4gb"]])

    # Execute
    path = recorder.finish(round_log=_round_log())

    # Assert: every file the run wrote parses strictly; the host has no budget
    summary = strict_json(path)
    strict_json(path.parent / "rounds.json")
    strict_json(path.parent / "config.json")
    profiles = summary["profiles"]
    assert profiles["host"]["budget-mib"] is None
    assert profiles["host"]["clients"] == 2
    assert profiles["phone-4gb"]["budget-mib"] == 1536
    assert profiles["phone-4gb"]["client-rounds-trained"] == 2
    assert profiles["phone-4gb"]["measured-extra-mib-max"] == 100


def test_a_non_finite_measurement_is_written_as_null(tmp_path):
    # A diverged run: what has no finite value is null, the rest as measured
    value = {"loss": math.nan, "rounds": [1.0, math.inf, -math.inf], "ok": 0.5}

    write_json(tmp_path / "x.json", value)

    assert strict_json(tmp_path / "x.json") == {
        "loss": None,
        "rounds": [1.0, None, None],
        "ok": 0.5,
    }


# ------------------------------------------- the paper's metric (fine-tuned)
CENTRAL = {"accuracy": 0.7, "loss": 0.6}
FEDERATED = {
    "accuracy": 0.65,
    "loss": 0.62,
    "finetuned-accuracy": 0.8,
    "finetuned-loss": 0.45,
}


def _rows(path):
    import csv

    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_finetuned_federated_score_is_a_column_beside_the_plain_one(
    tmp_path, caplog
):
    cfg = RunConfig.from_run_config({"results-dir": str(tmp_path)})
    recorder = RunRecorder.create(cfg)

    recorder.record(0, CENTRAL, {})  # round 0: no federated evaluation
    with caplog.at_level("INFO"):
        recorder.record(1, CENTRAL, {"federated-evaluate": FEDERATED})
    summary = strict_json(recorder.finish())

    first, second = _rows(recorder.directory)
    assert first["federated-finetuned-accuracy"] == ""
    assert float(second["federated-accuracy"]) == 0.65
    assert float(second["federated-finetuned-accuracy"]) == 0.8
    assert float(second["federated-finetuned-loss"]) == 0.45
    assert "fed acc 65.0% (fine-tuned 80.0%)" in caplog.text
    assert summary["final-federated-accuracy"] == 0.65
    assert summary["final-federated-finetuned-accuracy"] == 0.8
    assert (recorder.directory / "plot.png").stat().st_size > 0


def test_rows_from_before_the_finetuned_score_still_reopen(tmp_path):
    # A checkpoint's rows written before the columns existed: empty cells, a plot
    # without the line, null in the summary
    cfg = RunConfig.from_run_config({"results-dir": str(tmp_path)})
    old = RunRecorder.create(cfg)
    row = old.record(1, CENTRAL, {"federated-evaluate": {"accuracy": 0.6, "loss": 1}})
    for key in ("federated-finetuned-accuracy", "federated-finetuned-loss"):
        del row[key]
    state = old.checkpoint_state()

    recorder = RunRecorder.reopen(old.directory, cfg, state)
    recorder.record(2, CENTRAL, {"federated-evaluate": FEDERATED})
    summary = strict_json(recorder.finish())

    first, second = _rows(recorder.directory)
    assert first["federated-accuracy"] == "0.6"
    assert first["federated-finetuned-accuracy"] == ""
    assert float(second["federated-finetuned-accuracy"]) == 0.8
    assert summary["final-federated-finetuned-accuracy"] == 0.8


def test_a_device_row_sets_the_measured_peak_beside_the_prediction_and_flags_it():
    # Prepare: a memory model whose probe process held 700 MiB before its steps and
    # predicts 800 MiB; a phone of 1536 MiB; one client-round measured a 900 MiB step
    # (700 + 900 > 1536: over), one a 100 MiB step
    from spry.memory_model import MemoryModel

    probe = {"peak_bytes": 760 * MIB, "step_extra_bytes": 60 * MIB, "params": 10}
    memory = MemoryModel(760 * MIB, 0.0, probes=(probe, probe))
    fleet = Fleet([CATALOG["phone-4gb"]] * 2, memory)
    round_log = {
        1: {"peaks": [(0, 4, 900 * MIB, 1700 * MIB, 800 * MIB, 64),
                      (1, 4, 100 * MIB, 900 * MIB, 800 * MIB, 40)]},
    }  # fmt: skip

    # Execute
    (row,) = profile_summary(fleet, round_log).values()

    # Assert: measured peak = the probe's baseline + the measured step extra
    assert row["predicted-peak-mib-max"] == 800
    assert row["predicted-extra-mib-max"] == 100
    assert row["measured-extra-mib-max"] == 900
    assert row["measured-peak-mib-max"] == 1600
    assert row["client-rounds-over-budget"] == 1 and row["measured-exceeds-budget"]


def test_every_number_the_task_evaluates_is_kept_per_round_and_survives_resume(
    tmp_path,
):
    # A task's paper metrics beyond accuracy and loss (SEP's base/new/H) have no
    # CSV column: evaluations.json holds them, round by round, through a resume
    cfg = RunConfig.from_run_config({"results-dir": str(tmp_path)})
    old = RunRecorder.create(cfg)
    old.record(0, {**CENTRAL, "new-accuracy": 0.3, "num-examples": 40}, {})
    state = old.checkpoint_state()

    recorder = RunRecorder.reopen(old.directory, cfg, state)
    recorder.record(1, {**CENTRAL, "new-accuracy": math.nan, "note": "text"}, {})

    assert strict_json(recorder.directory / "evaluations.json") == [
        {"round": 0, "accuracy": 0.7, "loss": 0.6, "new-accuracy": 0.3,
         "num-examples": 40.0},
        {"round": 1, "accuracy": 0.7, "loss": 0.6, "new-accuracy": None},
    ]  # fmt: skip
    header = (recorder.directory / "metrics.csv").read_text().splitlines()[0]
    assert "task-metrics" not in header and "new-accuracy" not in header
