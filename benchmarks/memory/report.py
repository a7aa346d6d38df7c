"""The suite's files: records as JSON and CSV, a markdown report, and plots."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spry.jsonfile import write_json

from .worker import ENGINES as SUITE_ENGINES
from .worker import LEVER_ENGINES, Record

ENGINES = (*SUITE_ENGINES, *LEVER_ENGINES)  # lever rows show when measured

SHORT = {"backprop-checkpoint": "bp-ckpt"}


def ok(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if "error" not in r]


def find(records: Sequence[Record], **where: Any) -> Record | None:
    """The first record matching every `where` (None if none)."""
    for r in records:
        if all(r.get(k) == v for k, v in where.items()):
            return r
    return None


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if a is not None and b else "–"


def num(x: float | None, fmt: str = ".0f") -> str:
    return "–" if x is None else format(x, fmt)


class View:
    """Records of one device, looked up by point.

    Memory comes from the live (or CUDA) process, time and glibc's RSS from the
    timed process of the same point.
    """

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = ok(records)
        self.cuda = any(r["device"].startswith("cuda") for r in self.records)

    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.records))

    def kind(self, model: str) -> str:
        """What loss `model` was measured with (models.CLASSIFIER, ...)."""
        return next(r["kind"] for r in self.records if r["model"] == model)

    def memory(self, **where: Any) -> Record | None:
        return find(self.records, allocator="cuda" if self.cuda else "live", **where)

    def timing(self, **where: Any) -> Record | None:
        return find(
            [r for r in self.records if r.get("step_seconds")],
            allocator="cuda" if self.cuda else "glibc",
            **where,
        )

    def main_point(self, model: str) -> dict[str, Any]:
        """The model's main point: batch 8, its main sequence, float32, default loss."""
        rows = [r for r in self.records if r["model"] == model]
        seq = 128 if rows[0]["kind"] == "classifier" else 64
        if not any(r["seq"] == seq for r in rows):
            seq = rows[0]["seq"]
        chunk = max((r["chunk"] for r in rows), default=0)
        return {"model": model, "batch": 8, "seq": seq, "chunk": chunk}

    def values(self, sweep: str, model: str) -> list[int]:
        """The swept values (seq or batch) measured for `model`."""
        point = self.main_point(model)
        fixed = {"batch": point["batch"]} if sweep == "seq" else {"seq": point["seq"]}
        return sorted(
            {
                r[sweep]
                for r in self.records
                if r["model"] == model and r["dtype"] == "float32"
                and r["chunk"] == point["chunk"]
                and all(r[k] == v for k, v in fixed.items())
            }
        )  # fmt: skip


