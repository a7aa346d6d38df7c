"""Peak memory of one training step: forward-mode vs backprop vs inference alone.

Spry's claim is that a forward-mode gradient needs about the memory of inference,
while backprop must keep every activation for its backward pass. This benchmark
measures that claim for one step (the gradient estimate and nothing else) on the same
model and the same batch, with three "engines": `inference` (a plain forward under
`torch.no_grad()`, the floor), `forward` and `backprop` (`spry.engines`).

*Extra* memory is the peak during the step minus the memory in use when the step
started (weights, Python, torch itself): what the step needs on top of holding the
model. That is the headline; the absolute peak (*total*) is reported as well. On CPU
both come from the process's resident-set high-water mark (`spry.memory`: VmHWM
after /proc/self/clear_refs); on CUDA from `torch.cuda.max_memory_allocated`.

Each measurement runs in a fresh process (`--worker`, printing one JSON line): a
high-water mark, allocator caches and lazily initialised kernels left behind by one
engine would otherwise leak into the next engine's number. Inside a worker the model
is built, one tiny step (batch 1, seq 8) of the same engine does the lazy
allocations, then the real step is measured, then further steps are timed apart from
the memory measurement.

"roberta-large-shape" has RoBERTa-large's shape and *random* weights (memory does not
depend on weight values); `--depths` sweeps its number of layers.

    python -m benchmarks.memory                      # defaults: both models
    python -m benchmarks.memory --models minilm --depths 2,6,12,24
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
LARGE_DEPTH = 24  # RoBERTa-large's number of layers
MIB = 2**20
Record = dict[str, Any]


# --------------------------------------------------------------------------- worker
def roberta_large_shape(depth: int = LARGE_DEPTH, *, seed: int = 0) -> Any:
    """RoBERTa-large-shaped classifier, random weights, with Spry's LoRA (r = 1)."""
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = AutoModelForSequenceClassification.from_config(
            cfg, attn_implementation="eager"
        )
        lora = LoraConfig(
            task_type="SEQ_CLS",
            r=1,
            lora_alpha=1,
            lora_dropout=0.0,
            target_modules=["query", "value"],
        )
        model = get_peft_model(base, lora)
    model.eval()
    names = {stable_name(n): n for n, p in model.named_parameters() if p.requires_grad}
    return TrainableModel(model=model, tokenizer=None, names=names)


def build_model(name: str, depth: int, device: str) -> Any:
    """The TrainableModel called `name` (MiniLM: the real offline weights)."""
    if name == "minilm":
        from spry.config import ModelConfig
        from spry.models.classifier import build_classifier

        return build_classifier(ModelConfig(), num_labels=2, seed=0, device=device)
    if name == "roberta-large-shape":
        trainable = roberta_large_shape(depth)
        trainable.model.to(device)
        return trainable
    raise ValueError(f"unknown model {name!r}; available: {MODELS}")


def random_batch(
    vocab_size: int, batch: int, seq: int, *, device: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids of exactly `seq` tokens, no padding, random binary labels.

    Ids start at 3 so no special token (pad, bos, eos) appears: RoBERTa derives
    position ids from where the pad token is.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, seq), generator=gen)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    batch_ = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
    }
    return {k: v.to(device) for k, v in batch_.items()}


def make_step(engine: str, trainable: Any, device: str) -> Callable[[Any], None]:
    """One step of `engine` on a batch; the result is dropped."""
    from spry.classification import classification_loss
    from spry.engines import make_engine

    model = trainable.model
    if engine == "inference":

        def infer(batch: Any) -> None:
            with torch.no_grad():
                classification_loss(model, batch)

        return infer
    estimator = make_engine(engine)
    params = {trainable.own_name(n): p for n, p in trainable.parameters().items()}

    def estimate(batch: Any) -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        estimator.estimate(
            model, classification_loss, batch, params, generator=generator
        )

    return estimate


