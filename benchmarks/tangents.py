"""Time and memory of K tangents: one jvp per tangent versus one vmapped pass.

`torch.func.vmap` over `torch.func.jvp` carries K tangents through one forward pass:
the primal computation runs once and only the tangent computation is batched, from
the first perturbed layer upwards. This measures what that buys, per estimate, on the
offline default (all-MiniLM-L6-v2 + LoRA r = 1 on query/value, batch 8 of 64 random
tokens), for three slices: the LoRA pair of layer 0 (tangents run through all six
layers), the pair of layer 5 (through one), and the task head (through the head
alone; K = its 770 weights with the standard basis is the exact head gradient,
`head-gradient=exact`). "tuned" is the default client's estimate at its most
expensive: layer 0's pair with K = 1 tangent plus the exact head riding in the same
pass. References: inference alone and backprop over every trainable tensor.

Each point runs in a fresh process (`--worker`) with glibc told to mmap every tensor
(`benchmarks.memory.LIVE_ENV`), so the extra peak tracks live tensor bytes; time is
the median of `--timed-steps` estimates after a warm-up.

    python -m benchmarks.tangents                          # ~5 minutes on 2 cores
    python -m benchmarks.tangents --tangents 1,8 --slices layer-5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.memory.models import CLASSIFIER, bench_model
from benchmarks.memory.worker import random_batch as _random_batch
from benchmarks.memory.worker import timed
from spry.jsonfile import write_json
from spry.memory import LIVE_ENV, make_resident, release_free_memory


def random_batch(vocab: int, batch: int, seq: int, *, device: str, seed: int):
    """Random ids and binary labels, as the memory suite makes them."""
    return _random_batch(CLASSIFIER, vocab, batch, seq, device=device, seed=seed)


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SLICES = ("layer-0", "layer-5", "head")
MODES = ("loop", "vmap")
MIB = 2**20
Record = dict[str, Any]


def slice_names(trainable: Any, name: str) -> list[str]:
    """Stable names of a slice: a layer's query LoRA pair, or the head."""
    from spry.models import is_head

    if name == "head":
        return [n for n in trainable.names if is_head(n)]
    if name == "tuned":
        return slice_names(trainable, "layer-0") + slice_names(trainable, "head")
    layer = f".layer.{name.split('-')[1]}.attention.self.query."
    return [n for n in trainable.names if layer in n]


def run_worker(args: argparse.Namespace) -> Record:
    from spry.classification import classification_loss
    from spry.engines import make_engine
    from spry.memory import track_peak_memory
    from spry.models import is_head

    torch.set_num_threads(args.threads)
    trainable = bench_model("minilm").build("float32", "cpu")
    model = trainable.model
    make_resident(model)
    live = trainable.parameters()
    if args.mode in ("inference", "backprop"):
        names = list(trainable.names)
    else:
        names = slice_names(trainable, args.slice)
    params = {trainable.own_name(n): live[n] for n in names}
    gen = torch.Generator().manual_seed(0)
    if args.mode == "inference":

        @torch.no_grad()
        def step(batch: Any) -> None:
            classification_loss(model, batch)

    else:
        if args.mode == "backprop":
            engine = make_engine("backprop")
        else:
            exact = args.slice == "tuned" or (
                args.slice == "head" and args.tangents == 0
            )
            engine = make_engine(
                "forward",
                num_tangents=max(args.tangents, 1),
                tangent_batch=1 if args.mode == "loop" else 0,
                exact=is_head if exact else None,
            )

        def step(batch: Any) -> None:
            engine.estimate(model, classification_loss, batch, params, generator=gen)

    vocab = model.config.vocab_size
    step(random_batch(vocab, 1, 8, device="cpu", seed=1))  # lazy allocations
    batch = random_batch(vocab, args.batch, args.seq, device="cpu", seed=0)
    release_free_memory("cpu")
    with track_peak_memory("cpu") as report:
        step(batch)
    times = [timed(step, batch, "cpu") for _ in range(args.timed_steps)]
    return {
        "mode": args.mode,
        "slice": args.slice if args.mode in MODES else "all",
        "tangents": args.tangents,
        "slice_size": sum(p.numel() for p in params.values()),
        "extra_mib": report.extra_bytes / MIB,
        "step_seconds": statistics.median(times),
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "load_average_1min": os.getloadavg()[0],
    }