# ---------------------------------------------------------------- markdown
def main_table(view: View, model: str, dtype: str = "float32") -> list[str]:
    where = {**view.main_point(model), "dtype": dtype}
    bp, inf = view.memory(engine="backprop", **where), view.memory(
        engine="inference", **where)  # fmt: skip
    bp_t = view.timing(engine="backprop", **where)
    out = [
        "| engine | extra | weights / optimizer / runtime | total | extra ÷ bp "
        "| total ÷ bp | extra ÷ inference | RSS peak (glibc) | step s | step ÷ bp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    untimed = False
    for engine in ENGINES:
        r = view.memory(engine=engine, **where)
        if r is None:
            continue
        t = view.timing(engine=engine, **where)
        step = num(t and t["step_seconds"], ".3f")
        if t is None and r.get("measured_step_seconds"):  # no timing rerun
            step, untimed = f"{r['measured_step_seconds']:.1f}*", True
        split = (
            f"{r['weights_mib']:.0f} / {r['optimizer_mib']:.2f} / "
            f"{r['runtime_mib']:.0f}"
        )
        out.append(
            f"| {engine} | {r['extra_mib']:.0f} | {split} | {r['total_mib']:.0f} "
            f"| {ratio(r['extra_mib'], bp and bp['extra_mib'])} "
            f"| {ratio(r['total_mib'], bp and bp['total_mib'])} "
            f"| {ratio(r['extra_mib'], inf and inf['extra_mib'])} "
            f"| {num(t and t['rss_peak_mib'])} "
            f"| {step} "
            f"| {ratio(t and t['step_seconds'], bp_t and bp_t['step_seconds'])} |"
        )
    if untimed:
        out += ["", "\\* the measured step's wall time (live allocator): no "
                "timing rerun at this point."]  # fmt: skip
    return out


def sweep_table(view: View, model: str, sweep: str) -> list[str]:
    point = view.main_point(model)
    fixed = {k: v for k, v in point.items() if k != sweep}
    engines = [e for e in ENGINES if view.memory(engine=e, **fixed, dtype="float32",
               **{sweep: view.values(sweep, model)[0]})]  # fmt: skip
    head = " | ".join(SHORT.get(e, e) for e in engines)
    out = [
        f"| {sweep} | {head} | spry ÷ bp | spry ÷ inference | step spry ÷ bp |",
        "|---:|" + "---:|" * (len(engines) + 3),
    ]
    for value in view.values(sweep, model):
        where = {**fixed, sweep: value, "dtype": "float32"}
        rows = {e: view.memory(engine=e, **where) for e in engines}
        cells = [num(r and r["extra_mib"]) for r in rows.values()]
        spry, bp, inf = rows.get("spry"), rows.get("backprop"), rows.get("inference")
        st, bt = view.timing(engine="spry", **where), view.timing(
            engine="backprop", **where)  # fmt: skip
        out.append(
            f"| {value} | {' | '.join(cells)} "
            f"| {ratio(spry and spry['extra_mib'], bp and bp['extra_mib'])} "
            f"| {ratio(spry and spry['extra_mib'], inf and inf['extra_mib'])} "
            f"| {ratio(st and st['step_seconds'], bt and bt['step_seconds'])} |"
        )
    return out


def chunk_table(view: View, model: str) -> list[str]:
    rows = [
        r
        for r in view.records
        if r["model"] == model and r["chunk"] == 0 and r["kind"] == "causal-lm"
        and r["dtype"] == "float32" and r["allocator"] in ("live", "cuda")
    ]  # fmt: skip
    if not rows:
        return []
    out = [
        "| seq | engine | extra, all logits | extra, chunked | chunked ÷ all |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["seq"], ENGINES.index(r["engine"]))):
        same = {k: r[k] for k in ("model", "engine", "batch", "seq", "dtype")}
        c = view.memory(**same, chunk=view.main_point(model)["chunk"])
        out.append(
            f"| {r['seq']} | {r['engine']} | {r['extra_mib']:.0f} "
            f"| {num(c and c['extra_mib'])} "
            f"| {ratio(c and c['extra_mib'], r['extra_mib'])} |"
        )
    return out


def same_point(r: Record) -> dict[str, Any]:
    """The point of `r` but for the engine."""
    return {k: r[k] for k in ("model", "batch", "seq", "dtype", "chunk")}


def targets(view: View, agreement: Sequence[Record]) -> list[str]:
    """The issue's targets, each computed from the records."""
    out = ["| target | measured | met |", "|---|---|---|"]

    def row(text: str, value: str, met: bool | None) -> None:
        out.append(
            f"| {text} | {value} | {'–' if met is None else 'yes' if met else 'no'} |"
        )

    def at(model: str, engine: str, **kw: Any) -> Record | None:
        if model not in view.models():
            return None
        point = {**view.main_point(model), "dtype": "float32", **kw}
        return view.memory(engine=engine, **point)

    large = "roberta-large-shape"
    f, b = at(large, "spry"), at(large, "backprop")
    if f and b:
        e, t = f["extra_mib"] / b["extra_mib"], f["total_mib"] / b["total_mib"]
        row("RoBERTa-large shape: forward extra ÷ backprop ≤ 0.06",
            f"{e:.4f}", e <= 0.06)  # fmt: skip
        row("RoBERTa-large shape: forward total ÷ backprop", f"{t:.2f}", None)
        fb = at(large, "spry", dtype="bfloat16")
        if fb:
            tb = fb["total_mib"] / b["total_mib"]
            row("… forward with bfloat16 frozen weights, total ÷ float32 backprop",
                f"{tb:.2f}", None)  # fmt: skip
    for against, limit, kinds in (
        ("inference", 1.3, ("classifier",)),
        ("backprop-checkpoint", 0.8, ("classifier", "causal-lm")),
    ):
        ratios = []
        for r in view.records:
            if (
                r["kind"] not in kinds
                or r["engine"] != "spry"
                or r["allocator"] not in ("live", "cuda")
                or (r["kind"] == "causal-lm" and not r["chunk"])  # chunked: default
            ):
                continue
            other = view.memory(**same_point(r), engine=against)
            if other and other["extra_mib"] > 0:
                ratios.append((r["extra_mib"] / other["extra_mib"], r))
        if ratios:
            w, r = max(ratios, key=lambda x: x[0])
            lo = min(x[0] for x in ratios)
            where = "encoder" if kinds == ("classifier",) else "encoder and chunked LM"
            row(f"every {where} point: forward extra ÷ {against} extra ≤ {limit}",
                f"{lo:.2f}–{w:.2f} over {len(ratios)} points (worst {r['model']} "
                f"b{r['batch']} s{r['seq']} {r['dtype']})", w <= limit)  # fmt: skip
    s, b = at("smollm2-135m", "spry"), at("smollm2-135m", "backprop")
    if s and b:
        e, t = s["extra_mib"] / b["extra_mib"], s["total_mib"] / b["total_mib"]
        row("SmolLM2-135M b8 s64, chunked loss: forward ÷ backprop ≤ 1/3",
            f"extra {e:.2f}, total {t:.2f}", e <= 1 / 3)  # fmt: skip
    for model in view.models():  # lm-classification's loss (issue 17's targets)
        for seq in view.values("seq", model):
            s, b, c = (
                at(model, engine, seq=seq)
                for engine in ("spry", "backprop", "backprop-checkpoint")
            )
            if view.kind(model) != "lm-labelwords" or not (s and b and c):
                continue
            e, ec = s["extra_mib"] / b["extra_mib"], s["extra_mib"] / c["extra_mib"]
            row(f"{model} b8 s{seq}: spry extra ÷ backprop ≤ 0.3",
                f"{e:.2f}", e <= 0.3)  # fmt: skip
            row(f"{model} b8 s{seq}: spry extra ÷ backprop-checkpoint ≤ 1",
                f"{ec:.2f}", ec <= 1)  # fmt: skip
    slow = []
    for r in view.records:
        if r["engine"] == "spry" and r.get("step_seconds"):
            bp = view.timing(**same_point(r), engine="backprop")
            if bp:
                slow.append(r["step_seconds"] / bp["step_seconds"])
    if slow:
        row("step time forward ÷ backprop ≤ 1.1 at every timed point",
            f"{min(slow):.2f}–{max(slow):.2f} over {len(slow)} points",
            max(slow) <= 1.1)  # fmt: skip
    paper_7b(view, row)
    for a in agreement:
        row(f"{a['model']}, {a['dtype']} frozen weights: jvp vs float32 backprop",
            f"median relative error {a['median_relative_error']:.4f} "
            f"({a['tangents']} tangents; vs its own backprop "
            f"{a['median_relative_error_same_dtype']:.4f})", None)  # fmt: skip
    return out


# The Spry paper's peak memory for Llama-2-7B (arXiv 2405.15551), GB
PAPER_7B = {"spry": 6.2, "backprop": 33.9}


def paper_7b(view: View, row: Callable[[str, str, bool | None], None]) -> None:
    """Rows for the Llama-2-7B shape beside the paper's figures, if measured."""
    model = "llama2-7b-shape"
    if model not in view.models():
        return
    for r in view.records:
        if r["model"] != model or r["allocator"] != ("cuda" if view.cuda else "live"):
            continue
        engine = r["engine"]
        what = "spry" if engine == "spry" else (
            "backprop" if engine.startswith("backprop") else None)  # fmt: skip
        gb = r["total_mib"] * 2**20 / 1e9
        text = f"Llama-2-7B shape, {r['dtype']} frozen weights, b{r['batch']} " \
            f"s{r['seq']}: {engine} total"  # fmt: skip
        if what:
            text += f" ≤ the paper's {what} ({PAPER_7B[what]} GB)"
        row(
            text,
            f"{gb:.2f} GB (weights {r['weights_mib'] * 2**20 / 1e9:.2f}, extra "
            f"{r['extra_mib'] * 2**20 / 1e9:.2f}; step "
            f"{r['measured_step_seconds']:.0f} s)",
            None if what is None else gb <= PAPER_7B[what],
        )


def markdown(records: Sequence[Record], agreement: Sequence[Record] = ()) -> str:
    view = View(records)
    if not view.records:
        return "No point was measured successfully.\n"
    r0 = view.records[0]
    device = r0["device_name"] if view.cuda else f"CPU ({r0['cpu_count']} cores)"
    out = [
        f"# Peak memory and step time per engine ({device})",
        "",
        "MiB. *extra*: peak above the memory in use when the step started (the "
        "weights, the optimizer state, the runtime): what the step itself needs. "
        "*total*: weights + optimizer state + extra (the paper's way; the runtime "
        "is left out, so CPU and CUDA figures compare). Ratios against backprop "
        "(*bp*) on the same point. *spry*: the default Spry client (forward mode, "
        "K = 1, exact head) on the slice the first of 10 clients trains; *fedfgd*: "
        "forward mode over every trainable tensor; *mezo*: two forward passes, SGD.",
        "",
        "## Targets",
        "",
        *targets(view, agreement),
    ]
    for model in view.models():
        rows = [r for r in view.records if r["model"] == model]
        point = view.main_point(model)
        has_float32 = any(r["dtype"] == "float32" for r in rows)
        m = rows[0]
        weights = "random weights" if m["weights"] == "random" else "pretrained weights"
        out += [
            "",
            f"## {model} ({weights}, {m['layers']} layers, "
            f"{m['params_total'] / 1e6:.1f}M parameters, "
            f"{m['params_trainable']:,} trainable)",
            "",
            f"Batch {point['batch']}, {point['seq']} tokens"
            + (
                f", loss over {point['chunk']} positions at a time"
                if point["chunk"]
                else ""
            )
            + (", float32:" if has_float32 else ":"),  # fmt: skip
        ]
        if has_float32:
            out += ["", *main_table(view, model)]
        for dtype in sorted({r["dtype"] for r in rows} - {"float32"}):
            same = "Same point, f" if has_float32 else "F"
            out += ["", f"{same}rozen weights in {dtype}:", "",
                    *main_table(view, model, dtype)]  # fmt: skip
        for sweep in ("seq", "batch"):
            if len(view.values(sweep, model)) > 1:
                out += [
                    "",
                    f"Extra MiB by {sweep}:",
                    "",
                    *sweep_table(view, model, sweep),
                ]
        if chunked := chunk_table(view, model):
            out += ["", "What chunking the loss saves:", "", *chunked]
    failed = [r for r in records if "error" in r]
    if failed:
        out += ["", "## Points that failed", ""]
        out += [f"- {r['model']} {r['engine']} b{r['batch']} s{r['seq']} "
                f"{r['dtype']}: {r['error']}" for r in failed]  # fmt: skip
    out += ["", how_measured(r0)]
    return "\n".join(out) + "\n"


def how_measured(r: Record) -> str:
    from . import suite, worker

    def prose(doc: str | None) -> str:
        return " ".join(p.replace("\n", " ") for p in (doc or "").split("\n\n")[1:])

    return (
        f"**How measured.** {prose(suite.__doc__)} {prose(worker.__doc__)} "
        f"*Runtime* is the resident memory of Python, torch and the allocator before "
        f"the step (CPU). Step time: median of further steps. torch {r['torch']}, "
        f"{r['threads']} threads, {r['cpu_count']} CPUs, {r['machine']}."
    )


# ---------------------------------------------------------------- files
def write_csv(records: Sequence[Record], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in records for k in r if k != "step_seconds_all"))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def plot_sweeps(view: View, path: Path, sweep: str,
                value: Callable[[View, str, dict], float | None], ylabel: str,
                log: bool = True) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in view.models() if len(view.values(sweep, m)) > 1]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8),
                             squeeze=False)  # fmt: skip
    for ax, model in zip(axes[0], models, strict=True):
        point = view.main_point(model)
        for i, engine in enumerate(ENGINES):
            xs, ys = [], []
            for x in view.values(sweep, model):
                where = {**point, sweep: x, "dtype": "float32", "engine": engine}
                y = value(view, engine, where)
                if y is not None:
                    xs.append(x)
                    ys.append(y)
            if xs:
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=engine)
        ax.set(xlabel=sweep, ylabel=ylabel, title=model, xscale="log")
        ax.set_xticks(view.values(sweep, model), view.values(sweep, model))
        if log:
            ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_xticks(view.values(sweep, model), view.values(sweep, model))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _extra(view: View, engine: str, where: dict) -> float | None:
    r = view.memory(**where)
    return r and r["extra_mib"]


