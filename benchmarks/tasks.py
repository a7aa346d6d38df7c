"""The seed tasks, measured: one fresh `spry run --task NAME` each, its paper's metrics.

- raee: per-layer exits trained with Spry on Rotten Tomatoes (MiniLM frozen), then
  every client's private exit database used on its own held-out sentences: accuracy,
  average exit layer, measured speed-up over the full model, and every fixed-layer
  exit for comparison.
- verix: a ReLU MLP trained with Spry on the offline 8x8 digits, then verified
  explanations of test images: explanation size, seconds per explanation, soundness;
  the masks are copied next to the table.
- mustard: items from the template writer (a quarter planted false), kept by the
  checker, fine-tuned on with spry, fedavg and fedmezo (a run each, same seed):
  accept/reject shares by reason, diversity, word-problem accuracy before and
  after; plus the valid rate of items the offline SmolLM2-135M writes itself.

    python -m benchmarks.tasks                    # both, their default settings
    python -m benchmarks.tasks --task raee --rounds 5
    python -m benchmarks.tasks --task mustard          # 5 rounds, 3 methods
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
    # 64 template items (about 45 kept) over 8 clients, 2 a round (one batch of
    # about 6 items each), 5 rounds; 45 word problems scored at round 0 and after
    # the last round (40 new tokens each: about 110 s an evaluation on a busy
    # 2-core CPU; a Spry step of K = 8 tangents took 16-25 s there)
    "mustard": [
        "mustard.generator=templates",
        "mustard.items=64",
        "clients-per-round=2",
        "eval-every=1000",
    ],  # fmt: skip
}
# Tasks compared across methods on the same seed: a run per method, each with its
# own settings on top of SETTINGS (the LM rates of benchmarks/results/sft_probe.md:
# Spry takes the task's tuned `method_defaults`; backprop FedAvg at 1e-2; FedMeZO
# plain SGD at 5e-3, the rate that did not diverge on sft)
ROUNDS = {"mustard": 5}  # a task's default rounds here, where 20 is too many
COMPARED: dict[str, dict[str, list[str]]] = {
    "mustard": {
        "spry": [],
        "fedavg": ["lr=0.01"],
        "fedmezo": ["client-optimizer=sgd", "lr=0.005"],
    },
}


def run_task(
    task: str, rounds: int, seed: int, extra: list[str], out: Path, method: str = ""
) -> Path:
    """`spry run --task` (under `--method`, if given) in a fresh process; its folder."""
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


def mustard_local_rate(items: int, seed: int) -> dict[str, Any]:
    """The kept-set summary of `items` items written by the offline SmolLM2 itself."""
    from spry.config import RunConfig, default_values
    from spry.tasks.base import build_options
    from spry.tasks.mustard import MustardTask
    from spry.tasks.mustard.pipeline import summarize

    values = {**default_values(), **MustardTask.run_defaults, "seed": seed}
    run = RunConfig.from_run_config({**values, "task": "mustard"})
    options = build_options(MustardTask, {"generator": "local", "items": items})
    start = time.time()
    records = MustardTask(run, options).records  # cached under $SPRY_CACHE/mustard
    summary = summarize(records)
    summary["seconds"] = time.time() - start
    summary["examples"] = [r["text"] for r in records[:3]]
    return summary


def _shares(summary: dict[str, Any]) -> str:
    return ", ".join(
        f"{reason} {100 * share:.1f}%"
        for reason, share in summary["reason-shares"].items()
    )


def mustard_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
    local: dict[str, Any],
) -> list[str]:
    kept = next(iter(runs.values()))[0]["mustard"]  # the same kept set in each run
    planted, found = kept["planted"], kept["diversity"]
    lines = [
        "## The kept set (template writer)",
        "",
        f"{kept['generated']} items generated, {kept['accepted']} kept "
        f"({100 * kept['accept-rate']:.1f}%). By reason: {_shares(kept)}.",
        f"Planted false: {planted['false-rejected']} of {planted['false']} rejected; "
        f"true: {planted['true-accepted']} of {planted['true']} accepted (or kept "
        "once as duplicates).",
        "",
        "| statement class / reason | items |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in kept["by-class"].items()],
        "",
        f"Diversity of the kept problems: distinct-1 {found['distinct-1']:.3f}, "
        f"distinct-2 {found['distinct-2']:.3f}, {found['distinct-seeds']} distinct "
        f"seeds, {found['distinct-concept-pairs']} distinct concept pairs, "
        f"{found['distinct-concepts']} of 16 concepts.",
        "",
        "## Word-problem accuracy (exact numeric match of the extracted answer)",
        "",
        "| method | round 0 | after | change | test loss (round 0 -> after) | wall "
        "time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, (summary, rows) in runs.items():
        first, last = rows[0], rows[-1]
        before, after = 100 * first["test-accuracy"], 100 * last["test-accuracy"]
        lines.append(
            f"| {method} | {before:.1f}% | {after:.1f}% | {after - before:+.1f} | "
            f"{first['test-loss']:.3f} -> {last['test-loss']:.3f} | "
            f"{summary.get('wall-seconds', 0):.0f} s |"
        )
    lines += [
        "",
        "## Items the offline SmolLM2-135M-Instruct writes itself (generator=local)",
        "",
        f"{local['generated']} items, {local['accepted']} kept "
        f"({100 * local['accept-rate']:.1f}%), in {local['seconds']:.0f} s. "
        f"By reason: {_shares(local)}.",
    ]
    return lines


def compare_task(task: str, args: argparse.Namespace, rounds: int) -> None:
    """A run per method of COMPARED[task]; one table and JSON."""
    runs = {}
    for method, settings in COMPARED[task].items():
        extra = [*settings, *args.set]
        out = args.runs_dir / task / method
        run_dir = run_task(task, rounds, args.seed, extra, out, method=method)
        summary = json.loads((run_dir / "summary.json").read_text())
        runs[method] = (summary, read_rows(run_dir))
    local = mustard_local_rate(args.local_items, args.seed)
    table = mustard_table(runs, local)
    sets = [f"--set {s}" for s in [*SETTINGS[task], *args.set]]
    command = " ".join([f"--task {task} --rounds {rounds} --seed {args.seed}", *sets])
    methods = "; ".join(
        f"--method {m} {' '.join(f'--set {s}' for s in settings)}".strip()
        for m, settings in COMPARED[task].items()
    )
    text = "\n".join(
        [f"# Task {task}", "", f"`spry run {command}`, once per method: {methods} "
         "(2-core CPU)", "", *table, ""]
    )  # fmt: skip
    (RESULTS / f"task_{task}.md").write_text(text)
    write_json(
        RESULTS / f"task_{task}.json",
        {
            "command": command,
            "methods": COMPARED[task],
            "runs": {m: {"summary": s, "rounds": r} for m, (s, r) in runs.items()},
            "local-generator": local,
        },
        indent=1,
    )
    print(text)


TABLES = {"raee": raee_table, "verix": verix_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted({*TABLES, *COMPARED}), action="append")
    parser.add_argument(
        "--rounds", type=int, help="rounds (default: ROUNDS[task], else 20)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "tasks")
    parser.add_argument(
        "--local-items", type=int, default=16,
        help="mustard: items the offline SmolLM2 writes for its valid rate",
    )  # fmt: skip
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in args.task or sorted({*TABLES, *COMPARED}):
        rounds = args.rounds or ROUNDS.get(task, 20)
        if task in COMPARED:
            compare_task(task, args, rounds)
            continue
        run_dir = run_task(task, rounds, args.seed, args.set, args.runs_dir / task)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = read_rows(run_dir)
        table = TABLES[task](summary, rows)
        sets = [f"--set {s}" for s in [*SETTINGS[task], *args.set]]
        command = " ".join(
            [f"--task {task} --rounds {rounds} --seed {args.seed}", *sets]
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
