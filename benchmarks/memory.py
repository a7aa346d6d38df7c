"""Peak memory of one training step: forward-mode vs backprop vs inference alone.

Spry's claim is that a forward-mode gradient needs about the memory of inference,
while backprop must keep activations for its backward pass. This measures one step
(the gradient estimate and nothing else) on the same model and batch for three
engines: `inference` (a plain forward under `torch.no_grad()`, the floor), and
`forward` and `backprop` from `spry.engines`.

*Extra* is the peak during the step minus the memory in use when it started
(weights, Python, torch): what the step needs on top of holding the model; the
absolute peak (*total*) is reported too. CPU: the resident-set high-water mark
(`spry.memory`: VmHWM after /proc/self/clear_refs); CUDA: `max_memory_allocated`.

On CPU each step is measured twice, in two processes. *RSS*: glibc as it comes; it
raises its mmap threshold as a process runs, after which tensors come from a heap
whose freed holes stay resident, so RSS can well exceed the live tensors (about 2x
for backprop here) and varies from run to run. *Live*: MALLOC_MMAP_THRESHOLD_=65536,
so every tensor is mmapped and leaves RSS when freed; the peak then tracks live
tensor bytes (like CUDA's number) and repeats to the MiB. The depth sweep uses live.

Each measurement runs in a fresh process (`--worker`, printing one JSON line): a
high-water mark, allocator state or lazily built kernels left by one engine would
otherwise leak into the next one's number. A worker builds the model, reads every
weight once (safetensors weights are mmapped and would otherwise fault into RSS
during the step), runs one tiny step (batch 1, seq 8) of the same engine for lazy
allocations, measures one step on random token ids (no padding, attention mask all
ones, random labels), then times further steps apart from the memory measurement.

"roberta-large-shape" is RoBERTa-large's shape with *random* weights (memory does not
depend on weight values); `--depths` sweeps its number of layers.

    python -m benchmarks.memory                       # both models, depths 2,6,24
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
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("minilm", "roberta-large-shape")
ENGINES = ("inference", "forward", "backprop")
LARGE = "roberta-large-shape"
LARGE_DEPTH = 24  # RoBERTa-large's number of layers
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: mmap every tensor >= 64 KiB
MIB = 2**20
Record = dict[str, Any]
Batch = dict[str, torch.Tensor]


class Job(NamedTuple):
    """One worker process to run."""

    model: str
    engine: str
    depth: int
    sweep: bool  # part of the depth sweep (memory only, not timed)
    live: bool  # CPU allocator pinned so RSS tracks live tensors


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


def random_batch(vocab: int, batch: int, seq: int, *, device: str, seed: int) -> Batch:
    """Make random ids of exactly `seq` tokens (no padding) and binary labels.

    Ids start at 3, so no special token appears (RoBERTa derives position ids from
    where its pad token is).
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    labels = torch.randint(0, 2, (batch,), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def make_step(engine: str, trainable: Any, device: str) -> Callable[[Batch], None]:
    """Return one step of `engine` on a batch (its result is dropped)."""
    from spry.classification import classification_loss
    from spry.engines import make_engine

    model = trainable.model
    if engine == "inference":

        @torch.no_grad()
        def infer(batch: Batch) -> None:
            classification_loss(model, batch)

        return infer
    estimator = make_engine(engine)
    params = {trainable.own_name(n): p for n, p in trainable.parameters().items()}

    def estimate(batch: Batch) -> None:
        gen = torch.Generator(device=device).manual_seed(0)  # on the params' device
        estimator.estimate(model, classification_loss, batch, params, generator=gen)

    return estimate


def make_resident(model: torch.nn.Module) -> None:
    """Read every weight once, so all of it is resident before the baseline is taken.

    safetensors weights are mmapped from the file and enter RSS only when touched:
    the warm-up touches each matrix but few embedding rows, so the measured step
    would otherwise fault in most of the embedding (about 36 MiB for MiniLM).
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()


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


def timed(step: Callable[[Batch], None], batch: Batch, device: str) -> float:
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
    make_resident(model)
    step = make_step(args.engine, trainable, dev)
    step(random_batch(model.config.vocab_size, 1, 8, device=dev, seed=1))  # warm-up
    batch = random_batch(
        model.config.vocab_size, args.batch, args.seq, device=dev, seed=0
    )
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
        "live": cuda or all(os.environ.get(k) == v for k, v in LIVE_ENV.items()),
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
        "load_average_1min": os.getloadavg()[0],  # other work skews step times
    }


# ------------------------------------------------------------------ orchestration
def measure(job: Job, args: argparse.Namespace) -> Record:
    """Run one worker in a fresh interpreter; return its record."""
    options = {
        "model": job.model,
        "engine": job.engine,
        "depth": job.depth,
        "batch": args.batch,
        "seq": args.seq,
        "device": args.device,
        "threads": args.threads,
        "timed-steps": 0 if job.sweep or job.live else args.timed_steps,
    }
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker"]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.update(LIVE_ENV if job.live else {})
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {job} failed (rc {done.returncode}):\n" + done.stderr[-3000:]
        )
    return {**json.loads(lines[-1]), "sweep": job.sweep}


def plan(args: argparse.Namespace) -> list[Job]:
    """List every worker to run (CUDA's allocated bytes are live already)."""
    cpu = not args.device.startswith("cuda")
    kinds = (False, True) if cpu else (False,)
    jobs = [
        Job(m, e, LARGE_DEPTH, False, live)
        for m in args.models
        for live in kinds
        for e in ENGINES
    ]
    for depth in args.depths:  # depth 24 comes from the main run when that ran
        if depth != LARGE_DEPTH or LARGE not in args.models:
            jobs += [Job(LARGE, e, depth, True, cpu) for e in ENGINES]
    return jobs


def table(records: Sequence[Record], key: str, **where: Any) -> dict[Any, Record]:
    """Map r[key] -> {engine: r} over the records matching `where`, first seen first."""
    out: dict[Any, Record] = {}
    for r in records:
        if all(r[k] == v for k, v in where.items()):
            out.setdefault(r[key], {})[r["engine"]] = r
    return out


def ratio(a: float | None, b: float | None) -> str:
    """Format a / b to two decimals, or a dash."""
    return f"{a / b:.2f}" if a is not None and b else "–"


def secs(x: float | None) -> str:
    """Format seconds, or a dash when not timed."""
    return "–" if x is None else f"{x:.2f}"


def mib(e: Record, key: str = "extra_mib") -> list[str]:
    """Format `key` of the inference, forward and backprop records."""
    return [f"{e[k][key]:.0f}" for k in ENGINES]


def markdown(records: Sequence[Record], sweep: dict[Any, Record]) -> str:
    """Write the results tables and how they were measured."""
    r0 = records[0]
    rss = table(records, "model", sweep=False, live=r0["device"].startswith("cuda"))
    live = table(records, "model", sweep=False, live=True)
    out = [
        f"## Peak memory of one step (batch {r0['batch']}, seq {r0['seq']}, "
        f"{r0['device']}), MiB above the loaded model",
        "",
        "| model | inference extra | forward extra | backprop extra | fwd/bp extra "
        "| fwd/bp total | step s fwd / bp | live extra inf / fwd / bp | live fwd/bp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, e in rss.items():
        fwd, bp = e["forward"], e["backprop"]
        lv = live.get(model, e)
        label = model + (" (random weights)" if fwd["weights"] == "random" else "")
        times = " / ".join(secs(e[k]["step_seconds"]) for k in ENGINES[1:])
        out.append(
            f"| {label} | {' | '.join(mib(e))} "
            f"| {ratio(fwd['extra_mib'], bp['extra_mib'])} "
            f"| {ratio(fwd['total_mib'], bp['total_mib'])} | {times} "
            f"| {' / '.join(mib(lv))} "
            f"| {ratio(lv['forward']['extra_mib'], lv['backprop']['extra_mib'])} |"
        )
    out += [
        "",
        "| model | params | trainable | total MiB inference / forward / backprop |",
    ]
    out += ["|---|---:|---:|---:|"]
    for model, e in rss.items():
        f = e["forward"]
        out.append(
            f"| {model} | {f['params_total']:,} | {f['params_trainable']:,} "
            f"| {' / '.join(mib(e, 'total_mib'))} |"
        )
    if sweep:
        out += [
            "",
            "### Depth sweep: RoBERTa-large shape (random weights), live extra MiB",
        ]
        out += ["", "| layers | inference | forward | backprop | fwd/bp |"]
        out += ["|---:|---:|---:|---:|---:|"]
        for depth, e in sweep.items():
            fwd_bp = ratio(e["forward"]["extra_mib"], e["backprop"]["extra_mib"])
            out.append(f"| {depth} | {' | '.join(mib(e))} | {fwd_bp} |")
    if not all(r["exact"] for r in records):
        out += [
            "",
            "**Warning:** the RSS high-water mark could not be reset here "
            "(/proc/self/clear_refs), so some peaks may predate the step.",
        ]
    out += ["", how_measured(r0)]
    return "\n".join(out) + "\n"


def how_measured(r: Record) -> str:
    """Say how the numbers were measured: the module docstring, plus the machine."""
    prose = " ".join(p.replace("\n", " ") for p in (__doc__ or "").split("\n\n")[2:6])
    return (
        f"**How measured.** {prose} Step time is the median of further steps "
        f"(`--timed-steps`, default 3). torch {r['torch']}, {r['threads']} threads, "
        f"{r['cpu_count']} CPUs, {r['machine']}."
    )


def plot(records: Sequence[Record], sweep: dict[Any, Record], path: Path) -> None:
    """Save bars of extra MiB per engine per model, and extra MiB vs depth if swept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 6, 4.5))
    ax = axes[0] if sweep else axes
    cuda = records[0]["device"].startswith("cuda")
    kinds = (False,) if cuda else (False, True)  # CPU: RSS bar, then live bar
    width = 0.8 / (len(ENGINES) * len(kinds))
    for j, live in enumerate(kinds):
        by_model = table(records, "model", sweep=False, live=live or cuda)
        for i, engine in enumerate(ENGINES):
            offset = (i * len(kinds) + j + 0.5) * width - 0.4
            ys = [e[engine]["extra_mib"] for e in by_model.values()]
            label = engine + (" (live tensors)" if live else "")
            bars = ax.bar(
                [x + offset for x in range(len(ys))],
                ys,
                width,
                label=label,
                color=f"C{i}",
                hatch="//" if live else "",
                alpha=0.9 - 0.4 * j,
            )
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(by_model)), list(by_model))
    ax.set(
        ylabel="extra peak memory (MiB, log)", title="One step, memory above the model"
    )
    ax.legend(fontsize=8)
    if sweep:
        for i, engine in enumerate(ENGINES):
            ys = [e[engine]["extra_mib"] for e in sweep.values()]
            axes[1].plot(list(sweep), ys, marker="o", color=f"C{i}", label=engine)
        axes[1].set(
            xlabel="layers (RoBERTa-large shape, random weights)",
            ylabel="live extra peak memory (MiB)",
            title="Extra memory vs depth",
        )
        axes[1].set_ylim(bottom=0)
        axes[1].legend(fontsize=8)
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
            f"[{i}/{len(jobs)}] {r['model']} ({r['depth']} layers) {r['engine']}"
            f"{' live' if job.live else ''}: extra {r['extra_mib']:.0f} MiB, total "
            f"{r['total_mib']:.0f} MiB ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
        )
    swept = [r for r in records if r["model"] == LARGE and r["depth"] in args.depths]
    sweep = dict(sorted(table(swept, "depth", live=True).items()))  # live on CPU
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.out / "memory.md").write_text(text := markdown(records, sweep))
    plot(records, sweep, args.out / "memory.png")
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
    add("--depths", type=ints, default=[2, 6, 24], help="RoBERTa layers to sweep")
    add("--batch", type=int, default=8)
    add("--seq", type=int, default=128)
    add("--device", default="cpu", help="cpu or cuda[:N]")
    add("--threads", type=int, default=2, help="torch.set_num_threads")
    add("--timed-steps", type=int, default=3, help="steps timed after the measured one")
    add("--out", type=Path, default=RESULTS, help="results folder")
    add("--worker", action="store_true", help="internal: one measurement, one line")
    add("--model", choices=MODELS, help="worker's model")
    add("--engine", choices=ENGINES, help="worker's engine")
    add("--depth", type=int, default=LARGE_DEPTH, help="worker's RoBERTa layers")
    args = p.parse_args(argv)
    if unknown := sorted(set(args.models) - set(MODELS)):
        p.error(f"unknown model(s) {unknown}; available: {', '.join(MODELS)}")
    if args.worker and not (args.model and args.engine):
        p.error("--worker needs --model and --engine")
    if not args.worker and not args.models:
        p.error("give at least one model in --models")
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
