"""A client's step peak inside the simulation against the memory benchmark's figure.

Issue 18: the peak a client reports from inside a run must be the figure the memory
benchmark gives for the same shape. For each method this runs a short default
simulation (`spry run --method M --rounds 3`, its folder under `--runs-dir`), reads
the largest client step peak from the run's results (summary.json's
`client-step-peak`: the largest training step's RSS above the worker's baseline,
and that step's batch length; rounds.json: every client-round's), then measures
the benchmark's point of the same shape, `python -m benchmarks.memory`'s worker
(model, engine, batch `batch-size`, that many tokens, `client-num-cpus` threads,
live allocator) in `--repeats` fresh processes, and compares the two.

Sentences are padded to the longest of their batch, so a client's steps differ in
length; the benchmark point takes the length of the step that peaked.

    python -m benchmarks.sim_memory                    # 4 methods, 3 rounds each
    python -m benchmarks.sim_memory --methods spry --rounds 1 --set num-clients=10
    python -m benchmarks.sim_memory --reuse            # reuse completed runs
    python -m benchmarks.sim_memory --for fedmezo:clients-per-round=4  # one method's

writes benchmarks/results/sim_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from spry.jsonfile import write_json

from .compare import RESULTS, run_method
from .memory.suite import measure
from .memory.worker import Point

MIB = 2**20
METHODS = ("spry", "fedavg", "fedavg-ckpt", "fedmezo")
TOLERANCE = 0.15  # the target: within 15% of the benchmark
OFFLINE_MODELS = {"all-MiniLM-L6-v2": "minilm"}


def bench_engine(config: dict[str, Any]) -> str:
    """The memory benchmark's engine for a run's client (its config.json)."""
    engine = str(config["engine"])
    if engine == "forward":  # split: Spry's slice; unsplit: every tensor (FedFGD)
        return "spry" if config.get("split", True) else "fedfgd"
    return engine  # backprop, backprop-checkpoint, mezo


def bench_model(config: dict[str, Any]) -> str:
    model = str(config["model"])
    return OFFLINE_MODELS.get(model, f"hf:{model}")


def read_run(run_dir: Path) -> dict[str, Any]:
    """What a run's results say about its clients' step peaks."""
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())["config"]
    rounds = json.loads((run_dir / "rounds.json").read_text())
    step = summary.get("client-step-peak")
    if not step:
        raise ValueError(f"{run_dir}: no client-step-peak in summary.json")
    peaks = [  # (round, partition, extra MiB, tokens) per client-round
        (int(r), int(p[0]), p[2] / MIB, int(p[5]) if len(p) > 5 else 0)
        for r, entry in rounds.items()
        for p in entry.get("peaks", [])
    ]
    at_length = [e for _, _, e, t in peaks if t == step["tokens"]]
    return {
        "run": str(run_dir),
        "status": summary.get("status"),
        "method": json.loads((run_dir / "config.json").read_text())["method"],
        "engine": config["engine"],
        "model": config["model"],
        "batch": int(config["batch-size"]),
        "max-length": int(config["max-length"]),
        "threads": int(config["client-num-cpus"]),
        "rounds": len([r for r in rounds if int(r) > 0]),
        "clients-per-round": int(config["clients-per-round"]),
        "step-peak-mib": step["extra-mib"],
        "tokens": step["tokens"],
        "worker-rss-mib": step["worker-rss-mib"],
        "live-allocator": step["live-allocator"],
        "client-rounds": len(peaks),
        "longest-tokens": max((t for *_, t in peaks), default=0),
        # every client-round whose peak step had the same length: the spread
        "at-length-mib": sorted(at_length),
        "bench-engine": bench_engine(config),
        "bench-model": bench_model(config),
        "wall-seconds": summary.get("wall-seconds"),
    }


def bench_point(run: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The benchmark's point of the run's peak shape, in `repeats` fresh processes."""
    point = Point(
        model=run["bench-model"],
        engine=run["bench-engine"],
        batch=run["batch"],
        seq=run["tokens"],
        threads=run["threads"],
    )
    records = [measure(point, timeout=900) for _ in range(repeats)]
    failed = [r["error"] for r in records if "error" in r]
    if failed:
        raise RuntimeError(f"benchmark point {point} failed: {failed[0]}")
    extras = [r["extra_mib"] for r in records]
    return {
        "point": point.__dict__,
        "extra-mib": statistics.median(extras),
        "extra-mib-all": extras,
        "live": all(r["live"] for r in records),
        "baseline-mib": statistics.median(r["baseline_mib"] for r in records),
    }


