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
from spry.jsonfile import write_json

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
    # Budgets cut to fit 1, 3 and 6 groups of the measured model (written by
    # `tight_catalog`), to show the dealing where budgets bind
    "tight-devices": [
        "device-profiles=fits-1-group:0.3,fits-3-groups:0.3,fits-6-groups:0.4",
        "device-catalog={runs}/tight-devices.toml",
    ],
}
TIGHT = {"fits-1-group": 1, "fits-3-groups": 3, "fits-6-groups": 6}


def tight_catalog(path: Path, seed: int) -> Path:
    """Profiles whose budgets hold the shared tensors and exactly k groups.

    MiniLM + LoRA r=1 fits every catalogue device with room to spare, so budgets
    never bind on the default; these are cut from the run's own memory model.
    """
    from spry.config import RunConfig, default_values
    from spry.data import load_for
    from spry.devices import plan_fleet
    from spry.models import build_classifier, is_head
    from spry.splitting import group_tensors
    from spry.tasks import load_task

    cfg = RunConfig.from_run_config({**default_values(), "seed": seed})
    data = load_for(cfg.data)
    trainable = build_classifier(cfg.model, num_labels=data.num_labels, seed=seed)
    names = list(trainable.names)
    head = [n for n in names if is_head(n)]
    size = {n: p.numel() for n, p in trainable.parameters().items()}
    probe_cfg = RunConfig.from_run_config(
        {**cfg.to_mapping(), "device-profiles": "phone-4gb"}
    )
    memory = plan_fleet(probe_cfg, names, head, load_task(probe_cfg)).memory
    assert memory is not None
    groups = group_tensors(names, head, cfg.strategy.group_size, cfg.strategy.split)
    shared = sum(size[n] for n in head)
    group = max(sum(size[n] for n in g) for g in groups)
    lines = []
    for name, k in TIGHT.items():
        # halfway between k and k + 1 groups, with the run's margin
        need = memory.peak_bytes(shared + int((k + 0.5) * group))
        budget = need * (1 + cfg.simulation.memory_margin) / 2**20
        lines.append(f"[{name}]\nbudget-mib = {budget:.4f}\nspeed = 0.5\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


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
        settings = [s.format(runs=args.runs_dir) for s in LINES[label]]
        if label == "tight-devices":
            tight_catalog(args.runs_dir / "tight-devices.toml", args.seed)
        run_dir = run_method(
            "spry",
            args.rounds,
            args.seed,
            settings,
            args.runs_dir,
            reuse=args.reuse,
            label=label,
        )
        results.append(summarize(label, run_dir))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out.with_suffix(".json"), results)
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
