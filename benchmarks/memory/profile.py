"""Where a step's time goes, per engine: torch.profiler's operator times, grouped.

Forward mode and backprop do the same matrix products for LoRA fine-tuning (backprop
computes no gradient for a frozen weight, only for its input), so a gap in step time
comes from the rest: elementwise tangent arithmetic, copies, and the per-operator cost
of the torch.func layers. This profiles one step per engine after two warm-up steps,
in one process per engine, and groups the operators' own (self) CPU time.

    python -m benchmarks.memory.profile --model minilm --seq 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .suite import ROOT

GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "copies": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"),
    "elementwise": (
        "aten::mul",
        "aten::add",
        "aten::sub",
        "aten::div",
        "aten::add_",
        "aten::mul_",
        "aten::neg",
        "aten::exp",
        "aten::where",
        "aten::sum",
        "prims::mul",
        "prims::add",
        "prims::sub",
        "prims::div",
        "aten::rsub",
    ),  # fmt: skip
}


def profile_engine(model: str, engine: str, batch: int, seq: int) -> dict:
    """One step of `engine` under torch.profiler: milliseconds per operator group."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .models import CAUSAL_LM, bench_model
    from .worker import Point, make_step, random_batch

    torch.set_num_threads(2)
    bench = bench_model(model)
    trainable = bench.build("float32", "cpu")
    chunk = 128 if bench.kind == CAUSAL_LM else 0
    step, _, _ = make_step(Point(model, engine, batch, seq, chunk=chunk), bench,
                           trainable)  # fmt: skip
    data = random_batch(bench.kind, trainable.model.config.vocab_size, batch, seq,
                        device="cpu", seed=0)  # fmt: skip
    step(data)
    step(data)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(data)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    groups = dict.fromkeys(GROUPS, 0.0)
    for e in events:
        for group, names in GROUPS.items():
            if e.key in names:
                groups[group] += e.self_cpu_time_total / 1e3
    calls = sum(e.count for e in events if e.key.startswith(("aten::", "prims::")))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "engine": engine,
        "total_ms": total,
        **{f"{g}_ms": v for g, v in groups.items()},
        "other_ms": total - sum(groups.values()),
        "operator_calls": calls,
        "top": [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in top],
    }


def markdown(model: str, batch: int, seq: int, rows: list[dict]) -> str:
    bp = next((r for r in rows if r["engine"] == "backprop"), None)
    cols = [*(f"{g}_ms" for g in GROUPS), "other_ms", "total_ms"]
    out = [
        f"## Where the time of one step goes: {model}, batch {batch}, {seq} tokens",
        "",
        "Self CPU time per operator group, ms (torch.profiler, one step after two "
        "warm-up steps, 2 threads; the profiler adds its own overhead, so totals "
        "exceed an unprofiled step).",
        "",
        "| engine | " + " | ".join(c[:-3] for c in cols) + " | operator calls "
        "| total ÷ backprop |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for r in rows:
        cells = " | ".join(f"{r[c]:.0f}" for c in cols)
        vs = f"{r['total_ms'] / bp['total_ms']:.2f}" if bp else "–"
        out.append(f"| {r['engine']} | {cells} | {r['operator_calls']} | {vs} |")
    out += ["", "Largest operators (self ms, calls):", ""]
    for r in rows:
        ops = ", ".join(f"{k} {ms:.0f} ({n})" for k, ms, n in r["top"][:6])
        out.append(f"- {r['engine']}: {ops}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory.profile",
                                description=__doc__)  # fmt: skip
    p.add_argument("--model", default="minilm")
    p.add_argument("--engines", default="inference,backprop,spry,fedfgd")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--worker", help="internal: profile this engine, print JSON")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(profile_engine(args.model, args.worker, args.batch, args.seq)))
        return
    rows = []
    for engine in args.engines.split(","):
        cmd = [sys.executable, "-m", "benchmarks.memory.profile", "--worker", engine,
               "--model", args.model, "--batch", str(args.batch), "--seq",
               str(args.seq)]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode or not lines:
            raise SystemExit(f"profiling {engine} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(lines[-1]))
        print(f"profiled {engine}: {rows[-1]['total_ms']:.0f} ms", file=sys.stderr)
    text = markdown(args.model, args.batch, args.seq, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_{args.model}_b{args.batch}_s{args.seq}"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