def release_free_memory(device: str) -> None:
    """Return freed memory to the OS/driver so the baseline holds only live memory."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    try:  # glibc keeps freed heap pages resident; the step could reuse them unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(step: Callable[[Any], None], batch: Any, device: str) -> float:
    """Wall seconds of one step."""
    start = time.perf_counter()
    step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_worker(args: argparse.Namespace) -> Record:
    """Build, warm up, measure one step, time a few more; one JSON-able record."""
    from spry.memory import track_peak_memory

    torch.set_num_threads(args.threads)
    trainable = build_model(args.model, args.depth, args.device)
    vocab = trainable.model.config.vocab_size
    step = make_step(args.engine, trainable, args.device)
    step(random_batch(vocab, 1, 8, device=args.device, seed=1))  # lazy allocations
    batch = random_batch(vocab, args.batch, args.seq, device=args.device)
    release_free_memory(args.device)
    with track_peak_memory(args.device) as report:
        step(batch)
    times = [timed(step, batch, args.device) for _ in range(args.timed_steps)]
    model = trainable.model
    return {
        "model": args.model,
        "engine": args.engine,
        "depth": model.config.num_hidden_layers,
        "batch": args.batch,
        "seq": args.seq,
        "weights": "random" if args.model == "roberta-large-shape" else "pretrained",
        "extra_mib": report.extra_bytes / MIB,
        "total_mib": report.peak_bytes / MIB,
        "baseline_mib": report.baseline_bytes / MIB,
        "exact": report.exact,
        "measured_step_seconds": report.seconds,
        "step_seconds": statistics.median(times) if times else None,
        "step_seconds_all": times,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable.parameters().values()),
        "device": args.device,
        "device_name": (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------ orchestration
def measure(model: str, engine: str, depth: int, args: argparse.Namespace) -> Record:
    """Run one worker in a fresh interpreter and parse its JSON line."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--worker",
        "--model",
        model,
        "--engine",
        engine,
        "--depth",
        str(depth),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--timed-steps",
        str(args.timed_steps),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {model}/{engine}/depth {depth} failed (rc {done.returncode}):\n"
            + done.stderr[-3000:]
        )
    return json.loads(lines[-1])


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, bool]]:
    """(model, engine, depth, part of the depth sweep) for every worker to run."""
    jobs = [(m, e, LARGE_DEPTH, False) for m in args.models for e in ENGINES]
    for depth in args.depths:
        if not (depth == LARGE_DEPTH and "roberta-large-shape" in args.models):
            jobs += [("roberta-large-shape", e, depth, True) for e in ENGINES]
    return jobs


def ratio(a: float | None, b: float | None) -> str:
    """`a / b` to two decimals, or a dash."""
    return f"{a / b:.2f}" if a is not None and b else "–"


def by_engine(records: Sequence[Record]) -> dict[str, Record]:
    """Engine name -> its record."""
    return {r["engine"]: r for r in records}


