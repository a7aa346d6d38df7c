"""Run several methods on the same federation and compare them in one table and plot.

Spry's claims are relative (memory near inference, accuracy near backprop, faster
than zero-order methods), so they are only meaningful side by side: every method
here runs with the same model, data, partitions, client sampling and seed, through
the same `spry run` (each in its own process, so no method inherits another's Ray
workers or memory), and differs only in the settings of `spry.methods.METHODS`.

For each method the table gives the final and best central test accuracy, the
round and wall time at which it first reached 90% of the reference's final accuracy
(the reference is FedAvg with backprop when it is in the list, else the best final
accuracy), the largest client peak memory (the worker's whole resident set) and
the client step peak (the largest training step's own memory above the worker's
baseline, with its batch length: what `python -m benchmarks.memory` measures for a
shape), the mean upload per client per round and the forward passes per round.
The majority-class rate is printed beside accuracy: reaching it only means the
label prior was learned.

    python -m benchmarks.compare --methods spry,fedfgd,fedavg,fedmezo --rounds 20
    python -m benchmarks.compare --methods spry,fedavg --rounds 3 --set num-clients=20

A row may be a method under a label of its own, with settings for it alone, so one
method can appear tuned and as published (`--methods spry-tuned=spry,spry-paper
--for spry-tuned:lr=3e-3`); `--name lm` writes compare_lm.{json,md,png}. The table
starts with the untrained model (round 0 of the first run: zero-shot for a prompted
LM) and gives each row's gain over it, and macro-F1 where the task reports it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spry.jsonfile import write_json
from spry.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = "fedavg"
TARGET_SHARE = 0.9


def run_method(
    method: str,
    rounds: int,
    seed: int,
    extra: list[str],
    runs_dir: Path,
    *,
    reuse: bool = False,
    label: str = "",
) -> Path:
    """Run one method with `spry run` in a fresh process; return its results folder.

    The run goes under `runs_dir / (label or method)`. With `reuse`, a completed
    earlier run of the same command there is used instead, and an interrupted one
    is resumed from its checkpoint.
    """
    label = label or method
    out = runs_dir / label
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    command = [
        sys.executable, "-m", "cli", "run", "--method", method,
        "--rounds", str(rounds), "--seed", str(seed), "--results-dir", str(out),
    ]  # fmt: skip
    for item in extra:
        command += ["--set", item]
    key = run_key(command[3:], out, label)
    stamp, resumed = out / "command.json", []
    earlier = json.loads(stamp.read_text()) if stamp.exists() else None
    if reuse and earlier in (key, command[3:]):
        done = [
            p
            for p in sorted(out.iterdir())
            if (p / "summary.json").exists()
            and json.loads((p / "summary.json").read_text()).get("status")
            == "completed"
        ]
        if done:
            print(f"[compare] {label}: reusing {done[-1]}")
            return done[-1]
        interrupted = last_interrupted(out)
        if interrupted is not None:
            print(f"[compare] {label}: resuming {interrupted}")
            resumed = ["--set", f"resume={interrupted}"]
    stamp.write_text(json.dumps(key))
    command += resumed
    started = time.monotonic()
    print(f"[compare] {label}: running ({' '.join(command[3:])}); log: {log}")
    with open(log, "a" if resumed else "w") as fh:
        status = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT).returncode
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    if status != 0 or not runs:
        raise RuntimeError(f"{label} failed (exit {status}); see {log}")
    print(f"[compare] {label}: done in {time.monotonic() - started:.0f} s")
    return runs[-1]


def run_key(arguments: list[str], out: Path, label: str) -> list[str]:
    """The stamp that says which command made a run folder.

    It names the folder by its label, not its path, so runs that moved with the
    repository (partial runs committed at a session's end, another worktree) are
    still recognised and resumed.
    """
    return [label if arg == str(out) else arg for arg in arguments]


def _status(run: Path) -> str:
    summary = run / "summary.json"
    return json.loads(summary.read_text()).get("status", "") if summary.exists() else ""


def latest_run(out: Path) -> Path | None:
    """The newest run folder under `out` with at least one evaluation, or None."""
    if not out.is_dir():
        return None
    runs = [p for p in sorted(out.iterdir()) if (p / "metrics.csv").exists()]
    return runs[-1] if runs else None


def last_interrupted(out: Path) -> Path | None:
    """The newest run folder under `out` with a checkpoint but no completed summary.

    An interrupted run (a session ended, a machine went away) goes on from its last
    checkpoint instead of starting over.
    """
    for run in sorted((p for p in out.iterdir() if p.is_dir()), reverse=True):
        summary = run / "summary.json"
        completed = (
            summary.exists()
            and json.loads(summary.read_text()).get("status") == "completed"
        )
        if (run / "checkpoint.npz").exists() and not completed:
            return run
    return None


def read_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as fh:
        return [
            {k: float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(fh)
        ]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    method: str,
    rows: list[dict[str, float]],
    target: float,
    common_round: int = 0,
    *,
    label: str = "",
) -> dict:
    """One table row: accuracy, time to the target, memory, upload, passes.

    `label` names the row when it is not the method's own name.
    """
    trained = [r for r in rows if r["round"] > 0]
    at_common = [r for r in rows if r["round"] <= (common_round or rows[-1]["round"])]
    # Round 0 is the untrained model: meeting the target there is not training.
    reached = next((r for r in trained if r["test-accuracy"] >= target), None)
    peaks = [r["client-peak-mib"] for r in trained if "client-peak-mib" in r]
    extra = [r for r in trained if "client-peak-extra-mib" in r]
    step = max(extra, key=lambda r: r["client-peak-extra-mib"]) if extra else {}
    # Runs from before the step peak was measured under the live allocator have no
    # such column: their extra holds allocator history too
    live = [r.get("client-live-allocator", 0.0) for r in extra]
    last3 = [r["test-accuracy"] for r in rows if r["round"] > 0][-3:]
    return {
        "method": label or method,
        "preset": method,
        "settings": METHODS[method],
        "initial-accuracy": rows[0]["test-accuracy"],
        "final-accuracy": rows[-1]["test-accuracy"],
        "rounds": int(rows[-1]["round"]),
        "accuracy-at-common-round": at_common[-1]["test-accuracy"],
        "best-accuracy": max(r["test-accuracy"] for r in rows),
        "gain": rows[-1]["test-accuracy"] - rows[0]["test-accuracy"],
        "mean-last-3-accuracy": _mean(last3),
        "initial-macro-f1": rows[0].get("test-macro-f1"),
        "final-macro-f1": rows[-1].get("test-macro-f1"),
        "majority-rate": rows[0].get("majority-rate"),
        "initial-test-loss": rows[0]["test-loss"],
        "final-test-loss": rows[-1]["test-loss"],
        "target-accuracy": target,
        "round-to-target": None if reached is None else int(reached["round"]),
        "seconds-to-target": None if reached is None else reached["elapsed-seconds"],
        "client-peak-mib": max(peaks) if peaks else None,
        "client-peak-extra-mib": step.get("client-peak-extra-mib"),
        "client-step-tokens": (
            int(step["client-step-tokens"]) if "client-step-tokens" in step else None
        ),
        "client-live-allocator": bool(live) and min(live) == 1.0,
        "upload-bytes-per-client": _mean(
            [
                r["upload-bytes-per-client"]
                for r in trained
                if "upload-bytes-per-client" in r
            ]
        ),
        "forward-passes-per-round": _mean(
            [r["forward-passes"] for r in trained if "forward-passes" in r]
        ),
        "wall-seconds": rows[-1]["elapsed-seconds"],
        **_federated(rows),
    }


def _federated(rows: list[dict[str, float]]) -> dict[str, float | None]:
    """The federated evaluation's last and mean-of-last-3 accuracy, where a run has it.

    Plain and after the paper's local fine-tuning (`eval-finetune-epochs`).
    """
    out: dict[str, float | None] = {}
    for key in ("federated-accuracy", "federated-finetuned-accuracy"):
        values = [r[key] for r in rows if r["round"] > 0 and key in r]
        out[f"final-{key}"] = values[-1] if values else None
        out[f"mean-last-3-{key}"] = _mean(values[-3:])
    return out


def _fmt(value: Any, spec: str, missing: str = "not reached") -> str:
    return missing if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _majority(rate: float | None) -> str:
    """The majority-class line of a classification task; generation tasks have none."""
    return "" if rate is None else f"majority class {100 * rate:.1f}%. "


def markdown(
    summaries: list[dict],
    rounds: int,
    reference: str,
    extra: list[str],
    per_method: dict[str, list[str]] | None = None,
    target_given: bool = False,
) -> str:
    goal = (
        "given"
        if target_given
        else f"{100 * TARGET_SHARE:.0f}% of {reference}'s final test accuracy"
    )
    lines = [
        f"## Methods compared: {rounds} rounds, same model, data, partitions and seed",
        "",
        f"Target: {goal} = {100 * summaries[0]['target-accuracy']:.1f}%; "
        + _majority(summaries[0]["majority-rate"])
        + "Extra settings: "
        f"{' '.join(extra) or 'none'}"
        + "".join(f"; {m}: {' '.join(v)}" for m, v in (per_method or {}).items())
        + ".",
        "",
        f"| method | rounds | acc @ round {rounds} | final acc | test loss | gain "
        "| macro-F1 "
        "| best acc | round / s to target | worker RSS MiB "
        "| client step peak MiB @ tokens "
        "| upload KiB/client/round | forward passes/round | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| untrained (round 0) | 0 | {100 * summaries[0]['initial-accuracy']:.1f}% "
        f"| {100 * summaries[0]['initial-accuracy']:.1f}% "
        f"| {summaries[0]['initial-test-loss']:.4f} | - "
        f"| {_pct(summaries[0].get('initial-macro-f1'))} | - | - | - | - | - | - "
        "| - |",
    ]
    initial, target = summaries[0]["initial-accuracy"], summaries[0]["target-accuracy"]
    if initial >= target:
        lines[4:4] = [
            f"The untrained model already scores {100 * initial:.1f}%, above the "
            "target: too few rounds (or too weak a reference) for it to mean much.",
            "",
        ]
    for s in summaries:
        to_target = (
            "not reached"
            if s["round-to-target"] is None
            else f"{s['round-to-target']} / {s['seconds-to-target']:.0f}"
        )
        upload = s["upload-bytes-per-client"]
        lines.append(
            f"| {s['method']} | {s['rounds']} "
            f"| {100 * s['accuracy-at-common-round']:.1f}% "
            f"| {100 * s['final-accuracy']:.1f}% "
            f"| {s['final-test-loss']:.4f} "
            f"| {100 * s.get('gain', 0.0):+.1f} "
            f"| {_pct(s.get('final-macro-f1'))} "
            f"| {100 * s['best-accuracy']:.1f}% | {to_target} "
            f"| {_fmt(s['client-peak-mib'], '.0f', '-')} "
            f"| {_step_peak(s)} "
            f"| {_fmt(None if upload is None else upload / 1024, '.1f', '-')} "
            f"| {_fmt(s['forward-passes-per-round'], '.0f', '-')} "
            f"| {s['wall-seconds']:.0f} |"
        )
    lines += _federated_table(summaries)
    lines += [
        "",
        "Each method ran as its own `spry run --method <name>` process here; "
        "worker RSS is the largest resident set of a client worker process at its "
        "peak step (model, torch and Ray included); client step peak is the largest "
        "training step's own memory: its peak above the worker's baseline (weights "
        "resident, freed memory returned, taken just before local training), at "
        "that step's batch length, as `python -m benchmarks.memory` measures a "
        "shape (`benchmarks/sim_memory.py` compares the two); * marks a run whose "
        "workers did not run the live allocator (the rise then holds allocator "
        "history, not comparable); upload "
        "counts the tensors (or scalars) a client returned; forward passes are "
        "summed over a round's clients (a jvp pass counts once). FedSGD-style "
        "methods (fedsgd, spry-iter, baffle, fwdllm) take one server step per "
        "round on one batch per client; "
        f"`acc @ round {rounds}` compares every method after the same number of "
        "rounds; `gain` is the final accuracy less the untrained model's (round 0).",
    ]
    return "\n".join(lines) + "\n"


def _step_peak(summary: dict) -> str:
    """'17.1 @ 51', or '-'; starred when not measured under the live allocator."""
    extra = summary.get("client-peak-extra-mib")
    if extra is None:
        return "-"
    tokens = summary.get("client-step-tokens")
    star = "" if summary.get("client-live-allocator") else "*"
    return f"{extra:.1f}{star}" + (f" @ {tokens}" if tokens else "")


def _federated_table(summaries: list[dict]) -> list[str]:
    """Central beside federated accuracy, when any run fine-tuned at evaluation.

    The paper's "Test Generalized Accuracy" is the federated evaluation after each
    evaluation client fine-tunes its copy locally; the central test accuracy of the
    global model is the plain reference it must be read beside.
    """
    if not any(s.get("final-federated-finetuned-accuracy") for s in summaries):
        return []
    lines = [
        "",
        "Central and federated accuracy (the paper's metric: each evaluation client "
        "scores its held-out part, fine-tunes its copy for `eval-finetune-epochs` "
        "local epochs, and scores again); final and, in brackets, the mean of the "
        "last 3 evaluations:",
        "",
        "| method | central | federated | federated, fine-tuned |",
        "|---|---:|---:|---:|",
    ]
    for s in summaries:
        cells = [
            f"{_pct(s.get(f'final-{key}'))} ({_pct(s.get(f'mean-last-3-{key}'))})"
            for key in (
                "accuracy",
                "federated-accuracy",
                "federated-finetuned-accuracy",
            )
        ]
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return lines


def plot(
    curves: dict[str, list[dict[str, float]]], path: Path, common_round: int = 0
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (acc, clock, loss) = plt.subplots(1, 3, figsize=(16, 4.5))
    majority = None
    for method, rows in curves.items():
        rounds = [r["round"] for r in rows]
        accuracy = [100 * r["test-accuracy"] for r in rows]
        acc.plot(rounds, accuracy, ".-", label=method)
        clock.plot([r["elapsed-seconds"] for r in rows], accuracy, ".-", label=method)
        loss.plot(rounds, [r["test-loss"] for r in rows], ".-", label=method)
        majority = rows[0].get("majority-rate")
    if majority is not None:
        for axis in (acc, clock):
            axis.axhline(100 * majority, color="grey", ls=":", label="majority class")
    last = max(rows[-1]["round"] for rows in curves.values())
    if common_round and last > 4 * common_round:
        # Long one-batch runs beside short ones: linear up to the common round,
        # logarithmic beyond, with plain round numbers as ticks.
        ticks = [t for t in (0, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= last]
        for axis in (acc, loss):
            axis.set_xscale("symlog", linthresh=common_round)
            axis.set_xticks(ticks, [str(t) for t in ticks])
            axis.axvline(common_round, color="grey", lw=0.5)
    acc.set(xlabel="round", ylabel="test accuracy (%)", title="Accuracy per round")
    clock.set(
        xlabel="wall seconds", ylabel="test accuracy (%)", title="Accuracy in time"
    )
    loss.set(xlabel="round", ylabel="test cross-entropy", title="Loss per round")
    for axis in (acc, clock, loss):
        axis.legend(fontsize=7)
    if not (common_round and last > 4 * common_round):
        acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="spry,fedfgd,fedavg,fedmezo")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--for",
        dest="per_method",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a setting for one method only (e.g. fwdllm:num-server-rounds=200)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse completed runs of the same command"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where each row's run folder goes (default: results/compare_<name>, "
        "out of git); a folder inside the repository keeps long runs and their "
        "checkpoints across sessions",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="test accuracy to reach, a fraction (default: 90%% of the reference's "
        "final; a prompted LM's zero-shot may already be above that)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the report from the run folders there are, an "
        "interrupted run up to its last evaluation (marked in progress), every row "
        "compared at the last round all of them reached",
    )
    parser.add_argument(
        "--name", default="", help="results stem suffix: compare_<name>.{json,md,png}"
    )
    args = parser.parse_args(argv)
    per_method: dict[str, list[str]] = {}
    for item in args.per_method:
        method, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            print(
                f"compare: --for wants METHOD:KEY=VALUE, got {item!r}", file=sys.stderr
            )
            return 2
        per_method.setdefault(method.strip().lower(), []).append(setting)
    rows = [_row(item) for item in args.methods.split(",") if item.strip()]
    methods = [method for _, method in rows]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        print(
            f"compare: unknown method(s) {unknown}; known: {', '.join(METHODS)}",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stem = f"compare_{args.name}" if args.name else "compare"
    runs_dir = args.runs_dir or ROOT / "results" / stem
    curves, presets = {}, {}
    if args.report_only:
        for label, m in rows:
            run_dir = latest_run(runs_dir / label)
            if run_dir is None:
                print(f"[compare] {label}: no run folder yet, left out")
                continue
            done = _status(run_dir) == "completed"
            name = label if done else f"{label} (in progress)"
            curves[name], presets[name] = read_rows(run_dir), m
        if not curves:
            print(f"compare: no run folders under {runs_dir}", file=sys.stderr)
            return 1
        common = min(int(c[-1]["round"]) for c in curves.values())
        print(write_report(
            curves, common, args.seed, args.set, args.out, per_method,
            stem=stem, presets=presets, target=args.target,
        ))  # fmt: skip
        return 0
    for label, m in rows:
        extra = args.set + per_method.get(label, [])
        run_dir = run_method(
            m, args.rounds, args.seed, extra, runs_dir, reuse=args.reuse, label=label
        )
        curves[label], presets[label] = read_rows(run_dir), m
    report = write_report(
        curves, args.rounds, args.seed, args.set, args.out, per_method,
        stem=stem, presets=presets, target=args.target,
    )  # fmt: skip
    print(report)
    return 0


def _row(item: str) -> tuple[str, str]:
    """A `--methods` entry: `label=method` or a method named by itself."""
    label, sep, method = item.strip().partition("=")
    label, method = label.strip().lower(), method.strip().lower()
    return (label, method) if sep else (label, label)


def write_report(
    curves: dict[str, list[dict[str, float]]],
    rounds: int,
    seed: int,
    extra: list[str],
    out: Path,
    per_method: dict[str, list[str]] | None = None,
    *,
    stem: str = "compare",
    presets: dict[str, str] | None = None,
    target: float | None = None,
) -> str:
    """Write <stem>.{json,md,png} under `out` from the per-row curves.

    `presets` maps a row's label to its method (default: the label is the method);
    `target` is the accuracy to reach (default: 90% of the reference's final).
    """
    presets = presets or {}
    reference = (
        REFERENCE
        if REFERENCE in curves
        else max(curves, key=lambda m: curves[m][-1]["test-accuracy"])
    )
    target_given = target is not None
    target = target or TARGET_SHARE * curves[reference][-1]["test-accuracy"]
    per_method = per_method or {}
    summaries = [
        summarize(presets.get(m, m), rows, target, rounds, label=m)
        for m, rows in curves.items()
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / f"{stem}.json",
        {"rounds": rounds, "seed": seed, "extra": extra,
         "per-method": per_method, "reference": reference,
         "methods": summaries, "curves": curves},
    )  # fmt: skip
    report = markdown(summaries, rounds, reference, extra, per_method, target_given)
    (out / f"{stem}.md").write_text(report)
    plot(curves, out / f"{stem}.png", rounds)
    return report


if __name__ == "__main__":
    sys.exit(main())