def _extra_ratio(view: View, engine: str, where: dict) -> float | None:
    r, bp = view.memory(**where), view.memory(**{**where, "engine": "backprop"})
    return r["extra_mib"] / bp["extra_mib"] if r and bp and bp["extra_mib"] else None


def _time_ratio(view: View, engine: str, where: dict) -> float | None:
    r, bp = view.timing(**where), view.timing(**{**where, "engine": "backprop"})
    return r["step_seconds"] / bp["step_seconds"] if r and bp else None


def write_all(records: Sequence[Record], out: Path, stem: str,
              agreement: Sequence[Record] = ()) -> str:  # fmt: skip
    """Write STEM.json, .csv, .md and the plots under `out`; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    saved = {"records": list(records), "agreement": list(agreement)}
    write_json(out / f"{stem}.json", saved, indent=1)
    write_csv(records, out / f"{stem}.csv")
    text = markdown(records, agreement)
    (out / f"{stem}.md").write_text(text)
    view = View(records)
    plot_sweeps(view, out / f"{stem}_seq.png", "seq", _extra, "extra peak MiB (log)")
    plot_sweeps(view, out / f"{stem}_batch.png", "batch", _extra,
                "extra peak MiB (log)")  # fmt: skip
    plot_sweeps(view, out / f"{stem}_ratio.png", "seq", _extra_ratio,
                "extra peak ÷ backprop's (log)")  # fmt: skip
    plot_sweeps(view, out / f"{stem}_time.png", "seq", _time_ratio,
                "step time ÷ backprop's", log=False)  # fmt: skip
    return text
