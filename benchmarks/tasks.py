"""The seed tasks, measured: one fresh `spry run --task NAME` each, its paper's metrics.

- raee: per-layer exits trained with Spry on Rotten Tomatoes (MiniLM frozen), then
  every client's private exit database used on its own held-out sentences: accuracy,
  average exit layer, measured speed-up over the full model, and every fixed-layer
  exit for comparison.
- verix: a ReLU MLP trained with Spry on the offline 8x8 digits, then verified
  explanations of test images: explanation size, seconds per explanation, soundness;
  the masks are copied next to the table.

    python -m benchmarks.tasks                    # both, their default settings
    python -m benchmarks.tasks --task raee --rounds 5
Writes benchmarks/results/task_<name>.{md,json} (and the VeriX mask grid).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.compare import read_rows
from spry.jsonfile import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS: dict[str, list[str]] = {  # on top of the task's own `run_defaults`
    "raee": [],
    "verix": ["verix.checker=marabou"],  # re-checked by a fresh solver instance
}


def run_task(task: str, rounds: int, seed: int, extra: list[str], out: Path) -> Path:
    """`spry run --task` in a fresh process; its results folder."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "cli", "run", "--task", task, "--rounds",
        str(rounds), "--seed", str(seed), "--results-dir", str(out),
    ]  # fmt: skip
    for item in [*SETTINGS[task], *extra]:
        command += ["--set", item]
    start = time.time()
    with open(out / "run.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"{task}: {time.time() - start:.0f} s")
    return max(
        (p for p in out.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
    )


def raee_table(summary: dict[str, Any], rows: list[dict[str, float]]) -> list[str]:
    report = summary["task-report"]
    layers = sorted(int(k.split("-")[2]) for k in report if k.startswith("fixed-exit-"))
    raee, full = 100 * report["accuracy"], 100 * report["full-model-accuracy"]
    lines = [
        "| exit rule | accuracy | average exit layer | measured speed-up |",
        "|---|---:|---:|---:|",
        f"| RAEE (k = 12, private database per client) | {raee:.1f}% "
        f"| {report['average-exit-layer']:.2f} | {report['speed-up']:.2f}x |",
        f"| full model (layer {layers[-1]}) | {full:.1f}% | {layers[-1]} | 1.00x |",
    ]
    lines += [
        f"| fixed exit at layer {layer} | "
        f"{100 * report[f'fixed-exit-{layer}-accuracy']:.1f}% | {layer} | - |"
        for layer in layers[:-1]
    ]
    lines += [
        "",
        f"Held-out sentences: {report['examples']:.0f} over {report['clients']} "
        f"clients (mean database {report['database-size-mean']:.0f} sentences). "
        f"Inference wall time on them: RAEE {report['raee-seconds']:.2f} s, full "
        f"model {report['full-seconds']:.2f} s (layer count alone predicts "
        f"{report['layer-speed-up']:.2f}x). Exits' central test accuracy (last "
        f"exit) after {int(rows[-1]['round'])} rounds: "
        f"{100 * rows[-1]['test-accuracy']:.1f}%.",
    ]
    return lines


def verix_table(summary: dict[str, Any], rows: list[dict[str, float]]) -> list[str]:
    verix = summary["verix"]
    return [
        "| images explained | verified sound | locally minimal | mean explanation "
        "size | share of pixels | seconds per explanation | solver | re-checked by "
        "| epsilon |",
        "|---:|---:|---:|---:|---:|---:|---|---|---:|",
        f"| {verix['explained']} | {verix['sound']} | {verix['minimal']} | "
        f"{verix['mean-explanation-size']:.1f} | "
        f"{100 * verix['explanation-size-fraction']:.1f}% | "
        f"{verix['mean-seconds-per-explanation']:.2f} | {verix['solver']} | "
        f"{verix['checker']} | {verix['epsilon']} |",
        "",
        f"The explained model: {100 * rows[-1]['test-accuracy']:.1f}% test accuracy "
        f"after {int(rows[-1]['round'])} rounds (initial "
        f"{100 * rows[0]['test-accuracy']:.1f}%); "
        f"{verix['prediction-correct']} of the {verix['explained']} explained "
        "predictions are correct. Masks: task_verix_explanations.png.",
    ]


TABLES = {"raee": raee_table, "verix": verix_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TABLES), action="append")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "tasks")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.task or sorted(TABLES):
        run_dir = run_task(task, args.rounds, args.seed, args.set, args.runs_dir / task)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = read_rows(run_dir)
        table = TABLES[task](summary, rows)
        sets = [f"--set {s}" for s in [*SETTINGS[task], *args.set]]
        command = " ".join(
            [f"--task {task} --rounds {args.rounds} --seed {args.seed}", *sets]
        )
        text = "\n".join(
            [f"# Task {task}", "", f"`spry run {command}` (2-core CPU)", "", *table, ""]
        )
        (RESULTS / f"task_{task}.md").write_text(text)
        write_json(
            RESULTS / f"task_{task}.json",
            {"command": command, "summary": summary, "rounds": rows},
            indent=1,
        )
        if (run_dir / "explanations.png").exists():
            shutil.copy(
                run_dir / "explanations.png", RESULTS / "task_verix_explanations.png"
            )
        print(text)


if __name__ == "__main__":
    main()