def markdown(main: Sequence[Record], sweep: Sequence[Record]) -> str:
    """The results tables and how they were measured."""
    r0 = (main or sweep)[0]
    out = [
        f"## Peak memory of one step (batch {r0['batch']}, seq {r0['seq']}, "
        f"device {r0['device']})",
        "",
        "| model | inference extra | forward extra | backprop extra | fwd/bp extra "
        "| fwd/bp total | step s fwd / bp |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in main):
        e = by_engine([r for r in main if r["model"] == model])
        inf, fwd, bp = e["inference"], e["forward"], e["backprop"]
        label = model + (" (random weights)" if fwd["weights"] == "random" else "")
        out.append(
            f"| {label} | {inf['extra_mib']:.0f} MiB | {fwd['extra_mib']:.0f} MiB "
            f"| {bp['extra_mib']:.0f} MiB | {ratio(fwd['extra_mib'], bp['extra_mib'])} "
            f"| {ratio(fwd['total_mib'], bp['total_mib'])} "
            f"| {fwd['step_seconds'] or 0:.2f} / {bp['step_seconds'] or 0:.2f} |"
        )
    out += [
        "",
        "| model | params total | params trainable | total MiB inf / fwd / bp |",
        "|---|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in main):
        e = by_engine([r for r in main if r["model"] == model])
        totals = " / ".join(f"{e[k]['total_mib']:.0f}" for k in ENGINES)
        f = e["forward"]
        out.append(
            f"| {model} | {f['params_total']:,} | {f['params_trainable']:,} | {totals} |"
        )
    if sweep:
        out += [
            "",
            "### Depth sweep, RoBERTa-large shape (random weights), extra MiB",
            "",
            "| layers | inference | forward | backprop | fwd/bp |",
            "|---:|---:|---:|---:|---:|",
        ]
        for depth in sorted({r["depth"] for r in sweep}):
            e = by_engine([r for r in sweep if r["depth"] == depth])
            inf, fwd, bp = (e[k]["extra_mib"] for k in ENGINES)
            out.append(
                f"| {depth} | {inf:.0f} | {fwd:.0f} | {bp:.0f} | {ratio(fwd, bp)} |"
            )
    out += ["", "**How measured.** " + HOW_MEASURED.format(**r0)]
    return "\n".join(out) + "\n"


HOW_MEASURED = (
    "Every number comes from its own fresh Python process (`python -m "
    "benchmarks.memory --worker`), so no engine inherits another's high-water mark or "
    "allocator state. A worker builds the model (LoRA r = 1 on query/value plus the "
    "trainable classifier head; all trainable tensors are differentiated), runs one "
    "tiny step of the same engine (batch 1, seq 8) so lazy allocations are done, "
    "returns freed memory to the OS, then measures one step on a batch of random "
    "token ids ({batch} x {seq}, attention mask all ones, random labels) with "
    "`spry.memory.track_peak_memory`: on CPU the RSS high-water mark (VmHWM after "
    "/proc/self/clear_refs), on CUDA `max_memory_allocated`. *Extra* is that peak "
    "minus the memory in use when the step began (weights included there), i.e. "
    "what the step itself needs; *total* is the absolute peak of the process. "
    "`inference` is a plain forward under `torch.no_grad()`, the floor; `forward` "
    "is Spry's forward-gradient engine (one tangent, `torch.func.jvp`); `backprop` "
    "is reverse mode. Step time is the median of further steps, timed apart from "
    "the memory measurement. The RoBERTa-large-shaped model has random weights: "
    "memory does not depend on weight values. torch {torch}, {threads} threads, "
    "{cpu_count} CPUs ({machine})."
)


def plot(main: Sequence[Record], sweep: Sequence[Record], path: Path) -> None:
    """Bars of extra MiB per engine per model; extra MiB vs depth if swept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if sweep else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    models = list(dict.fromkeys(r["model"] for r in main))
    width = 0.8 / len(ENGINES)
    for i, engine in enumerate(ENGINES):
        values = [
            by_engine([r for r in main if r["model"] == m])[engine]["extra_mib"]
            for m in models
        ]
        xs = [x + (i - 1) * width for x in range(len(models))]
        bars = ax.bar(xs, values, width, label=engine)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("extra peak memory (MiB)")
    ax.set_title("One step, memory above the model")
    ax.legend()
    if sweep:
        ax = axes[0][1]
        for engine in ENGINES:
            rows = sorted(
                (r for r in sweep if r["engine"] == engine), key=lambda r: r["depth"]
            )
            ax.plot(
                [r["depth"] for r in rows],
                [r["extra_mib"] for r in rows],
                marker="o",
                label=engine,
            )
        ax.set_xlabel("layers (RoBERTa-large shape, random weights)")
        ax.set_ylabel("extra peak memory (MiB)")
        ax.set_title("Extra memory vs depth")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_all(args: argparse.Namespace) -> str:
    """Run every worker, write memory.json/.md/.png, return the markdown."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    jobs = plan(args)
    main, sweep = [], []
    for i, (model, engine, depth, in_sweep) in enumerate(jobs, 1):
        start = time.perf_counter()
        record = measure(model, engine, depth, args)
        record["sweep"] = in_sweep
        (sweep if in_sweep else main).append(record)
        print(
            f"[{i}/{len(jobs)}] {model} depth {depth} {engine}: extra "
            f"{record['extra_mib']:.0f} MiB, total {record['total_mib']:.0f} MiB "
            f"({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
        )
    if (
        args.depths
        and "roberta-large-shape" in args.models
        and LARGE_DEPTH in args.depths
    ):
        sweep += [r for r in main if r["model"] == "roberta-large-shape"]
    args.out.mkdir(parents=True, exist_ok=True)
    records = main + [r for r in sweep if r["sweep"]]
    (args.out / "memory.json").write_text(json.dumps(records, indent=2) + "\n")
    text = markdown(main, sweep)
    (args.out / "memory.md").write_text(text)
    plot(main, sweep, args.out / "memory.png")
    return text


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for a comma-separated list."""
    return lambda text: [kind(t.strip()) for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        type=csv(str),
        default=list(MODELS),
        help=f"comma-separated, from {', '.join(MODELS)}",
    )
    p.add_argument(
        "--depths",
        type=csv(int),
        default=[],
        help="layer counts for a RoBERTa-large-shape depth sweep, e.g. 2,6,12,24",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument(
        "--timed-steps",
        type=int,
        default=3,
        help="steps timed after the measured one (median reported)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    worker = p.add_argument_group("worker (internal: one measurement, one JSON line)")
    worker.add_argument("--worker", action="store_true")
    worker.add_argument("--model", choices=MODELS)
    worker.add_argument("--engine", choices=ENGINES)
    worker.add_argument("--depth", type=int, default=LARGE_DEPTH)
    args = p.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {unknown}; available: {', '.join(MODELS)}")
    if args.worker and not (args.model and args.engine):
        p.error("--worker needs --model and --engine")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: orchestrate fresh-process workers, or be one."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)), flush=True)
        return
    print(run_all(args))


if __name__ == "__main__":
    main()
