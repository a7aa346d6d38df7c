"""Time to accuracy: how fast each method learns the default task, in wall seconds.

A method that is cheap per round but needs many rounds is not fast, and reaching the
majority-class rate (57.8% here) is learning the label prior, not the task. So this
benchmark runs each method on the same federation (same model, data, partitions,
client sampling and seed; each run in a fresh `spry run` process) and reports the
round and the wall time at which the central test accuracy first reaches each target
(65% and 70% by default), beside the majority rate, the time ratio to the reference
(backprop FedAvg) and the client peak memory, with accuracy-vs-time curves.

A run is `METHOD`, `METHOD:KEY=VALUE,...` or `LABEL=METHOD:KEY=VALUE,...`, so one
method can run twice with different settings:

    python -m benchmarks.convergence                      # the default line-up
    python -m benchmarks.convergence --run spry --run fedavg --rounds 10
    python -m benchmarks.convergence --run "fedavg-cls=fedavg:pooling=cls"
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.compare import plot, read_rows, run_method
from spry.jsonfile import write_json
from spry.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = "fedavg"
DEFAULT_RUNS = (
    "spry-paper",
    "spry",
    "fedavg",
    "fedavg-pooler=fedavg:pooling=model,center-features=false",
    "fedmezo",
    "fedyogi",
)


@dataclass(frozen=True)
class RunSpec:
    """One line of the benchmark: a label, a named method and its own settings."""

    label: str
    method: str
    settings: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """`[LABEL=]METHOD[:KEY=VALUE,...]`; the label defaults to the method."""
        head, _, tail = text.partition(":")
        label, sep, method = head.partition("=")
        if not sep:
            label, method = head, head
        label, method = label.strip(), method.strip().lower()
        if method not in METHODS:
            raise ValueError(
                f"unknown method {method!r} in {text!r}; known: {', '.join(METHODS)}"
            )
        settings = tuple(s.strip() for s in tail.split(",") if s.strip())
        bad = [s for s in settings if "=" not in s]
        if bad or not label:
            raise ValueError(f"a run is [LABEL=]METHOD[:KEY=VALUE,...], got {text!r}")
        return cls(label=label, method=method, settings=settings)


def time_to(rows: list[dict[str, float]], target: float) -> tuple[int, float] | None:
    """(round, elapsed seconds) of the first trained round at `target` or above."""
    for row in rows:
        if row["round"] > 0 and row["test-accuracy"] >= target:
            return int(row["round"]), row["elapsed-seconds"]
    return None


def summarize(
    spec: RunSpec, rows: list[dict[str, float]], targets: list[float]
) -> dict:
    """One table row: accuracy, time to each target, memory and time per round."""
    trained = [r for r in rows if r["round"] > 0]
    peaks = [r["client-peak-mib"] for r in trained if "client-peak-mib" in r]
    extra = [
        r["client-peak-extra-mib"] for r in trained if "client-peak-extra-mib" in r
    ]
    reached = {f"{t:.2f}": time_to(rows, t) for t in targets}
    return {
        "label": spec.label,
        "method": spec.method,
        "settings": list(spec.settings),
        "rounds": int(rows[-1]["round"]),
        "majority-rate": rows[0]["majority-rate"],
        "final-accuracy": rows[-1]["test-accuracy"],
        "best-accuracy": max(r["test-accuracy"] for r in trained),
        "time-to": {t: (None if v is None else list(v)) for t, v in reached.items()},
        "client-peak-mib": max(peaks) if peaks else None,
        "client-peak-extra-mib": max(extra) if extra else None,
        "seconds-per-round": (
            (rows[-1]["elapsed-seconds"] - rows[0]["elapsed-seconds"]) / len(trained)
            if trained
            else None
        ),
    }


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}"


def markdown(summaries: list[dict], targets: list[float], reference: str) -> str:
    ref = next((s for s in summaries if s["label"] == reference), None)
    last = f"{targets[-1]:.2f}"
    ref_time = ref and ref["time-to"][last] and ref["time-to"][last][1]
    target_cols = " | ".join(f"round / s to {100 * t:.0f}%" for t in targets)
    lines = [
        "## Time to accuracy on the default task",
        "",
        f"Central test accuracy; the majority class is "
        f"{100 * summaries[0]['majority-rate']:.1f}% of the test set (reaching it is "
        f"learning the label prior). Reference for the ratios: {reference}.",
        "",
        f"| run | method | settings | final acc | best acc | {target_cols} "
        f"| time to {100 * targets[-1]:.0f}% / {reference}'s "
        f"| client peak MiB (extra) | extra / {reference}'s | s / round |",
        "|---|---|---|---:|---:|" + "---:|" * len(targets) + "---:|---:|---:|---:|",
    ]
    for s in summaries:
        cells = []
        for t in targets:
            hit = s["time-to"][f"{t:.2f}"]
            cells.append("not reached" if hit is None else f"{hit[0]} / {hit[1]:.0f}")
        hit = s["time-to"][last]
        peak, extra = s["client-peak-mib"], s["client-peak-extra-mib"]
        per_round = s["seconds-per-round"]
        lines.append(
            f"| {s['label']} | {s['method']} | {' '.join(s['settings']) or '-'} "
            f"| {100 * s['final-accuracy']:.1f}% | {100 * s['best-accuracy']:.1f}% "
            f"| {' | '.join(cells)} | {_ratio(hit and hit[1], ref_time)} "
            f"| {'-' if peak is None else f'{peak:.0f}'} "
            f"({'-' if extra is None else f'{extra:.0f}'}) "
            f"| {_ratio(extra, ref and ref['client-peak-extra-mib'])} "
            f"| {'-' if per_round is None else f'{per_round:.1f}'} |"
        )
    lines += [
        "",
        "Wall time counts from the start of the run (model and data loading, Ray "
        "start-up) and includes the central and federated evaluation of every round, "
        "for every method alike. Client peak is the largest resident set of a client "
        "worker during training (model, torch and Ray included); in brackets its "
        "largest rise above the level before training, the training step's own "
        "memory.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", action="append", default=[], metavar="[LABEL=]METHOD[:K=V,...]"
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="0.65,0.70")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--reuse", action="store_true", help="reuse completed runs")
    parser.add_argument("--reference", default=REFERENCE, help="label for ratios")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        specs = [RunSpec.parse(text) for text in (args.run or DEFAULT_RUNS)]
        targets = sorted(float(t) for t in args.targets.split(","))
    except ValueError as error:
        print(f"convergence: {error}", file=sys.stderr)
        return 2
    if len({s.label for s in specs}) != len(specs):
        print("convergence: run labels must be distinct", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs_dir = ROOT / "results" / "convergence"  # raw runs stay out of git
    curves = {}
    for spec in specs:
        run_dir = run_method(
            spec.method, args.rounds, args.seed, [*args.set, *spec.settings],
            runs_dir, reuse=args.reuse, label=spec.label,
        )  # fmt: skip
        curves[spec.label] = read_rows(run_dir)
    print(write_report(specs, curves, targets, args.out, args.set, args.reference))
    return 0


def write_report(
    specs: list[RunSpec],
    curves: dict[str, list[dict[str, float]]],
    targets: list[float],
    out: Path,
    common: list[str],
    reference: str = REFERENCE,
) -> str:
    """Write convergence.{json,md,png} under `out`."""
    summaries = [summarize(s, curves[s.label], targets) for s in specs]
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "convergence.json",
        {"targets": targets, "common-settings": common, "reference": reference,
         "runs": summaries, "curves": curves},
    )  # fmt: skip
    report = markdown(summaries, targets, reference)
    (out / "convergence.md").write_text(report)
    plot(curves, out / "convergence.png")
    return report


if __name__ == "__main__":
    sys.exit(main())
