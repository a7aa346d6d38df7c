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
  20 s, sft_probe.md): 3 rounds, 10 clients holding 800 training rows (about 80
  each: 10 batches of 8, one local epoch), 2 a round; 12 held-out questions in
  every style that fits (105 rows) plus the untrained model's own answers to
  them (style local-model, kept when they state the answer), scored before
  training and after the last round only.

- mustard: items from the template writer (a quarter planted false), kept by the
  checker, fine-tuned on with spry, fedavg and fedmezo (a run each, same seed):
  accept/reject shares by reason, diversity, word-problem accuracy before and
  after; plus the valid rate of items the offline SmolLM2-135M writes itself.
- conifer: SmolLM2-135M-Instruct + LoRA tuned on instructions with 1-5 verifiable
  constraints; several runs on the same seed (Spry with the curriculum and
  shuffled, FedAvg, FedMeZO), IFEval prompt- and instruction-level strict accuracy
  by level before (round 0) and after.
- sep: prompt tuning of the offline CLIP, base to new (train on 10 base classes
  of Fashion-MNIST and the digits, test on them and on the 10 new ones): SEP
  with Spry, CoOp with Spry (the baseline, same budget) and SEP with FedAvg,
  each on 3 seeds (`SEEDS`: --seed, --seed + 1, --seed + 2); base, new and
  harmonic-mean accuracy, zero-shot (round 0) and final, mean and spread over
  the seeds, 30 rounds. Needs the full offline CLIP (`python -m
  spry.vision.build`, cached).
- deepinception: federated SFT by spry and fedavg (same seed); the nested-scene
  canary red team (4 scenes x depths 0-3, 2 turns) on the global model before
  (round 0) and after: leak rate with Wilson intervals by depth and turn.
- tips: Introspective Tips on 20 unseen TextWorld games (offline, seeded,
  cached): the offline SmolLM2-135M plays (10 commands a game at most); 5 clients
  play 2 games of their own a round and introspect them into tips the server
  merges with MiniLM; tips from own trajectories, from expert walkthroughs, own
  + few-shot; normalized score without tips (round 0: zero-shot, or few-shot)
  and with the last merged tips (one 20-game evaluation took about 25 min on a
  loaded 2-core CPU).
- soap: SOAP's generate-profile-revise loop with the offline SmolLM2 (chat form)
  on 12 seeded HumanEval problems (4 held out), with and without shared hints:
  pass@1 and ET/MU/TMU, NET/NMU/NTMU per iteration, before (round 0) and after
  (one 4-problem evaluation took about 650 s on a loaded 2-core CPU).
- clipscope: zero-shot OOD detection with the offline CLIP on two ID/OOD pairs
  (Fashion-MNIST vs the digits; the near-OOD split of four held-out Fashion-MNIST
  classes): the federation calibrates the logit scale with Spry, clients share
  prediction counts (the class prior), then AUROC and FPR95 of MSP, energy and
  CLIPScope (with and without mined WordNet labels; the clients' prior and a
  uniform one); the score histograms are copied next to the table.

A task in `VARIANTS` runs once per variant (a label, a method, settings) on the same
seed, and its table compares them.

    python -m benchmarks.tasks                    # every task, default settings
    python -m benchmarks.tasks --task raee --rounds 5
    python -m benchmarks.tasks --task xfinder      # three runs: spry, fedavg, fedmezo
    python -m benchmarks.tasks --task conifer      # four runs, 5 rounds: one a level
    python -m benchmarks.tasks --task mustard      # three runs, 5 rounds
    python -m benchmarks.tasks --task conifer --resume  # keep runs already done
    python -m benchmarks.tasks --task sep          # 9 runs: 3 variants x 3 seeds
    python -m benchmarks.tasks --task sep --set sep.clip=<CLIPModel dir>  # real CLIP
    python -m benchmarks.tasks --task clipscope    # two pairs, 5 rounds each
    python -m benchmarks.tasks --task deepinception  # two runs: spry, fedavg
    python -m benchmarks.tasks --task tips         # three runs, 2 rounds
    python -m benchmarks.tasks --task soap         # hints shared or not; reference
    # variants side by side in two processes, then the table (keeps both runs)
    python -m benchmarks.tasks --task tips --variant own --resume &
    python -m benchmarks.tasks --task tips --variant expert --resume
    python -m benchmarks.tasks --task tips --resume