def measure(options: dict[str, Any]) -> Record:
    cmd = [sys.executable, "-m", "benchmarks.tangents", "--worker"]
    for key, value in options.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **LIVE_ENV}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {options} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    common = {"batch": args.batch, "seq": args.seq, "threads": args.threads,
              "timed-steps": args.timed_steps}  # fmt: skip
    jobs = [{**common, "mode": m, "slice": "all", "tangents": 0}
            for m in ("inference", "backprop")]  # fmt: skip
    for name in args.slices:
        for k in args.tangents:
            for mode in MODES:
                if mode == "loop" and k > args.max_loop:
                    continue  # K passes of the whole upper network: minutes, known
                jobs.append({**common, "mode": mode, "slice": name, "tangents": k})
        if name == "head":
            jobs.append({**common, "mode": "vmap", "slice": name, "tangents": 0})
    jobs.append({**common, "mode": "vmap", "slice": "tuned", "tangents": 1})
    return jobs


def _label(r: Record) -> str:
    if r["mode"] in ("inference", "backprop"):
        return r["mode"]
    if r["slice"] == "tuned":
        return "tuned: layer-0 K=1 + exact head, one pass"
    k = "exact (basis, 770)" if r["tangents"] == 0 else str(r["tangents"])
    return f"{r['slice']} K={k} {r['mode']}"


def markdown(records: Sequence[Record]) -> str:
    ref = {r["mode"]: r for r in records if r["mode"] in ("inference", "backprop")}
    bp = ref.get("backprop")
    lines = [
        "## K tangents per estimate: one jvp each (loop) vs one vmapped pass",
        "",
        f"all-MiniLM-L6-v2 + LoRA r = 1, batch {records[0]['batch']} x "
        f"{records[0]['seq']} random tokens, {records[0]['threads']} thread(s), "
        f"torch {records[0]['torch']}, {records[0]['machine']}. Each row is a "
        "fresh process; extra = peak RSS above the loaded model (every tensor "
        "mmapped, so it tracks live bytes); time = median step.",
        "",
        "| estimate | slice weights | extra peak MiB | step ms | ms per tangent "
        "| time / backprop's |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        k = r["tangents"] or (r["slice_size"] if r["slice"] == "head" else 0)
        k = 0 if r["slice"] == "tuned" else k
        per = f"{1000 * r['step_seconds'] / k:.1f}" if k else "-"
        ratio = f"{r['step_seconds'] / bp['step_seconds']:.2f}" if bp else "-"
        lines.append(
            f"| {_label(r)} | {r['slice_size']} | {r['extra_mib']:.1f} "
            f"| {1000 * r['step_seconds']:.0f} | {per} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: Sequence[Record], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (clock, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for name in SLICES:
        for mode, style in (("loop", "o--"), ("vmap", "s-")):
            rows = sorted(
                (r for r in records
                 if r["slice"] == name and r["mode"] == mode and r["tangents"]),
                key=lambda r: r["tangents"],
            )  # fmt: skip
            if not rows:
                continue
            ks = [r["tangents"] for r in rows]
            label = f"{name} {mode}"
            clock.plot(ks, [1000 * r["step_seconds"] for r in rows], style, label=label)
            memory.plot(ks, [r["extra_mib"] for r in rows], style, label=label)
    for r in records:
        if r["mode"] in ("inference", "backprop"):
            clock.axhline(1000 * r["step_seconds"], ls=":", color="grey")
            clock.annotate(r["mode"], (1, 1000 * r["step_seconds"]), fontsize=7)
            memory.axhline(r["extra_mib"], ls=":", color="grey")
            memory.annotate(r["mode"], (1, r["extra_mib"]), fontsize=7)
    for axis, ylabel in ((clock, "ms per estimate"), (memory, "extra peak MiB")):
        axis.set(xscale="log", yscale="log", xlabel="K tangents", ylabel=ylabel)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="vmap")
    p.add_argument("--slice", default="layer-5")
    p.add_argument("--slices", type=lambda t: t.split(","), default=list(SLICES))
    p.add_argument("--tangents", default="1,4,16,64")
    p.add_argument("--max-loop", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timed-steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.worker:
        args.tangents = int(args.tangents)
    else:
        args.tangents = ints(args.tangents)
        unknown = set(args.slices) - set(SLICES)
        if unknown:
            p.error(f"unknown slices {sorted(unknown)}; known: {', '.join(SLICES)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records = []
    for job in plan(args):
        records.append(measure(job))
        print(f"[tangents] {_label(records[-1])}: "
              f"{1000 * records[-1]['step_seconds']:.0f} ms, "
              f"{records[-1]['extra_mib']:.1f} MiB", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "tangents.json", records)
    report = markdown(records)
    (args.out / "tangents.md").write_text(report)
    plot(records, args.out / "tangents.png")
    print(report)


if __name__ == "__main__":
    main()
