"""The seed tasks, measured: one fresh `spry run --task NAME` each, its paper's metrics.

- raee: per-layer exits trained with Spry on Rotten Tomatoes (MiniLM frozen), then
  every client's private exit database used on its own held-out sentences: accuracy,
  average exit layer, measured speed-up over the full model, and every fixed-layer
  exit for comparison.
- verix: a ReLU MLP trained with Spry on the offline 8x8 digits, then verified
  explanations of test images: explanation size, seconds per explanation, soundness;
  the masks are copied next to the table.
- xfinder: a SmolLM2 extractor (LoRA) fine-tuned on the task's key-answer-finder
  set by spry, fedavg and fedmezo (one run each, same seed), against OpenCompass's
  RegEx: extraction accuracy by output style on the held-out set. Sized for about
  10 minutes a method on 2 free cores (Spry's K = 8 step is the slowest, about
  20 s, sft_probe.md): 3 rounds, 20 clients holding 800 training rows (about 36
  to train on each: 5 batches of 8, one local epoch), 2 a round; 12 held-out
  questions in every style that fits (105 rows), scored before training and
  after the last round only.

    python -m benchmarks.tasks                    # both, their default settings
    python -m benchmarks.tasks --task raee --rounds 5
    python -m benchmarks.tasks --task xfinder      # three runs: spry, fedavg, fedmezo
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
    "xfinder": [
        "num-clients=10",
        "clients-per-round=2",
        "eval-clients-per-round=0",
        "batch-size=8",
        "eval-every=3",
        "xfinder.test-questions=12",
    ],  # fmt: skip
}
# Rounds when `--rounds` is not given (default 20)
ROUNDS = {"xfinder": 3}
# Tasks compared across methods: one run per method, the same seed; the table
# function gets {method: (summary, rows)}
METHODS = {"xfinder": ["spry", "fedavg", "fedmezo"]}


def run_task(
    task: str,
    rounds: int,
    seed: int,
    extra: list[str],
    out: Path,
    method: str | None = None,
) -> Path:
    """`spry run --task [--method]` in a fresh process; its results folder."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "cli", "run", "--task", task, "--rounds",
        str(rounds), "--seed", str(seed), "--results-dir", str(out),
    ]  # fmt: skip
    if method:
        command += ["--method", method]
    for item in [*SETTINGS[task], *extra]:
        command += ["--set", item]
    start = time.time()
    with open(out / "run.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"{task} {method or ''}: {time.time() - start:.0f} s")
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


def xfinder_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """Extraction accuracy by style: RegEx, the untrained extractor, each method."""
    methods = list(runs)
    first = runs[methods[0]][0]["xfinder"]
    held_out = set(first["held-out-only-styles"])
    # the first evaluation (round 0): the same untrained model in every run
    before = first.get("first", {})

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    head = "| style | rows | RegEx (OpenCompass) | extractor, untrained | "
    lines = [
        head + " | ".join(f"extractor, {m}" for m in methods) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(methods),
    ]
    for style, count in first["rows"].items():
        mark = " (held-out only)" if style in held_out else ""
        cells = [pct(runs[m][0]["xfinder"]["extractor"].get(style)) for m in methods]
        lines.append(
            f"| {style}{mark} | {count:.0f} | {pct(first['regex'][style])} | "
            f"{pct(before.get('extractor', {}).get(style))} | "
            + " | ".join(cells)
            + " |"
        )
    total = [pct(runs[m][0]["xfinder"]["accuracy"]) for m in methods]
    lines.append(
        f"| **all** | {sum(first['rows'].values()):.0f} | "
        f"{pct(first['regex-accuracy'])} | {pct(before.get('accuracy'))} | "
        + " | ".join(total)
        + " |"
    )
    rounds = int(runs[methods[0]][1][-1]["round"])
    lines += [
        "",
        f"Held-out rows: questions never trained on, every style that fits their "
        f"kind; styles marked held-out only never appear in training. Extractor: "
        f"SmolLM2-135M-Instruct + LoRA after {rounds} rounds, greedy, 12 new tokens "
        f"at most, compared with the key answer as its kind asks (numbers as "
        f"numbers). RegEx: OpenCompass's first_option_postprocess (multiple "
        f"choice), gsm8k_postprocess (numbers), general_postprocess (yes/no, text).",
    ]
    return lines


TABLES = {"raee": raee_table, "verix": verix_table, "xfinder": xfinder_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TABLES), action="append")
    parser.add_argument("--rounds", type=int, default=None, help="default: 20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "tasks")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.task or sorted(TABLES):
        rounds = args.rounds or ROUNDS.get(task, 20)
        runs = {}
        for method in METHODS.get(task, [None]):
            out = args.runs_dir / task / (method or "")
            run_dir = run_task(task, rounds, args.seed, args.set, out, method)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs[method] = (summary, read_rows(run_dir))
        if None in runs:
            summary, rows = runs[None]
            table = TABLES[task](summary, rows)
        else:
            table = TABLES[task](runs)
            summary = {m: s for m, (s, _) in runs.items()}  # type: ignore[misc]
            rows = {m: r for m, (_, r) in runs.items()}  # type: ignore[assignment]
        sets = [f"--set {s}" for s in [*SETTINGS[task], *args.set]]
        methods = "/".join(m for m in runs if m)
        command = " ".join(
            [f"--task {task} --rounds {rounds} --seed {args.seed}", *sets]
            + ([f"--method {methods}"] if methods else [])
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