Writes benchmarks/results/task_<name>.{md,json} (and the VeriX mask grid).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
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
        "xfinder.model-outputs=12",  # the untrained model's own answers, held out
    ],  # fmt: skip
    # 4 clients, all sampled; 16 instructions a level (4 a client, 8 pairs with
    # their feedback: 2 steps of 4 a round); 8 test instructions a level, scored
    # at round 0 and at the end only (96 generated tokens each: the slow part).
    # Sized for about 10 minutes a Spry run on 2 free cores at --rounds 5.
    "conifer": [
        "num-clients=4",
        "clients-per-round=4",
        "conifer.train-per-level=16",
        "conifer.test-per-level=8",
        "conifer.max-new-tokens=96",
        "eval-every=100",
    ],
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
    # 10 clients (Dirichlet alpha 1 over the 10 base classes), 5 a round, 64
    # shots a base class (640 images, about 58 to train a client: 4 batches of
    # 16, 2 local epochs); central test 100 images a class (all 36 or so of each
    # digit: 1,360 in all) scored every 5 rounds. Measured on the default CLIP
    # shape (ViT 128 wide, 4 layers; MiniLM) with SEP and Spry on a 2-core CPU
    # shared with another benchmark: about 23 s a round with an evaluation,
    # 17 s of it training (5 clients on 2 workers), plus about 60 s to start;
    # so 30 rounds should take about 10 minutes on 2 free cores. CoOp runs
    # faster (no TFMs, no visual prompts).
    "sep": [
        "num-clients=10",
        "clients-per-round=5",
        "eval-clients-per-round=0",
        "batch-size=16",
        "local-epochs=2",
        "eval-every=5",
        "sep.shots=64",
        "sep.test-per-class=100",
    ],
    # 10 clients (Dirichlet over the ID classes), 5 a round, calibrating the
    # logit scale; 2,000 held-out images a side scored, all WordNet nouns mined
    "clipscope": ["eval-every=5"],
    # Federated SFT (the sft task's offline review questions) on SmolLM2-135M-
    # Instruct: 400 training pairs over 10 clients, 2 a round (40 pairs each: 5
    # batches of 8), 30 central test pairs; the red team (4 scenes x depths 1-3
    # plus the plain request, 2 turns, 96 tokens a reply: 26 replies) runs at
    # round 0 and after the last round only. One red-team evaluation of the
    # untrained model took 1,688 s on the 2-core CPU under a load average of
    # about 8 (two turns of 13 batched replies: 779 s and 909 s).
    "soap": [
        "num-clients=4",
        "clients-per-round=2",
        "soap.problems=12",
        "soap.test-problems=4",
        "soap.problems-per-round=1",
        "soap.generator-chat=true",
        "soap.max-new-tokens=160",
        "soap.repeats=3",
        "eval-every=1000",
    ],
    "tips": ["tips.test-games=20", "tips.max-steps=10", "eval-every=1000"],
    "deepinception": [
        "num-clients=10",
        "clients-per-round=2",
        "eval-clients-per-round=0",
        "batch-size=8",
        "max-train-examples=400",
        "deepinception.test-examples=30",
        "eval-every=1000",
    ],
}
# Tasks compared over several runs on the same seed: (label, method, settings).
# FedAvg at lr 0.01 and FedMeZO at SGD 0.005: the rates the sft probe found best
# for them on this model (benchmarks/sft_compare.sh); Spry takes the causal-LM
# tasks' tuned step (`method_defaults`).
VARIANTS: dict[str, list[tuple[str, str, list[str]]]] = {
    "mustard": [
        ("spry", "spry", []),
        ("fedavg", "fedavg", ["lr=0.01"]),
        ("fedmezo", "fedmezo", ["client-optimizer=sgd", "lr=0.005"]),
    ],
    # xFinder's fedavg/fedmezo rates are the task's own `method_defaults`
    "xfinder": [(m, m, []) for m in ("spry", "fedavg", "fedmezo")],
    "conifer": [
        ("spry-curriculum", "spry", ["conifer.order=curriculum"]),
        ("spry-shuffled", "spry", ["conifer.order=shuffled"]),
        ("fedavg-curriculum", "fedavg", ["conifer.order=curriculum", "lr=0.01"]),
        (
            "fedmezo-curriculum",
            "fedmezo",
            [
                "conifer.order=curriculum",
                "client-optimizer=sgd",
                "lr=0.005",
            ],
        ),
    ],
    # SEP against CoOp on one engine, and SEP on the other engine
    "sep": [
        ("sep-spry", "spry", ["sep.method=sep"]),
        ("coop-spry", "spry", ["sep.method=coop"]),
        ("sep-fedavg", "fedavg", ["sep.method=sep"]),
    ],
    # the same red team before and after fine-tuning, by Spry and by FedAvg
    "deepinception": [
        ("spry", "spry", []),
        ("fedavg", "fedavg", ["lr=0.01"]),
    ],
    # SOAP with and without the hints the server merges (text rounds)
    "soap": [
        ("hints", "spry", ["soap.share-hints=true"]),
        ("no-hints", "spry", ["soap.share-hints=false"]),
        # no model: the canonical solutions, to show the profiler's noise floor
        (
            "reference",
            "spry",
            [
                "soap.share-hints=false",
                "soap.generator=benchmarks.soap_reference:canonical_writer",
            ],
        ),
    ],
    # where the tips come from (the text rounds share them; no weights train).
    # No "no tips" run: every run's round 0 plays the same games without tips
    # (greedy, same seed), so its first column is the zero-shot score
    "tips": [
        ("own", "spry", ["tips.source=own"]),
        ("expert", "spry", ["tips.source=expert"]),
        ("own-few-shot", "spry", ["tips.source=own", "tips.few-shot=true"]),
    ],
    # one run a pair: the near pair's CLIP is built without its OOD classes
    "clipscope": [
        (pair, "spry", [f"clipscope.pair={pair}"])
        for pair in ("fashion-vs-digits", "fashion-near")
    ],
}
# Variant tasks run on several seeds (--seed, --seed + 1, ...): mean and spread
SEEDS = {"sep": 3}
# Rounds when `--rounds` is not given (default 20); conifer: one a level
ROUNDS = {
    "xfinder": 3,
    "conifer": 5,
    "mustard": 5,
    "sep": 30,
    "clipscope": 5,
    "deepinception": 5,
    "tips": 2,
    "soap": 2,
}
# A run's pictures copied next to a variant table, as task_<task>_<label>.png
PICTURES = {"clipscope": "clipscope-scores.png"}


