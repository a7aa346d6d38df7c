"""Federations at scale, on devices with budgets, with failing clients.

Each line is a fresh `spry run` of the default Spry setting with a few keys changed,
all with the same seed, so the lines differ only in what the line says: 100 vs 1000
clients (wall time, the driver's peak memory), fault-free vs 30% of each round's
clients failing (with the lost groups reassigned, or skipped), and a mixed device
population (per-profile memory, coverage). The table and JSON go to
benchmarks/results/fleet.{md,json}.

    python -m benchmarks.fleet                        # every line, 20 rounds
    python -m benchmarks.fleet --line clients-1000 --rounds 5
    python -m benchmarks.fleet --reuse                # keep completed runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.compare import read_rows, run_method

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FAULTS_30 = ["fault-crash=0.2", "fault-timeout=0.1", "round-deadline=600"]
LINES: dict[str, list[str]] = {
    "clients-100": [],
    "clients-1000": ["num-clients=1000"],
    "faults-30-reassign": FAULTS_30,
    "faults-30-skip": [*FAULTS_30, "orphan-slices=skip"],
    "mixed-devices": [
        "device-profiles=phone-4gb:0.4,phone-8gb:0.3,jetson-8gb:0.2,laptop-16gb:0.1"
    ],
}


def summarize(label: str, run_dir: Path) -> dict[str, Any]:
    rows = read_rows(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    trained = [r for r in rows if r["round"] > 0]
    return {
        "line": label,
        "settings": LINES[label],
        "rounds": int(rows[-1]["round"]),
        "final-accuracy": rows[-1]["test-accuracy"],
        "best-accuracy": max(r["test-accuracy"] for r in rows),
        "wall-seconds": rows[-1]["elapsed-seconds"],
        "train-wall-seconds-mean": sum(r["train-wall-seconds"] for r in trained)
        / len(trained),
        "driver-peak-rss-mib": summary["driver-peak-rss-mib"],
        "coverage-trained-min": min(r["coverage-trained"] for r in trained),
        "dropouts": summary.get("dropouts", {}),
        "device-seconds": summary.get("device-seconds"),
        "profiles": summary.get("profiles", {}),
        "run": str(run_dir),
    }


def markdown(lines: list[dict[str, Any]]) -> str:
    out = [
        "# Fleet: scale, device budgets and faults",
        "",
        "Default Spry run (MiniLM + LoRA r=1, Rotten Tomatoes, Dirichlet 1.0, 10 "
        "clients a round), one fresh `spry run` per line, same seed; "
        "`python -m benchmarks.fleet`.",
        "",
        "| line | rounds | final acc | best acc | wall s | train s/round | "
        "driver peak MiB | min coverage | dropped (crash/timeout) | reassigned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in lines:
        d = r["dropouts"]
        out.append(
            f"| {r['line']} | {r['rounds']} | {100 * r['final-accuracy']:.1f}% | "
            f"{100 * r['best-accuracy']:.1f}% | {r['wall-seconds']:.0f} | "
            f"{r['train-wall-seconds-mean']:.1f} | {r['driver-peak-rss-mib']:.0f} | "
            f"{r['coverage-trained-min']:.2f} | "
            f"{d.get('dropped-crash', 0)}/{d.get('dropped-timeout', 0)} | "
            f"{d.get('reassigned-groups', 0)} of {d.get('orphan-groups', 0)} |"
        )
    for r in lines:
        profiles = {k: v for k, v in r["profiles"].items() if k != "host"}
        if not profiles:
            continue
        out += [
            "",
            f"## {r['line']}: per device profile",
            "",
            "| profile | budget MiB | clients | client-rounds | largest slice | "
            "predicted peak MiB | measured step extra MiB | worker RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, p in profiles.items():
            out.append(
                f"| {name} | {p['budget-mib']:.0f} | {p['clients']} | "
                f"{p['client-rounds-trained']} | {p['slice-tensors-max']} | "
                f"{_num(p['predicted-peak-mib-max'])} | "
                f"{_num(p['measured-extra-mib-max'])} | "
                f"{_num(p['measured-worker-rss-mib-max'])} |"
            )
    return "\n".join(out) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--line", action="append", choices=list(LINES))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "fleet")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet")
    args = parser.parse_args(argv)
    results = []
    for label in args.line or list(LINES):
        run_dir = run_method(
            "spry",
            args.rounds,
            args.seed,
            LINES[label],
            args.runs_dir,
            reuse=args.reuse,
            label=label,
        )
        results.append(summarize(label, run_dir))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
