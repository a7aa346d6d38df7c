from __future__ import annotations

import json

from benchmarks.compare import last_interrupted, main, markdown, summarize


def _rows(accuracies, seconds_per_round=10.0):
    return [
        {
            "round": float(i),
            "test-accuracy": acc,
            "test-loss": 0.7 - 0.01 * i,
            "majority-rate": 0.578,
            "elapsed-seconds": seconds_per_round * i,
            **({"client-peak-mib": 800.0 + i, "upload-bytes-per-client": 4096.0,
                "forward-passes": 100.0} if i else {}),
        }
        for i, acc in enumerate(accuracies)
    ]  # fmt: skip


def test_summary_finds_the_first_round_at_the_target():
    rows = _rows([0.55, 0.60, 0.66, 0.70, 0.69])

    summary = summarize("spry", rows, target=0.65)

    assert summary["round-to-target"] == 2
    assert summary["seconds-to-target"] == 20.0
    assert summary["final-accuracy"] == 0.69 and summary["best-accuracy"] == 0.70
    assert summary["client-peak-mib"] == 804.0
    assert summary["upload-bytes-per-client"] == 4096.0


def test_a_method_that_never_reaches_the_target_says_so():
    summary = summarize("fedmezo", _rows([0.55, 0.56, 0.57]), target=0.65)
    assert summary["round-to-target"] is None
    table = markdown([summary], rounds=2, reference="fedavg", extra=[])
    assert (
        "| fedmezo | 2 | 57.0% | 57.0% | 0.6800 | +2.0 | - | 57.0% | not reached "
        "| 802 | - "
        "| 4.0 | 100 | 20 |" in table
    )
    assert "majority class 57.8%" in table


def test_the_client_step_peak_is_a_column_of_its_own_with_its_batch_length():
    # Prepare: round 2's step peaks higher, at a longer batch; one run measured
    # under the live allocator, one from before (no allocator column)
    rows = _rows([0.55, 0.56, 0.57])
    for row, extra, tokens in zip(rows[1:], (15.0, 17.25), (44.0, 51.0), strict=True):
        row.update({"client-peak-extra-mib": extra, "client-step-tokens": tokens})
    live = [{**r, "client-live-allocator": 1.0} for r in rows]

    # Execute
    summary = summarize("spry", live, target=0.65)
    before = summarize("spry", rows, target=0.65, label="spry-old")
    table = markdown([summary, before], rounds=2, reference="fedavg", extra=[])

    # Assert: the largest step and its own length; the old run starred
    assert summary["client-peak-extra-mib"] == 17.25
    assert summary["client-step-tokens"] == 51
    assert summary["client-live-allocator"] and not before["client-live-allocator"]
    assert "| worker RSS MiB | client step peak MiB @ tokens |" in table
    assert "| 802 | 17.2 @ 51 |" in table
    assert "| 802 | 17.2* @ 51 |" in table


def test_unknown_method_is_refused_with_the_known_ones(capsys):
    assert main(["--methods", "spry,fedprox"]) == 2
    assert "known: spry" in capsys.readouterr().err


def test_the_untrained_model_meeting_the_target_does_not_count():
    summary = summarize("spry", _rows([0.60, 0.58, 0.61]), target=0.59)
    assert summary["round-to-target"] == 2
    table = markdown([summary], rounds=2, reference="fedavg", extra=[])
    assert "The untrained model already scores 60.0%, above the target" in table


def test_methods_with_more_rounds_are_also_compared_at_the_common_round():
    long = summarize("fwdllm", _rows([0.5, 0.52, 0.55, 0.6, 0.7]), 0.65, 2)
    assert long["rounds"] == 4 and long["accuracy-at-common-round"] == 0.55
    assert long["final-accuracy"] == 0.7


def test_a_row_can_run_a_method_under_its_own_label_and_shows_its_gain():
    rows = _rows([0.80, 0.82, 0.85])
    for row, f1 in zip(rows, (0.79, 0.81, 0.84), strict=True):
        row["test-macro-f1"] = f1

    summary = summarize("spry", rows, target=0.9, label="spry-tuned")

    assert summary["method"] == "spry-tuned" and summary["preset"] == "spry"
    assert abs(summary["gain"] - 0.05) < 1e-12
    assert summary["mean-last-3-accuracy"] == (0.82 + 0.85) / 2
    table = markdown([summary], rounds=2, reference="fedavg", extra=[])
    assert "| untrained (round 0) | 0 | 80.0% | 80.0% | 0.7000 | - | 79.0% |" in table
    assert "| spry-tuned | 2 | 85.0% | 85.0% | 0.6800 | +5.0 | 84.0% |" in table


