"""Which points a suite measures, and running each in a fresh process.

Per model: a sequence-length sweep at batch 8 and a batch-size sweep at the main
sequence length, every engine; the main point again with frozen weights in each
extra dtype; causal LMs also without the chunked loss. On CPU every point runs with
the live allocator (`spry.memory.LIVE_ENV`, the memory figures), and the points whose
step time is wanted run again with glibc as it comes (timing, and RSS as a user sees
it), since mmapping every tensor slows allocation-heavy engines more than others.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from spry.jsonfile import write_json
from spry.memory import LIVE_ENV
from spry.models.quantized import SCHEMES

from .models import CAUSAL_LM, CLASSIFIER, bench_model
from .worker import ENGINES, Point, Record

ROOT = Path(__file__).resolve().parents[2]
MAIN_BATCH = 8
DEFAULT_CHUNK = 128  # causal LMs: positions per chunk of the loss


@dataclass(frozen=True)
class ModelSweep:
    """What to measure for one model."""

    model: str
    seqs: tuple[int, ...] = (64, 128, 256, 512)
    batches: tuple[int, ...] = (1, 4, 8, 16, 32)
    dtypes: tuple[str, ...] = ()  # besides float32, at the main point
    timed_seqs: tuple[int, ...] | None = None  # None: every seq of the sweep
    main_seq: int = 128
    engines: tuple[str, ...] = ENGINES
    dtype: str = "float32"  # of every point but the `dtypes` ones
    unchunked: bool = True  # causal LMs: also measure the loss over all logits


@dataclass(frozen=True)
class Suite:
    """Sweeps per model, how many steps a timed point times, and a note.

    With `timed_steps` 0 no point runs again for timing: the measured step's own
    wall time (live allocator) is the only time there is.
    """

    sweeps: tuple[ModelSweep, ...]
    timed_steps: int = 3
    note: str = ""
    extra: tuple[Point, ...] = field(default=())


SUITES: dict[str, Suite] = {
    # The published CPU report (benchmarks/results/memory.md), about an hour on 2 cores.
    "cpu": Suite(
        (
            ModelSweep("minilm", dtypes=("bfloat16", *SCHEMES)),
            ModelSweep(
                "smollm2-135m",
                seqs=(64, 128, 256),
                batches=(1, 4, 8, 16),
                dtypes=("bfloat16", *SCHEMES),
                main_seq=64,
            ),  # fmt: skip
            ModelSweep("bert-base-shape", batches=(), timed_seqs=(64, 128, 256)),
            ModelSweep(
                "roberta-large-shape",
                seqs=(64, 128, 256),
                batches=(1, 4, 8),
                dtypes=("bfloat16",),
                timed_seqs=(128,),
            ),  # fmt: skip
        ),
        note="2-core CPU: SmolLM2 and RoBERTa-large stop at 256 tokens; no 1B models",
    ),
    # The same and the 1B-class shapes, on one GPU (benchmarks/cuda_suite.sh).
    "cuda": Suite(
        (
            ModelSweep("minilm", dtypes=("bfloat16",)),
            ModelSweep("smollm2-135m", dtypes=("bfloat16",), main_seq=64),
            ModelSweep("bert-base-shape", dtypes=("bfloat16",)),
            ModelSweep("roberta-large-shape", dtypes=("bfloat16",)),
            ModelSweep(
                "opt-1.3b-shape",
                seqs=(64, 128, 256, 512),
                batches=(1, 8),
                dtypes=("bfloat16",),
                main_seq=128,
            ),  # fmt: skip
            ModelSweep(
                "llama-1b-shape",
                seqs=(64, 128, 256, 512),
                batches=(1, 8),
                dtypes=("bfloat16",),
                main_seq=128,
            ),  # fmt: skip
        ),
        timed_steps=5,
    ),
    # Llama-2-7B's shape with 4-bit (NF4) frozen weights, built in that form, at
    # the point the Spry paper reports (6.2 GB Spry, 33.9 GB backprop). Steps take
    # minutes on 2 cores: one measured step per engine, no timing reruns.
    "7b": Suite(
        (
            ModelSweep(
                "llama2-7b-shape",
                seqs=(64,),
                batches=(),
                dtype="nf4",
                main_seq=64,
                engines=("inference", "spry", "mezo", "backprop-checkpoint"),
                unchunked=False,
            ),  # fmt: skip
        ),
        timed_steps=0,
        note="one measured step per engine; step time of that step",
    ),
    # A few minutes: MiniLM's main point and one longer sequence.
    "quick": Suite((ModelSweep("minilm", seqs=(128, 256), batches=()),)),
    # The fused tangent rules, before (spry-unfused) and after, at each model's main
    # point, every engine timed: about 40 minutes on 2 cores.
    "fused": Suite(
        tuple(
            ModelSweep(
                model,
                seqs=(seq,),
                batches=(),
                main_seq=seq,
                engines=(*ENGINES, "spry-unfused"),
            )
            for model, seq in (
                ("minilm", 128),
                ("smollm2-135m", 64),
                ("bert-base-shape", 128),
                ("roberta-large-shape", 128),
            )
        ),  # fmt: skip
        note="main points only; spry-unfused: PyTorch's per-operator forward-AD rules",
    ),
    # The fused rules' block budget (`fused-block-mib`): 2 MiB (spry, the default),
    # 8 and 32 MiB, against backprop, at the encoders' main points, every point
    # timed: about 30 minutes on 2 cores. Time it on a quiet machine.
    "blocks": Suite(
        tuple(
            ModelSweep(
                model,
                seqs=(128,),
                batches=(),
                main_seq=128,
                engines=("inference", "backprop", "spry", "spry-b8", "spry-b32"),
            )
            for model in ("minilm", "bert-base-shape", "roberta-large-shape")
        ),  # fmt: skip
        timed_steps=5,
        note="main points only; spry-bN: the fused rules' blocks at N MiB",
    ),
}


def plan(suite: Suite, *, device: str = "cpu", threads: int = 2) -> list[Point]:
    """Every point of `suite`, without repeats, in the order they will run."""
    cpu = not device.startswith("cuda")
    points: list[Point] = []
    base = {"device": device, "threads": threads}
    for sweep in suite.sweeps:
        causal = bench_model(sweep.model).kind == CAUSAL_LM
        chunk = DEFAULT_CHUNK if causal else 0
        timed_seqs = sweep.seqs if sweep.timed_seqs is None else sweep.timed_seqs

        def add(
            batch: int, seq: int, *, timed: bool, sweep=sweep, chunk=chunk, **kw
        ) -> None:
            kw = {"chunk": chunk, "dtype": sweep.dtype, **base, **kw}
            for engine in sweep.engines:
                p = Point(sweep.model, engine, batch, seq, **kw)
                if cpu:  # memory with the live allocator; timing with glibc's
                    points.append(p)
                    if timed and suite.timed_steps:
                        points.append(
                            replace(p, allocator="glibc", timed=suite.timed_steps)
                        )
                else:  # CUDA's allocated bytes are live already: one process
                    points.append(replace(p, allocator="cuda", timed=suite.timed_steps))

        add(MAIN_BATCH, sweep.main_seq, timed=True)  # the main point, always
        for seq in sweep.seqs:
            add(MAIN_BATCH, seq, timed=seq in timed_seqs)
        for batch in sweep.batches:
            add(batch, sweep.main_seq, timed=False)
        for dtype in sweep.dtypes:
            add(MAIN_BATCH, sweep.main_seq, timed=True, dtype=dtype)
        if causal and sweep.unchunked:  # what chunking the loss saves
            for seq in sorted({sweep.main_seq, *sweep.seqs[:2]}):
                add(MAIN_BATCH, seq, timed=False, chunk=0)
    points += suite.extra
    return list({p.key(): p for p in points}.values())


def custom_suite(
    models: Sequence[str],
    *,
    seqs: Sequence[int],
    batches: Sequence[int],
    dtypes: Sequence[str],
    engines: Sequence[str],
    timed_steps: int,
) -> Suite:
    """A suite from the command line's lists (the same sweep for every model)."""
    sweeps = tuple(
        ModelSweep(
            m,
            seqs=tuple(seqs),
            batches=tuple(batches),
            dtypes=tuple(dtypes),
            engines=tuple(engines),
            main_seq=128 if bench_model(m).kind == CLASSIFIER else 64,
        )  # fmt: skip
        for m in models
    )
    return Suite(sweeps, timed_steps=timed_steps)


