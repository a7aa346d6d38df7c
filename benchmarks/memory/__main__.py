"""Command line of the memory suite (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __doc__ as DOC
from .models import CLASSIFIER, MODELS, bench_model
from .report import write_all
from .suite import ROOT, SUITES, custom_suite, plan, run_points
from .worker import ENGINES, LEVER_ENGINES

RESULTS = ROOT / "benchmarks" / "results"


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in _list(text)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.memory", description=DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add = p.add_argument
    add("--suite", choices=sorted(SUITES), help="a prepared suite (default: cpu)")
    add("--models", type=_list, help=f"instead of a suite: {', '.join(MODELS)}, "
        "hf:NAME_OR_PATH, random:NAME_OR_PATH")  # fmt: skip
    add(
        "--engines",
        type=_list,
        default=list(ENGINES),
        help=", ".join(ENGINES) + "; on request: " + ", ".join(LEVER_ENGINES),
    )
    add("--seqs", type=_ints, default=[64, 128, 256, 512], help="with --models")
    add("--batches", type=_ints, default=[1, 4, 8, 16, 32], help="with --models")
    add("--dtypes", type=_list, default=[], help="extra frozen dtypes, e.g. bfloat16")
    add("--device", default="cpu", help="cpu or cuda[:N]")
    add("--threads", type=int, default=2, help="torch threads per worker")
    add("--timed-steps", type=int, default=3, help="steps timed per timed point")
    add("--timeout", type=float, default=1800, help="seconds per point")
    add("--out", type=Path, default=RESULTS, help="results folder")
    add("--stem", default="memory", help="file names: STEM.json, STEM.md, ...")
    add("--resume", action="store_true", help="keep points already in STEM.json")
    add("--report-only", action="store_true", help="rewrite the report from STEM.json")
    add("--no-agreement", action="store_true", help="skip the low-precision check")
    add("--agreement-only", action="store_true", help="add the low-precision checks "
        "missing from STEM.json, measure no point, rewrite the report")  # fmt: skip
    add("--list", action="store_true", help="print the points and stop")
    add("--worker", metavar="POINT_JSON", help="internal: measure one point")
    args = p.parse_args(argv)
    if args.suite and args.models:
        p.error("give --suite or --models, not both")
    if unknown := sorted(set(args.engines) - set(ENGINES) - set(LEVER_ENGINES)):
        known = ", ".join((*ENGINES, *LEVER_ENGINES))
        p.error(f"unknown engine(s) {unknown}; available: {known}")
    for name in args.models or []:
        try:
            bench_model(name)
        except (ValueError, OSError) as error:
            p.error(str(error))
    if args.device.startswith("cuda") and not args.worker:
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda asked for, but CUDA is not available here")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        from .worker import main as worker_main

        worker_main(args.worker)
        return
    suite = (
        custom_suite(args.models, seqs=args.seqs, batches=args.batches,
                     dtypes=args.dtypes, engines=args.engines,
                     timed_steps=args.timed_steps)
        if args.models else SUITES[args.suite or "cpu"]
    )  # fmt: skip
    points = plan(suite, device=args.device, threads=args.threads)
    if args.list:
        for point in points:
            print(json.dumps(point.__dict__))
        return
    path = args.out / f"{args.stem}.json"
    partial = args.out / f"{args.stem}.partial.json"  # written after every point
    previous, agreement = [], []
    if args.resume or args.report_only or args.agreement_only:
        for saved_file in (path, partial):
            if saved_file.exists():
                saved = json.loads(saved_file.read_text())
                if isinstance(saved, dict):
                    agreement = saved.get("agreement", agreement)
                    saved = saved["records"]
                previous += saved
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only or args.agreement_only:
        records = previous
        if args.agreement_only:
            agreement = [*agreement, *low_precision_agreement(suite, agreement)]
    else:
        print(f"{len(points)} points, each in a fresh process", file=sys.stderr)
        records = run_points(
            points, results=partial, reuse=previous, timeout=args.timeout
        )
        if not args.no_agreement:  # otherwise keep what was saved
            agreement = low_precision_agreement(suite)
    print(write_all(records, args.out, args.stem, agreement))
    partial.unlink(missing_ok=True)  # everything is in STEM.json now


def low_precision_agreement(suite, have: Sequence[dict] = ()) -> list[dict]:
    """jvp-vs-backprop agreement for each (model, dtype) the suite measures.

    Only on models small enough to build twice here (MiniLM, causal LMs built
    in float32: not the 7B shape), and not for the pairs already in `have`.
    """
    from .worker import agreement

    out, done = [], {(a["model"], a["dtype"]) for a in have}
    for sweep in suite.sweeps:
        for dtype in sweep.dtypes:
            if (sweep.model, dtype) in done or sweep.dtype != "float32":
                continue
            if bench_model(sweep.model).kind != CLASSIFIER or sweep.model == "minilm":
                print(f"agreement: {sweep.model} {dtype}", file=sys.stderr)
                out.append(agreement(sweep.model, dtype))
    return out


if __name__ == "__main__":
    main()