def test_a_task_without_classes_has_no_majority_line():
    rows = _rows([0.05, 0.30])
    for row in rows:
        del row["majority-rate"]
    summary = summarize("fedavg", rows, target=0.5)
    assert summary["majority-rate"] is None
    table = markdown([summary], rounds=1, reference="fedavg", extra=[])
    assert "majority" not in table.split("\n\n")[1]


def test_the_papers_metric_is_reported_beside_the_central_accuracy():
    rows = _rows([0.70, 0.72, 0.74, 0.76, 0.78])
    for row, fed, tuned in zip(
        rows[2:], (0.71, 0.73, 0.75), (0.80, 0.82, 0.90), strict=True
    ):  # evaluated federatedly from round 2 on
        row["federated-accuracy"], row["federated-finetuned-accuracy"] = fed, tuned

    summary = summarize("spry", rows, target=0.9)

    assert summary["final-federated-finetuned-accuracy"] == 0.90
    assert abs(summary["mean-last-3-federated-finetuned-accuracy"] - 0.84) < 1e-12
    table = markdown([summary], rounds=4, reference="fedavg", extra=[])
    assert "| spry | 78.0% (76.0%) | 75.0% (73.0%) | 90.0% (84.0%) |" in table
    plain = markdown([summarize("spry", _rows([0.7, 0.8]), 0.9)], 1, "fedavg", [])
    assert "fine-tuned" not in plain  # no such column without the metric


def test_an_interrupted_run_is_found_for_resuming_and_a_completed_one_is_not(tmp_path):
    done, cut = tmp_path / "20260101-000000-spry", tmp_path / "20260102-000000-spry"
    for run in (done, cut):
        run.mkdir()
        (run / "checkpoint.npz").write_bytes(b"")
    (done / "summary.json").write_text(json.dumps({"status": "completed"}))
    (tmp_path / "run.log").write_text("")

    assert last_interrupted(tmp_path) == cut
    (cut / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert last_interrupted(tmp_path) is None
    (tmp_path / "20260103-000000-spry").mkdir()  # started, no checkpoint yet
    assert last_interrupted(tmp_path) is None


def test_a_run_folder_is_recognised_after_it_moves(tmp_path):
    from benchmarks.compare import run_key

    def arguments(out):
        return ["--method", "spry", "--results-dir", str(out), "--set", "lr=1"]

    here, there = tmp_path / "a" / "spry", tmp_path / "b" / "spry"
    assert run_key(arguments(here), here, "spry") == run_key(
        arguments(there), there, "spry"
    )
    assert run_key(arguments(here), here, "spry") != run_key(
        arguments(here)[:-1] + ["lr=2"], here, "spry"
    )


def test_a_report_from_run_folders_marks_unfinished_rows_and_meets_at_their_round(
    tmp_path,
):
    """`--report-only`: rows from the folders there are, an interrupted run marked
    in progress, every row compared at the last round all of them reached."""
    import json

    from benchmarks.compare import main

    def write(label, rounds, status):
        run = tmp_path / "runs" / label / "20260101-000000-x"
        run.mkdir(parents=True)
        header = "round,test-accuracy,test-loss,majority-rate,elapsed-seconds"
        lines = [header] + [
            f"{r},{0.5 + 0.01 * r},{1 - 0.01 * r},0.5,{10 * r}" for r in rounds
        ]
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
        if status:
            (run / "summary.json").write_text(json.dumps({"status": status}))

    write("fedavg", [0, 5, 10, 15], "completed")
    write("spry", [0, 5, 10], "")
    status = main([
        "--methods", "fedavg,spry,fedmezo", "--report-only", "--target", "0.55",
        "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path), "--name", "t",
    ])  # fmt: skip
    report = (tmp_path / "compare_t.md").read_text()
    assert status == 0
    assert "10 rounds" in report and "spry (in progress) | 10 | 60.0%" in report
    assert "| fedavg | 15 | 60.0% | 65.0%" in report
    assert "fedmezo" not in report.split("|---|")[1]
    assert "Target: given = 55.0%" in report