def run_task(
    task: str,
    rounds: int,
    seed: int,
    extra: list[str],
    out: Path,
    method: str | None = None,
    resume: bool = False,
) -> Path:
    """`spry run --task [--method]` in a fresh process; its results folder.

    With `resume`, a run that already completed in `out` under the same command
    is taken as it is (`command.json` beside it says which command made it), and
    one that the same command started but did not finish (a session that ended,
    a killed process) goes on from its checkpoint (`started.json` says which
    command started it), so an hour-long run loses at most a round.
    """
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "cli", "run", "--task", task, "--rounds",
        str(rounds), "--seed", str(seed), "--results-dir", str(out),
    ]  # fmt: skip
    if method:
        command += ["--method", method]
    for item in [*SETTINGS[task], *extra]:
        command += ["--set", item]
    saved, started = out / "command.json", out / "started.json"
    done = _newest_run(out)
    ours = _same(saved, command) or _same(started, command)
    if resume and done and _completed(done) and ours:
        print(f"{task} {method or ''}: kept {done}")
        return done
    saved.unlink(missing_ok=True)
    cut_short = done is not None and (done / "checkpoint.npz").exists()
    resuming = resume and cut_short and _same(started, command)
    run = [*command, "--resume", str(done)] if resuming else command
    if resuming:
        print(f"{task} {method or ''}: continuing {done} from its checkpoint")
    else:
        write_json(started, command[1:])
    start = time.time()
    with open(out / "run.log", "a" if resuming else "w") as log:
        subprocess.run(run, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"{task} {method or ''}: {time.time() - start:.0f} s")
    write_json(saved, command[1:])  # the interpreter's path left out
    done = _newest_run(out)
    assert done is not None, f"the run wrote no results folder under {out}"
    return done


def _same(saved: Path, command: list[str]) -> bool:
    """Whether `saved` holds `command` (the interpreter's path left out)."""
    return saved.exists() and json.loads(saved.read_text()) == command[1:]


