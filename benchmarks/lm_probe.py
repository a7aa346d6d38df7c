"""Central probe: how far forward-gradient steps move a task's LoRA, without federation.

Before a lever is paid for with 20-minute federated runs, this asks the question
without the federation: one process, the `lm-classification` task's own model, loss,
batches and evaluation (SmolLM2-135M-Instruct, LoRA r 1 on q_proj and v_proj,
Rotten Tomatoes prompts), a fixed sample of training sentences, `--steps` steps of
`--batch-size` with one engine and one client optimizer, and the test loss and
accuracy on the first `--test-examples` test sentences every quarter of the way.
The same seed draws the same batches for every setting, so rows compare directly.

    python -m benchmarks.lm_probe --engine backprop --optimizer sgd --lr 1 --steps 100
    python -m benchmarks.lm_probe --engine forward --optimizer sgd --lr 0.1 --lora-fa
    python -m benchmarks.lm_probe --report        # the table from the JSON lines

Each run appends one JSON line to benchmarks/results/lm_probe.jsonl; `--report`
writes lm_probe.md from them. Wall time is per step on this machine, under whatever
else runs here: read it as a rough cost, the losses as the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEM = "lm_probe"


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """One setting's curve: [(step, test accuracy, test loss)] and seconds."""
    from spry.models import is_head
    from spry.resolve import resolve
    from spry.tasks import get, load_task
    from spry.training import make_client_engine, make_optimizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    values: dict[str, Any] = {
        **get(args.task).run_defaults,
        "task": args.task,
        "engine": args.engine,
        "num-tangents": args.num_tangents,
        "lora-fa": args.lora_fa,
        "client-optimizer": args.optimizer,
        "lr": args.lr,
        "seed": args.seed,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        values[key.strip()] = value.strip()
    cfg = resolve(values)
    task = load_task(cfg)
    trainable = task.build_model("cpu")
    # train and test splits: a labelled task's `dataset`, sft's `data` (pairs),
    # xfinder's `finder` (its rows interleave the output styles)
    dataset = next(
        getattr(task, name) for name in ("dataset", "data", "finder")
        if hasattr(task, name)
    )  # fmt: skip
    rng = np.random.default_rng(args.seed)
    train = dataset.train.select(rng.permutation(len(dataset.train))[: args.pool])
    test = dataset.test.select(range(min(args.test_examples, len(dataset.test))))
    # A Spry client trains one slice: every `slice_of`-th group of `group-size`
    # consecutive tensors (as the server groups them: a module's LoRA A with its
    # B), the rest fixed; a head, which every Spry client trains, is always in it.
    size = cfg.strategy.group_size
    chosen = [
        is_head(n) or (i // size) % args.slice_of == 0
        for i, n in enumerate(trainable.parameters())
    ]
    params = {
        trainable.own_name(n): p
        for (n, p), keep in zip(trainable.parameters().items(), chosen, strict=True)
        if keep
    }
    for p, keep in zip(trainable.parameters().values(), chosen, strict=True):
        p.requires_grad_(keep)
    engine = make_client_engine(cfg.client)
    optimizer = make_optimizer(params, cfg.client, exact=engine.is_exact)
    generator = torch.Generator().manual_seed(args.seed)

    def score(step: int) -> tuple[int, float, float]:
        scores = task.evaluate(trainable, test)
        print(f"[lm_probe] step {step}: test acc {100 * scores['accuracy']:.1f}% "
              f"loss {scores['loss']:.4f}", flush=True)  # fmt: skip
        return step, scores["accuracy"], scores["loss"]

    curve = [score(0)]
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        order = rng.integers(0, len(train), args.batch_size)
        batch = next(
            task.batches(trainable, train, batch_size=args.batch_size, order=order)
        )
        estimate = engine.estimate(
            trainable.model, task.loss, batch, params, generator=generator
        )
        for name, param in params.items():
            param.grad = estimate.grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % max(args.steps // 4, 1) == 0 or step == args.steps:
            curve.append(score(step))
    seconds = time.monotonic() - started
    return {
        "task": args.task,
        "set": args.set,
        "engine": args.engine,
        "num-tangents": args.num_tangents if args.engine == "forward" else None,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "lora-fa": args.lora_fa,
        "slice-of": args.slice_of,
        "slice-rule": "every N-th group of group-size tensors, and any head",
        "threads": args.threads,
        "test-examples": len(test),
        "trained-weights": int(sum(p.numel() for p in params.values())),
        "steps": args.steps,
        "batch-size": args.batch_size,
        "seed": args.seed,
        "curve": curve,
        "seconds": seconds,
    }


DESCRIPTIONS = {
    "lm-classification": "SmolLM2-135M-Instruct, LoRA r 1 on q_proj and v_proj, the "
    "task's prompt and label-word loss",
    "sft": "SmolLM2-135M-Instruct, LoRA r 1 on q_proj and v_proj, the sft task's "
    "review questions (sentiment, word count, word choice), loss on the answer "
    "tokens; accuracy is exact match of the greedy answer",
    "xfinder": "SmolLM2-135M-Instruct, LoRA r 1 on q_proj and v_proj, the xfinder "
    "task's key-answer-finder rows (question, a model output in one of 11 styles, "
    "the key answer), loss on the key answer's tokens; accuracy is extraction "
    "accuracy (xFinder's match rules) on held-out questions",
    "classification": "the default task: all-MiniLM-L6-v2, LoRA r 1 on query and "
    "value, the centred mean-pooled head (trained exactly under the forward engine, "
    "as every Spry client trains it)",
}


def report(rows: list[dict[str, Any]]) -> str:
    task = rows[0].get("task", "lm-classification")
    lines = [
        f"## Central probe: forward-gradient steps on {task} (no federation)",
        "",
        f"{DESCRIPTIONS.get(task, task)}; batches from a fixed sample of training "
        "sentences, the same for every row; test loss and accuracy on the first test "
        "sentences. `python -m benchmarks.lm_probe`.",
        "",
        "| engine | K | optimizer | lr | settings | trained (weights) | steps "
        "| test loss start -> end | test acc start -> end (sentences) "
        "| s/step (threads) |",
        "|---|---:|---|---:|---|---|---:|---|---|---:|",
    ]
    for r in rows:
        (_, acc0, loss0), (_, acc1, loss1) = r["curve"][0], r["curve"][-1]
        trained = "B only (LoRA-FA)" if r["lora-fa"] else "A and B"
        if r.get("slice-of", 1) > 1:
            trained += f", 1/{r['slice-of']} of the tensors"
        settings = " ".join(r.get("set", [])) or "-"
        lines.append(
            f"| {r['engine']} | {r['num-tangents'] or '-'} | {r['optimizer']} "
            f"| {r['lr']:g} | {settings} | {trained} ({r['trained-weights']:,}) "
            f"| {r['steps']} | {loss0:.4f} -> {loss1:.4f} "
            f"| {100 * acc0:.1f}% -> {100 * acc1:.1f}% ({r['test-examples']}) "
            f"| {r['seconds'] / r['steps']:.2f} ({r['threads']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="lm-classification")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any run setting (estimated-optimizer=sgd, train-lora=false, ...)",
    )  # fmt: skip
    parser.add_argument("--stem", default=STEM, help="results: STEM.jsonl, STEM.md")
    parser.add_argument("--engine", default="forward")
    parser.add_argument("--num-tangents", type=int, default=1)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="sgd")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--lora-fa", action="store_true")
    parser.add_argument(
        "--slice-of",
        type=int,
        default=1,
        help="train every N-th group of tensors only (10: one Spry slice of 10 "
        "clients; a head always), the others stay at their initial values",
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2000, help="training sentences")
    parser.add_argument("--test-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only write the table")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lines = args.out / f"{args.stem}.jsonl"
    if not args.report:
        row = probe(args)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(lines, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in lines.read_text().splitlines() if x.strip()]
    table = report(rows)
    (args.out / f"{args.stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