def compare(run: dict[str, Any], bench: dict[str, Any]) -> dict[str, Any]:
    ratio = run["step-peak-mib"] / bench["extra-mib"]
    return {
        **run,
        "bench": bench,
        "ratio": ratio,
        "within-tolerance": abs(ratio - 1) <= TOLERANCE,
    }


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    first = rows[0]
    lines = [
        "## Client step peak in the simulation vs the memory benchmark",
        "",
        f"Model {first['model']}, client batch {first['batch']}, "
        f"{first['threads']} torch thread(s) per client, sentences padded to the "
        f"longest of their batch (max-length {first['max-length']}). Each method "
        f"ran `{command}`; its step peak is the largest single training step's RSS "
        "above the worker's baseline (weights resident, freed memory returned, "
        "one warm-up estimate per worker process, taken just before local "
        "training), max over every client-round of the run. The benchmark "
        "(`python -m benchmarks.memory` worker, live allocator) measured the "
        "same model, engine and batch at the length of the step that peaked, in "
        "fresh processes (median; all values listed). Target: within "
        f"{100 * TOLERANCE:.0f}%.",
        "",
        "| method | engine (benchmark) | rounds x clients | step peak in run MiB "
        "| at tokens | same-length client-rounds MiB (min-max, n) "
        "| benchmark MiB | run / benchmark | within 15% | live | worker RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        same = r["at-length-mib"]
        spread = f"{same[0]:.1f}-{same[-1]:.1f}, {len(same)}" if same else "-"
        bench = r["bench"]
        lines.append(
            f"| {r['method']} | {r['bench-engine']} | {r['rounds']} x "
            f"{r['clients-per-round']} | {r['step-peak-mib']:.1f} | {r['tokens']} "
            f"| {spread} | {bench['extra-mib']:.1f} "
            f"({', '.join(f'{x:.1f}' for x in bench['extra-mib-all'])}) "
            f"| {r['ratio']:.3f} | {'yes' if r['within-tolerance'] else 'no'} "
            f"| {'yes' if r['live-allocator'] and bench['live'] else 'no'} "
            f"| {r['worker-rss-mib']:.0f} |"
        )
    lines += [
        "",
        "Worker RSS is the client worker's whole resident set at its peak step "
        "(Ray, Python, torch, the model and the data): the number a user saw "
        "before; the step peak is what the step itself needs.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--for",
        dest="per_method",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a setting for one method only (a smaller run of a slow method)",
    )
    p.add_argument("--repeats", type=int, default=3, help="benchmark processes")
    p.add_argument("--reuse", action="store_true", help="reuse completed runs")
    p.add_argument("--runs-dir", type=Path, default=RESULTS / "runs" / "sim_memory")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--stem", default="sim_memory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    started = time.monotonic()
    own: dict[str, list[str]] = {}
    for item in args.per_method:
        method, _, setting = item.partition(":")
        own.setdefault(method, []).append(setting)
    for method in methods:
        extra = [*args.set, *own.get(method, [])]
        run_dir = run_method(
            method, args.rounds, args.seed, extra, args.runs_dir, reuse=args.reuse
        )
        run = {**read_run(run_dir), "settings": extra}
        print(
            f"[sim_memory] {method}: step peak {run['step-peak-mib']:.1f} MiB at "
            f"{run['tokens']} tokens; benchmark point...",
            file=sys.stderr,
            flush=True,
        )
        rows.append(compare(run, bench_point(run, args.repeats)))
        print(
            f"[sim_memory] {method}: benchmark {rows[-1]['bench']['extra-mib']:.1f} "
            f"MiB, ratio {rows[-1]['ratio']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    command = f"spry run --method <method> --rounds {args.rounds} --seed {args.seed}"
    command += "".join(f" --set {s}" for s in args.set)
    command += "".join(f" (--for {s})" for s in args.per_method)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / f"{args.stem}.json",
        {
            "command": command,
            "tolerance": TOLERANCE,
            "seconds": time.monotonic() - started,
            "rows": rows,
        },
        indent=1,
    )
    (args.out / f"{args.stem}.md").write_text(markdown(rows, command))
    print(args.out / f"{args.stem}.md")
    return 0 if all(r["within-tolerance"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