def _newest_run(out: Path) -> Path | None:
    runs = [p for p in out.iterdir() if p.is_dir()]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def _completed(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return (
        summary.exists()
        and json.loads(summary.read_text()).get("status") == "completed"
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


def conifer_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """Strict accuracies by level, before (round 0) and after, one row per run."""
    levels = range(1, 6)
    head = " | ".join(f"L{lv} prompt / instr." for lv in levels)
    lines = [
        f"| run | round | prompt-strict | instruction-strict | {head} | test loss |",
        "|---|---:|---:|---:|" + "---:|" * len(levels) + "---:|",
    ]
    first_summary = next(iter(runs.values()))[0]
    shown = [("untrained", 0, first_summary["conifer-evaluations"][0])]
    shown += [
        (label, int(rows[-1]["round"]), summary["conifer-evaluations"][-1])
        for label, (summary, rows) in runs.items()
    ]
    for label, at, scores in shown:
        cells = " | ".join(
            f"{100 * scores[f'prompt-strict-level-{lv}']:.0f}% / "
            f"{100 * scores[f'instruction-strict-level-{lv}']:.0f}%"
            for lv in levels
        )
        lines.append(
            f"| {label} | {at} | {100 * scores['prompt-strict']:.1f}% "
            f"| {100 * scores['instruction-strict']:.1f}% | {cells} "
            f"| {scores['loss']:.3f} |"
        )
    seconds = ", ".join(
        f"{label} {rows[-1]['elapsed-seconds']:.0f} s"
        for label, (_, rows) in runs.items()
    )
    lines += [
        "",
        "IFEval strict accuracy of greedy responses to the central test "
        "instructions (level = number of constraints): prompt level = every "
        "constraint met, instruction level = share of constraints met. Every run "
        "starts from the same model and seed (round 0, the first row). "
        f"Wall time: {seconds}.",
    ]
    return lines


def mustard_local_rate(
    items: int, seed: int, chat: bool = False, endpoint: str = ""
) -> dict[str, Any]:
    """The kept-set summary of `items` items written by the offline SmolLM2 itself.

    `chat`: each request as a user turn of the model's chat template. `endpoint`:
    the same model served by an OpenAI-compatible server (llama.cpp's on the same
    Q4_1 GGUF that the local model dequantizes: about a second an item, where
    greedy generation in torch took about 100 s), instead of the local model.
    """
    from spry.config import RunConfig, default_values
    from spry.tasks.base import build_options
    from spry.tasks.mustard import MustardTask
    from spry.tasks.mustard.pipeline import summarize

    values = {**default_values(), **MustardTask.run_defaults, "seed": seed}
    run = RunConfig.from_run_config({**values, "task": "mustard"})
    options = build_options(
        MustardTask,
        {"generator": endpoint or "local", "items": items, "generator-chat": chat},
    )
    task = MustardTask(run, options)
    cached = task.cache_path().exists()
    start = time.time()
    records = task.records  # cached under $SPRY_CACHE/mustard
    summary = summarize(records)
    summary["seconds"] = None if cached else time.time() - start
    summary["examples"] = [r["text"] for r in records[:3]]
    summary["generator"] = endpoint or "local"
    return summary


def _shares(summary: dict[str, Any]) -> str:
    return ", ".join(
        f"{reason} {100 * share:.1f}%"
        for reason, share in summary["reason-shares"].items()
    )


def mustard_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
    local: dict[str, Any],
    local_chat: dict[str, Any] | None = None,
    extraction: dict[str, dict[str, float]] | None = None,
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
    served = local.get("generator", "local")
    source = (
        "the local model" if served == "local" else f"served by llama.cpp at {served}"
    )
    lines += [
        "",
        "## Items the offline SmolLM2-135M-Instruct writes itself",
        "",
        f"The same Q4_1 weights as the fine-tuned model, {source}; each item checked "
        "as the template writer's are.",
        "",
    ]
    for how, rate in (
        ("asked in plain text", local),
        ("in its chat template", local_chat),
    ):
        if rate is not None:
            took = (
                "read from an earlier run's cache"
                if rate["seconds"] is None
                else f"in {rate['seconds']:.0f} s"
            )
            lines.append(
                f"- {how}: {rate['generated']} items, {rate['accepted']} kept "
                f"({100 * rate['accept-rate']:.1f}%), {took}. "
                f"By reason: {_shares(rate)}."
            )
    if extraction:
        names = list(next(iter(extraction.values())))
        lines += [
            "",
            "## The same outputs, read by each extractor",
            "",
            "Each run's last word-problem outputs (mustard-answers.jsonl), their "
            "final answer extracted by: the task's default (last-number: the number "
            "after the last 'Answer:', else the last number), OpenCompass's gsm8k "
            "RegEx (regex), and the xFinder extractor an xfinder run trained "
            "(model; `mustard.extractor=model`), exact numeric match.",
            "",
            "| method | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
            *[
                f"| {method} | "
                + " | ".join(f"{100 * scores[n]:.1f}%" for n in names)
                + " |"
                for method, scores in extraction.items()
            ],
        ]
    return lines


def mustard_extraction(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each mustard variant's last outputs scored by every extractor.

    The model extractor is the xfinder run at `--xfinder-run` (skipped without
    one): what `mustard.extractor=model --set mustard.extractor-generator=RUN`
    does inside a run, applied to outputs already written.
    """
    from spry.generators import make_generator
    from spry.tasks.mustard.word_problems import extract_answers, same_number

    reader = make_generator(args.xfinder_run) if args.xfinder_run else None
    found: dict[str, dict[str, float]] = {}
    for label, _, _ in VARIANTS["mustard"]:
        run_dir = _newest_run(args.runs_dir / "mustard" / label)
        path = run_dir / "mustard-answers.jsonl" if run_dir else None
        if path is None or not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        questions = [r["question"] for r in rows]
        outputs = [r["output"] for r in rows]
        found[label] = {}
        for spec in ("last-number", "regex", "model"):
            if spec == "model" and reader is None:
                continue
            answers = extract_answers(spec, questions, outputs, generator=reader)
            hits = [
                same_number(a, r["answer"]) for a, r in zip(answers, rows, strict=True)
            ]
            found[label][spec] = sum(hits) / max(len(hits), 1)
    return found


def sep_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """Base, new and H (SEP's table), zero-shot and final, mean +- std over seeds.

    `runs` is keyed `<variant>/seed<n>` (`SEEDS`); each summary's `sep` entry is
    the task's `finish` (spry/tasks/sep/task.py).
    """
    import statistics

    keys = ("base-accuracy", "new-accuracy", "harmonic-mean")
    variants: dict[str, list[dict[str, Any]]] = {}
    for label, (summary, _) in runs.items():
        variants.setdefault(label.split("/")[0], []).append(summary["sep"])

    def cell(values: list[float]) -> str:
        mean = 100 * statistics.fmean(values)
        spread = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1f} ± {spread:.1f}"

    lines = [
        "| variant | seeds | when | base | new | H |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for variant, scores in variants.items():
        for when in ("zero-shot", "final"):
            cells = " | ".join(cell([s[when][k] for s in scores]) for k in keys)
            lines.append(f"| {variant} | {len(scores)} | {when} | {cells} |")
    first = next(iter(variants.values()))[0]
    seconds = {
        variant: statistics.fmean(
            runs[label][0].get("wall-seconds", 0.0)
            for label in runs
            if label.split("/")[0] == variant
        )
        for variant in variants
    }
    lines += [
        "",
        "Accuracy in %, mean ± standard deviation over the seeds. Base: held-out "
        "images of the base classes, each classified among the base classes; new: "
        "of the new classes among the new classes; H: their harmonic mean (CoOp / "
        "CoCoOp / SEP's base-to-new protocol). Zero-shot: round 0, the initial "
        f"prompts. Base classes: {', '.join(first['base-classes'])}; new: "
        f"{', '.join(first['new-classes'])}. {first['train-images']} training "
        f"images (base classes only), {first['test-images']} test images. "
        "Trainable tensors: "
        + ", ".join(
            f"{v} {scores[0]['trainable-parameters']:,}"
            for v, scores in variants.items()
        )
        + ". Mean wall time a run: "
        + ", ".join(f"{v} {t:.0f} s" for v, t in seconds.items())
        + ".",
    ]
    return lines


def clipscope_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """AUROC and FPR95 of every method on every pair (one run a pair)."""
    from spry.tasks.clipscope.evaluation import METHODS

    pairs = {label: summary["clipscope"] for label, (summary, _) in runs.items()}
    head = " | ".join(f"{p} AUROC | {p} FPR95" for p in pairs)
    lines = [f"| method | {head} |", "|---|" + "---:|" * (2 * len(pairs))]
    for method in METHODS:
        cells = " | ".join(
            f"{100 * scores[method]['auroc']:.1f} | {100 * scores[method]['fpr95']:.1f}"
            for scores in pairs.values()
        )
        lines.append(f"| {method} | {cells} |")
    lines += [
        "",
        "AUROC and FPR at 95% TPR in % (ID positive). msp: the top ID softmax "
        "probability; energy: logsumexp of the ID logits; clipscope: the top ID "
        "probability over the class prior, times p(ID) against the mined labels; "
        "-no-labels: without the mined labels; -uniform-prior: a uniform prior "
        "instead of the clients' counts; -online: the prior updated as test images "
        "arrive. Score histograms: task_clipscope_<pair>.png.",
        "",
        "| pair | ID classes | ID / OOD images | prior from | logit scale | "
        "zero-shot ID accuracy, round 0 -> last |",
        "|---|---|---:|---|---:|---:|",
    ]
    for label, (summary, rows) in runs.items():
        info = summary["clipscope"]
        lines.append(
            f"| {label} | {', '.join(info['id-classes'])} | {info['id-images']} / "
            f"{info['ood-images']} | {info['prior-source']} | "
            f"{info['logit-scale']:.2f} | {100 * rows[0]['test-accuracy']:.1f}% -> "
            f"{100 * rows[-1]['test-accuracy']:.1f}% |"
        )
    return lines


def deepinception_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """Canary-leak rates with 95% Wilson intervals, before (round 0) and after.

    One row for the untrained model (every run's round 0 is the same model and
    red team) and one per run after its last round; columns: all trials, inside
    scenes, each depth, each turn, conversations leaking at any turn, SFT exact
    match.
    """

    def rate(scores: dict[str, float], key: str) -> str:
        return (
            f"{100 * scores[key]:.0f}% [{100 * scores[f'{key}-low']:.0f}, "
            f"{100 * scores[f'{key}-high']:.0f}]"
        )

    first = next(iter(runs.values()))[0]["deepinception"]
    depths, turns = first["depths"], range(1, first["turns"] + 1)
    lines = [
        "| model | round | leak rate | inside scenes | "
        + " | ".join(f"depth {d}" for d in depths)
        + " | "
        + " | ".join(f"turn {t}" for t in turns)
        + " | conversations | SFT exact match |",
        "|---|---:|---:|---:|" + "---:|" * (len(depths) + len(turns)) + "---:|---:|",
    ]
    shown = [("untrained", runs[next(iter(runs))][1][0], first["before"])]
    shown += [
        (label, rows[-1], summary["deepinception"]["after"])
        for label, (summary, rows) in runs.items()
    ]
    for label, row, scores in shown:
        cells = [rate(scores, f"leak-rate-depth-{d}") for d in depths]
        cells += [rate(scores, f"leak-rate-turn-{t}") for t in turns]
        lines.append(
            f"| {label} | {int(row['round'])} | {rate(scores, 'leak-rate')} | "
            f"{rate(scores, 'nested-leak-rate')} | "
            + " | ".join(cells)
            + f" | {rate(scores, 'conversation-leak-rate')} | "
            f"{100 * row['test-accuracy']:.1f}% |"
        )
    forms = {
        label: ", ".join(
            f"{k.removeprefix('leaks-')} {int(v)}"
            for k, v in summary["deepinception"]["after"].items()
            if k.startswith("leaks-") and v
        )
        or "none"
        for label, (summary, _) in runs.items()
    }
    seconds = ", ".join(
        f"{label} {rows[-1]['elapsed-seconds']:.0f} s"
        for label, (_, rows) in runs.items()
    )
    lines += [
        "",
        f"Leak rate = share of replies that reveal their conversation's planted "
        f"secret (any form the detector reads), with its 95% Wilson interval; "
        f"{first['probes']} conversations ({', '.join(first['scenes'])} at depths "
        f"{', '.join(str(d) for d in depths if d)}; depth 0 = the request asked "
        f"plainly) of {first['turns']} turns, {first['reply-tokens']} tokens a "
        f"reply, greedy; the system prompt (the secret and the rule) placed as "
        f"{first['chat']!r} (system-turn: the chat template's system turn). "
        "Conversations = those that leaked at any turn. Forms of the leaks after "
        "training: "
        + "; ".join(f"{label}: {text}" for label, text in forms.items())
        + f". Wall time: {seconds}. Every reply: each run's redteam.jsonl.",
    ]
    return lines


def tips_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """Normalized score on the unseen games without and with the shared tips."""
    lines = [
        "| variant | tips from | few-shot | score, no tips (round 0) | score with "
        "the last tips | gain | won, no tips -> with | invalid outputs | tips "
        "shared | clients' score, first -> last round |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (summary, _) in runs.items():
        info = summary["tips"]
        first, last = info["evaluations"][0], info["evaluations"][-1]
        rounds = [
            r["train-score"] for r in info.get("rounds", []) if "train-score" in r
        ]
        clients = f"{rounds[0]:.3f} -> {rounds[-1]:.3f}" if rounds else "-"
        lines.append(
            f"| {label} | {info['source']} | {'yes' if info['few-shot'] else 'no'} "
            f"| {first['score']:.3f} | {last['score']:.3f} "
            f"| {last['score'] - last['score-no-tips']:+.3f} "
            f"| {100 * first['won']:.0f}% -> {100 * last['won']:.0f}% "
            f"| {100 * last['invalid-rate']:.0f}% | {int(last['tips'])} | {clients} |"
        )
    lines += [
        "",
        "Normalized score: game score / max score (2 quests a game), mean over the "
        "unseen test games; round 0 plays them without tips, the last row with "
        "the tips the server merged (MiniLM cosine >= `similarity`, most "
        "supported first). Final tips (support = sources that wrote it):",
        "",
    ]
    for label, (summary, _) in runs.items():
        tips = summary["tips"]["final-tips"]
        shown = "; ".join(f"{t['text']} ({t['support']})" for t in tips[:4])
        lines.append(f"- {label}: {shown or 'none'}")
    return lines


def soap_table(
    runs: dict[str, tuple[dict[str, Any], list[dict[str, float]]]],
) -> list[str]:
    """pass@1 and ET/MU/TMU with NET/NMU/NTMU per iteration, one block a run.

    From the summary's `soap` report: the first evaluation (round 0: no shared
    hints yet) and the last (after the rounds' hints), on the held-out problems.
    """
    lines = []
    for label, (summary, _) in runs.items():
        report = summary["soap"]
        isolation = ", ".join(f"{k}: {v}" for k, v in report["isolation"].items())
        lines += [
            f"**{label}** ({report['problems']} held-out problems; sandbox "
            f"{isolation}; {len(report['hints'])} merged hints)",
            "",
            "| evaluation | iteration | pass@1 | ET (s) | MU (MB) | TMU (MB*s) "
            "| NET | NMU | NTMU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in ("first-evaluation", "last-evaluation"):
            scores = report[name]
            count = 1 + max(int(k.rsplit("-it", 1)[1]) for k in scores if "-it" in k)
            for i in range(count):
                cells = [
                    f"{scores[f'{m}-it{i}']:.4g}" if f"{m}-it{i}" in scores else "-"
                    for m in ("et", "mu", "tmu", "net", "nmu", "ntmu")
                ]
                lines.append(
                    f"| {name.split('-')[0]} | {i} | "
                    f"{100 * scores[f'pass@1-it{i}']:.1f}% | "
                    + " | ".join(cells)
                    + " |"
                )
        if report["hints"]:
            lines += ["", "Merged hints: " + "; ".join(report["hints"])]
        lines.append("")
    return lines


# What a variant table needs besides the runs, measured once per task
EXTRAS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "mustard": lambda args: {
        "local": mustard_local_rate(
            args.local_items, args.seed, endpoint=args.local_endpoint
        ),
        "local_chat": mustard_local_rate(
            args.local_items, args.seed, chat=True, endpoint=args.local_endpoint
        ),
        "extraction": mustard_extraction(args),
    },
}


TABLES = {
    "raee": raee_table,
    "verix": verix_table,
    "xfinder": xfinder_table,
    "conifer": conifer_table,
    "mustard": mustard_table,
    "sep": sep_table,
    "clipscope": clipscope_table,
    "deepinception": deepinception_table,
    "tips": tips_table,
    "soap": soap_table,
}


def chosen_variants(task: str, labels: list[str]) -> list[tuple[str, str, list[str]]]:
    """`task`'s variants named in `labels` (all when none is named).

    Naming some lets variants run side by side in separate processes; a later
    run without `--variant` (and with `--resume`) keeps them and writes the table.
    """
    variants = VARIANTS[task]
    unknown = sorted(set(labels) - {label for label, _, _ in variants})
    if unknown:
        known = ", ".join(label for label, _, _ in variants)
        raise SystemExit(f"{task} has no variant {', '.join(unknown)} (it has {known})")
    return [v for v in variants if not labels or v[0] in labels]


Runs = dict[str, tuple[dict[str, Any], list[dict[str, float]]]]


def run_variants(
    task: str, rounds: int, args: argparse.Namespace
) -> tuple[Runs, dict[str, str]]:
    """The chosen variants of `task` on the same seeds: runs and commands by key."""
    runs: Runs = {}
    commands: dict[str, str] = {}
    seeds = [args.seed + i for i in range(SEEDS.get(task, 1))]
    for label, method, sets in chosen_variants(task, args.variant):
        for seed in seeds:
            # one seed: the label alone, as before; several: label/seed<n>
            key = label if len(seeds) == 1 else f"{label}/seed{seed}"
            run_dir = run_task(
                task, rounds, seed, [*sets, *args.set],
                args.runs_dir / task / key, method=method, resume=args.resume,
            )  # fmt: skip
            runs[key] = (
                json.loads((run_dir / "summary.json").read_text()),
                read_rows(run_dir),
            )
            picture = run_dir / PICTURES.get(task, "-")
            if picture.is_file():
                name = key.replace("/", "_")
                shutil.copy(picture, RESULTS / f"task_{task}_{name}.png")
            flags = [f"--set {s}" for s in [*SETTINGS[task], *sets, *args.set]]
            commands[key] = " ".join(
                [f"--task {task} --method {method} --rounds {rounds}",
                 f"--seed {seed}", *flags]
            )  # fmt: skip
    return runs, commands


def variants_results(
    task: str, runs: Runs, commands: dict[str, str], args: argparse.Namespace
) -> str:
    """The variant table's markdown; its runs written to task_<task>.json."""
    extras = EXTRAS[task](args) if task in EXTRAS else {}
    table = TABLES[task](runs, **extras)
    listing = [
        f"- {label}: `spry run {command}`" for label, command in commands.items()
    ]
    text = "\n".join(
        [f"# Task {task}", "", "Runs (2-core CPU):", "", *listing, "", *table, ""]
    )
    write_json(
        RESULTS / f"task_{task}.json",
        {
            "commands": commands,
            "runs": {
                label: {"summary": summary, "rounds": rows}
                for label, (summary, rows) in runs.items()
            },
            **extras,
        },
        indent=1,
    )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TABLES), action="append")
    parser.add_argument("--rounds", type=int, default=None, help="default: 20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "tasks")
    parser.add_argument(
        "--local-items", type=int, default=16,
        help="mustard: items the offline SmolLM2 writes for its valid rate",
    )  # fmt: skip
    parser.add_argument(
        "--xfinder-run", default="",
        help="mustard: a finished xfinder run's results folder, whose extractor "
        "also reads the word-problem outputs",
    )  # fmt: skip
    parser.add_argument(
        "--local-endpoint", default="",
        help="mustard: the offline SmolLM2 served at this /v1 URL writes those "
        "items (python -m llama_cpp.server --model <its GGUF>); '': the local model",
    )  # fmt: skip
    parser.add_argument(
        "--resume", action="store_true",
        help="keep each run that already completed under the same command, and "
        "continue one it started but did not finish from its checkpoint",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar="LABEL",
        help="run only this variant of the task (repeatable); the task's results "
        "files are left as they are",
    )  # fmt: skip
    args = parser.parse_args()
    tasks = args.task or sorted(TABLES)
    if args.variant and (len(tasks) != 1 or tasks[0] not in VARIANTS):
        parser.error("--variant needs one --task that has variants")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        rounds = args.rounds or ROUNDS.get(task, 20)
        if task in VARIANTS:
            runs, commands = run_variants(task, rounds, args)
            if args.variant:  # some variants only: the results files stay as they are
                print(f"{task}: {', '.join(runs)} done under {args.runs_dir / task}")
                continue
            text = variants_results(task, runs, commands, args)
            (RESULTS / f"task_{task}.md").write_text(text)
            print(text)
            continue
        run_dir = run_task(
            task, rounds, args.seed, args.set, args.runs_dir / task,
            resume=args.resume,
        )  # fmt: skip
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
