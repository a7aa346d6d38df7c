"""Peak memory of one training step: forward-mode vs backprop vs inference alone.

Spry's claim is that a forward-mode gradient needs about the memory of inference,
while backprop must keep every activation for its backward pass. This measures one
step (the gradient estimate and nothing else) on the same model and batch for three
engines: `inference` (a plain forward under `torch.no_grad()`, the floor), and
`forward` and `backprop` from `spry.engines`.

*Extra* is the peak during the step minus the memory in use when it started
(weights, Python, torch): what the step needs on top of holding the model. It is the
headline; the absolute peak (*total*) is reported too. CPU: the resident-set
high-water mark (`spry.memory`, VmHWM after /proc/self/clear_refs); CUDA:
`torch.cuda.max_memory_allocated`.

Each measurement runs in a fresh process (`--worker`, which prints one JSON line): a
high-water mark, allocator caches or lazily built kernels left by one engine would
otherwise leak into the next one's number. A worker builds the model, runs one tiny
step (batch 1, seq 8) of the same engine for lazy allocations, measures the real step,
then times a few more steps apart from the memory measurement.

"roberta-large-shape" is RoBERTa-large's shape with *random* weights (memory does not
depend on weight values); `--depths` sweeps its number of layers.

    python -m benchmarks.memory                  # both models + depth sweep 2,6,12,24
    python -m benchmarks.memory --models minilm --depths ""
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("minilm", "roberta-large-shape")
ENGINES = ("inference", "forward", "backprop")
LARGE = "roberta-large-shape"
LARGE_DEPTH = 24  # RoBERTa-large's number of layers
MIB = 2**20
Record = dict[str, Any]
Step = Callable[[dict[str, torch.Tensor]], None]


# --------------------------------------------------------------------------- worker
def roberta_large_shape(depth: int = LARGE_DEPTH, *, seed: int = 0) -> Any:
    """Build a RoBERTa-large-shaped classifier (random weights) with Spry's LoRA."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, RobertaConfig

    from spry.models.classifier import TrainableModel, stable_name

    cfg = RobertaConfig(
        hidden_size=1024,
        num_hidden_layers=depth,
        num_attention_heads=16,
        intermediate_size=4096,
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        num_labels=2,
    )
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=1,
        lora_alpha=1,
        lora_dropout=0.0,
        target_modules=["query", "value"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = AutoModelForSequenceClassification.from_config(
            cfg, attn_implementation="eager"
        )
        model = get_peft_model(base, lora).eval()
    names = {stable_name(n): n for n, p in model.named_parameters() if p.requires_grad}
    return TrainableModel(model=model, tokenizer=None, names=names)


def build_model(name: str, depth: int, device: str) -> Any:
    """Build the TrainableModel `name` (MiniLM: the real offline weights)."""
    if name == "minilm":
        from spry.config import ModelConfig
        from spry.models.classifier import build_classifier

        return build_classifier(ModelConfig(), num_labels=2, seed=0, device=device)
    trainable = roberta_large_shape(depth)
    trainable.model.to(device)
    return trainable


def random_batch(
    vocab: int, batch: int, seq: int, *, device: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Make random ids of exactly `seq` tokens (no padding) and binary labels.

    Ids start at 3, so no special token appears (RoBERTa derives position ids from
    where its pad token is).
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def make_step(engine: str, trainable: Any, device: str) -> Step:
    """Return one step of `engine` on a batch (its result is dropped)."""
    from spry.classification import classification_loss
    from spry.engines import make_engine

    model = trainable.model
    if engine == "inference":

        @torch.no_grad()
        def infer(batch: dict[str, torch.Tensor]) -> None:
            classification_loss(model, batch)

        return infer
    estimator = make_engine(engine)
    params = {trainable.own_name(n): p for n, p in trainable.parameters().items()}

    def estimate(batch: dict[str, torch.Tensor]) -> None:
        gen = torch.Generator(device=device).manual_seed(0)  # on the params' device
        estimator.estimate(model, classification_loss, batch, params, generator=gen)

    return estimate


def release_free_memory(device: str) -> None:
    """Return freed memory to the OS/driver so the baseline holds live memory only."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    try:  # glibc keeps freed heap pages resident; a step could reuse them unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(step: Step, batch: dict[str, torch.Tensor], device: str) -> float:
    """Run one step; return its wall seconds."""
    start = time.perf_counter()
    step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_worker(args: argparse.Namespace) -> Record:
    """Build, warm up, measure one step, time a few more; return one record."""
    from spry.memory import track_peak_memory

    torch.set_num_threads(args.threads)
    trainable = build_model(args.model, args.depth, args.device)
    model, dev = trainable.model, args.device
    step = make_step(args.engine, trainable, dev)
    step(random_batch(model.config.vocab_size, 1, 8, device=dev, seed=1))  # warm-up
    batch = random_batch(model.config.vocab_size, args.batch, args.seq, device=dev)
    release_free_memory(dev)
    with track_peak_memory(dev) as report:
        step(batch)
    times = [timed(step, batch, dev) for _ in range(args.timed_steps)]
    cuda = dev.startswith("cuda")
    return {
        "model": args.model,
        "engine": args.engine,
        "depth": model.config.num_hidden_layers,
        "batch": args.batch,
        "seq": args.seq,
        "weights": "random" if args.model == LARGE else "pretrained",
        "extra_mib": report.extra_bytes / MIB,
        "total_mib": report.peak_bytes / MIB,
        "baseline_mib": report.baseline_bytes / MIB,
        "exact": report.exact,
        "measured_step_seconds": report.seconds,
        "step_seconds": statistics.median(times) if times else None,
        "step_seconds_all": times,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable.parameters().values()),
        "device": dev,
        "device_name": torch.cuda.get_device_name(dev) if cuda else platform.machine(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------ orchestration
def measure(job: tuple[str, str, int, bool], args: argparse.Namespace) -> Record:
    """Run one worker in a fresh interpreter; return its record."""
    model, engine, depth, sweep = job
    steps = 0 if sweep else args.timed_steps  # the sweep is about memory only
    options = {
        "model": model,
        "engine": engine,
        "depth": depth,
        "batch": args.batch,
        "seq": args.seq,
        "device": args.device,
        "threads": args.threads,
        "timed-steps": steps,
    }
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker"]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {model}/{engine}/depth {depth} failed (rc {done.returncode}):\n"
            + done.stderr[-3000:]
        )
    return {**json.loads(lines[-1]), "sweep": sweep}


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, bool]]:
    """List (model, engine, depth, in depth sweep) for every worker to run."""
    jobs = [(m, e, LARGE_DEPTH, False) for m in args.models for e in ENGINES]
    for depth in args.depths:  # depth 24 is the main run's, when that ran
        if depth != LARGE_DEPTH or LARGE not in args.models:
            jobs += [(LARGE, e, depth, True) for e in ENGINES]
    return jobs


def grouped(records: Sequence[Record], key: str) -> dict[Any, dict[str, Record]]:
    """Map records[key] -> engine -> record, in first-seen order."""
    out: dict[Any, dict[str, Record]] = {}
    for r in records:
        out.setdefault(r[key], {})[r["engine"]] = r
    return out


def ratio(a: float | None, b: float | None) -> str:
    """Format a / b to two decimals, or a dash."""
    return f"{a / b:.2f}" if a is not None and b else "–"


def secs(x: float | None) -> str:
    """Format seconds, or a dash when not timed."""
    return "–" if x is None else f"{x:.2f}"


def markdown(main: Sequence[Record], sweep: Sequence[Record]) -> str:
    """Write the results tables and how they were measured."""
    r0 = (list(main) + list(sweep))[0]
    out = [
        f"## Peak memory of one step (batch {r0['batch']}, seq {r0['seq']}, "
        f"{r0['device']}), MiB above the loaded model",
        "",
        "| model | inference extra | forward extra | backprop extra "
        "| fwd/bp extra | fwd/bp total | step s fwd / bp |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, e in grouped(main, "model").items():  # empty when only swept
        inf, fwd, bp = (e[k] for k in ENGINES)
        label = model + (" (random weights)" if fwd["weights"] == "random" else "")
        out.append(
            f"| {label} | {inf['extra_mib']:.0f} | {fwd['extra_mib']:.0f} "
            f"| {bp['extra_mib']:.0f} | {ratio(fwd['extra_mib'], bp['extra_mib'])} "
            f"| {ratio(fwd['total_mib'], bp['total_mib'])} "
            f"| {secs(fwd['step_seconds'])} / {secs(bp['step_seconds'])} |"
        )
    out += [
        "",
        "| model | params | trainable | total MiB inference / forward / backprop |",
        "|---|---:|---:|---:|",
    ]
    for model, e in grouped(main, "model").items():
        totals = " / ".join(f"{e[k]['total_mib']:.0f}" for k in ENGINES)
        f = e["forward"]
        out.append(
            f"| {model} | {f['params_total']:,} | {f['params_trainable']:,} "
            f"| {totals} |"
        )
    if sweep:
        out += [
            "",
            "### Depth sweep: RoBERTa-large shape (random weights), extra MiB",
            "",
            "| layers | inference | forward | backprop | fwd/bp |",
            "|---:|---:|---:|---:|---:|",
        ]
        for depth, e in sorted(grouped(sweep, "depth").items()):
            inf, fwd, bp = (e[k]["extra_mib"] for k in ENGINES)
            out.append(
                f"| {depth} | {inf:.0f} | {fwd:.0f} | {bp:.0f} | {ratio(fwd, bp)} |"
            )
    out += ["", "**How measured.** " + HOW_MEASURED.format(**r0)]
    return "\n".join(out) + "\n"


HOW_MEASURED = (
    "Each number comes from its own fresh process (`python -m benchmarks.memory "
    "--worker`), so no engine inherits another's high-water mark or allocator state. "
    "A worker builds the model (LoRA r = 1 on query/value plus the trainable "
    "classifier head; every trainable tensor is differentiated), runs one tiny step "
    "of the same engine (batch 1, seq 8) for lazy allocations, returns freed memory "
    "to the OS, then measures one step on random token ids ({batch} x {seq}, "
    "attention mask all ones, random labels) with `spry.memory.track_peak_memory` "
    "(CPU: RSS high-water mark, VmHWM after /proc/self/clear_refs; CUDA: "
    "`max_memory_allocated`). *Extra* is that peak minus the memory in use when the "
    "step began (weights are in the latter): what the step itself needs; *total* is "
    "the absolute peak. `inference` is a plain forward under `torch.no_grad()`; "
    "`forward` is Spry's forward gradient (one tangent, `torch.func.jvp`); "
    "`backprop` is reverse mode. Step time is the median of further steps "
    "(`--timed-steps`, default 3), timed apart from the memory measurement (the "
    "depth sweep is not timed). The RoBERTa-large-shaped model has random weights: "
    "memory does not depend on weight values. torch {torch}, {threads} threads, "
    "{cpu_count} CPUs, {machine}."
)


def plot(main: Sequence[Record], sweep: Sequence[Record], path: Path) -> None:
    """Save bars of extra MiB per engine per model, and extra MiB vs depth if swept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 6, 4))
    ax = axes[0] if sweep else axes
    by_model = grouped(main, "model")
    width = 0.8 / len(ENGINES)
    for i, engine in enumerate(ENGINES):
        xs = [x + (i - 1) * width for x in range(len(by_model))]
        ys = [e[engine]["extra_mib"] for e in by_model.values()]
        ax.bar_label(ax.bar(xs, ys, width, label=engine), fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(by_model)), list(by_model))
    ax.set(ylabel="extra peak memory (MiB)", title="One step, memory above the model")
    ax.legend()
    if sweep:
        by_depth = sorted(grouped(sweep, "depth").items())
        for engine in ENGINES:
            ys = [e[engine]["extra_mib"] for _, e in by_depth]
            axes[1].plot([d for d, _ in by_depth], ys, marker="o", label=engine)
        axes[1].set(
            xlabel="layers (RoBERTa-large shape, random weights)",
            ylabel="extra peak memory (MiB)",
            title="Extra memory vs depth",
        )
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_all(args: argparse.Namespace) -> str:
    """Run every worker, write memory.json/.md/.png; return the markdown."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    jobs, records = plan(args), []
    for i, job in enumerate(jobs, 1):
        start = time.perf_counter()
        records.append(r := measure(job, args))
        print(
            f"[{i}/{len(jobs)}] {r['model']} ({r['depth']} layers) {r['engine']}: "
            f"extra {r['extra_mib']:.0f} MiB, total {r['total_mib']:.0f} MiB "
            f"({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
        )
    main = [r for r in records if not r["sweep"]]
    sweep = [r for r in records if r["model"] == LARGE and r["depth"] in args.depths]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.out / "memory.md").write_text(text := markdown(main, sweep))
    plot(main, sweep, args.out / "memory.png")
    return text


def ints(text: str) -> list[int]:
    """Parse a comma-separated list of integers (argparse type)."""
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add(
        "--models",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(MODELS),
        help=f"comma-separated, from: {', '.join(MODELS)}",
    )
    add(
        "--depths",
        type=ints,
        default=[2, 6, 12, 24],
        help="RoBERTa-large-shape layer counts to sweep ('' for none)",
    )
    add("--batch", type=int, default=8)
    add("--seq", type=int, default=128)
    add("--device", default="cpu", help="cpu or cuda[:N]")
    add("--threads", type=int, default=2, help="torch.set_num_threads")
    add("--timed-steps", type=int, default=3, help="steps timed after the measured one")
    add("--out", type=Path, default=RESULTS, help="results folder")
    add(
        "--worker", action="store_true", help="internal: one measurement, one JSON line"
    )
    add("--model", choices=MODELS, help="worker's model")
    add("--engine", choices=ENGINES, help="worker's engine")
    add("--depth", type=int, default=LARGE_DEPTH, help="worker's RoBERTa layers")
    args = p.parse_args(argv)
    if unknown := sorted(set(args.models) - set(MODELS)):
        p.error(f"unknown model(s) {unknown}; available: {', '.join(MODELS)}")
    if args.worker and not (args.model and args.engine):
        p.error("--worker needs --model and --engine")
    if not args.worker and not args.models and not args.depths:
        p.error("nothing to measure: give --models or --depths")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Orchestrate fresh-process workers, or be one."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)), flush=True)
    else:
        print(run_all(args))


if __name__ == "__main__":
    main()