def measure(point: Point, *, timeout: float | None = None) -> Record:
    """Run `point` in a fresh interpreter; its record, or one saying why it failed."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    for key in LIVE_ENV:
        env.pop(key, None)
    if point.allocator == "live":
        env.update(LIVE_ENV)
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", json.dumps(
        point.__dict__)]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**point.__dict__, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else (
            done.stderr.strip().splitlines() or ["no output"])[-1]  # fmt: skip
        return {**point.__dict__, "error": f"rc {done.returncode}: {why}"}
    return json.loads(lines[-1])


def run_points(
    points: Sequence[Point],
    *,
    results: Path,
    reuse: Iterable[Record] = (),
    timeout: float | None = None,
) -> list[Record]:
    """Measure every point not already in `reuse`, saving all records after each.

    Progress goes to stderr; `results` (JSON) always holds what has been measured,
    so an interrupted suite resumes where it stopped (`--resume`). Reused records
    of points outside `points` are kept too: one results file can grow over
    several runs with different `--models`.
    """
    done = {Point(**{k: r[k] for k in Point.__dataclass_fields__}).key(): r
            for r in reuse if "error" not in r}  # fmt: skip
    planned = {p.key() for p in points}
    records = [done[p.key()] for p in points if p.key() in done]
    records += [r for key, r in done.items() if key not in planned]
    todo = [p for p in points if p.key() not in done]
    started = time.perf_counter()
    for i, point in enumerate(todo, 1):
        record = measure(point, timeout=timeout)
        records.append(record)
        write_json(results, records, indent=1)
        elapsed = time.perf_counter() - started
        eta = elapsed / i * (len(todo) - i)
        what = (
            f"error: {record['error']}" if "error" in record else
            f"extra {record['extra_mib']:.0f} MiB, total {record['total_mib']:.0f} MiB"
            + (f", step {record['step_seconds']:.2f} s"
               if record.get("step_seconds") else "")
        )  # fmt: skip
        print(
            f"[{i}/{len(todo)}] {point.model} {point.engine} b{point.batch} "
            f"s{point.seq} {point.dtype}{f' chunk={point.chunk}' * bool(point.chunk)} "
            f"{point.allocator}: {what}  ({elapsed:.0f} s, ETA {eta:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return records
