"""The GPU run's preparation: what it checks, which points, and the CPU dry run.

The GPU machine is not here; what can be checked without it is that a missing
wheel is named with its version, that the points are the quick CUDA selection in
order of importance, and (slow) that the whole script runs on the CPU with tiny
points and a 2-round, 4-client simulation, writing its folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_run import BF16_ENGINES, NEEDED, check, gpu_points
from benchmarks.memory.worker import ENGINES

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_wheel_is_named_with_its_version():
    problems = check("cpu", {"no-such-distribution-spry": "9.9.9", "flwr": "0.0.1"})

    assert len(problems) == 1, problems
    assert "no-such-distribution-spry==9.9.9" in problems[0]
    assert "flwr==0.0.1 (found 1.42.0)" in problems[0]  # a pinned one, wrong version


def test_this_machine_has_everything_the_cpu_run_needs():
    assert check("cpu") == []
    assert {"flwr", "ray", "datasets"} <= set(NEEDED)


def test_the_points_are_every_engine_in_float32_first_then_bfloat16(tmp_path):
    points = gpu_points(tmp_path, "cuda")

    models = list(dict.fromkeys(p.model for p in points))
    assert models == [
        f"random:{tmp_path / 'minilm'}",
        f"random:{tmp_path / 'smollm2-135m'}",
        "bert-base-shape",
        "roberta-large-shape",
    ]
    fp32 = [p for p in points if p.dtype == "float32"]
    bf16 = [p for p in points if p.dtype == "bfloat16"]
    assert points == fp32 + bf16  # the budget cuts bfloat16 first
    assert len(fp32) == 4 * len(ENGINES) and len(bf16) == 4 * len(BF16_ENGINES)
    assert {(p.batch, p.seq) for p in points if "smollm2" not in p.model} == {(8, 128)}
    assert {p.chunk for p in points if "smollm2" in p.model} == {128}
    assert {p.allocator for p in points} == {"cuda"} and all(p.timed for p in points)
    tiny = gpu_points(tmp_path, "cpu", tiny=True)
    assert {p.model for p in tiny} == {"tiny-bert-shape", "tiny-llama-shape"}
    assert {p.allocator for p in tiny} == {"live"}


@pytest.mark.slow  # tiny points and a 2-round simulation: 3-8 minutes on 2 cores
def test_the_cpu_dry_run_finishes_and_writes_its_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    assets, out = tmp_path / "assets", tmp_path / "gpu"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_run", "assets", str(assets)],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    done = subprocess.run(
        ["bash", "benchmarks/gpu_run.sh", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
        env={**env, "DEVICE": "cpu", "ASSETS": str(assets), "SUITE_BUDGET": "45",
             "PYTHON": sys.executable},
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((out / "memory.json").read_text())["records"]
    measured = [r for r in records if "error" not in r]
    assert measured and all(r["live"] for r in measured)
    assert all(r["error"].startswith("skipped") for r in records if "error" in r)
    (run,) = (out / "sim").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds-recorded"] == 3
    assert summary["client-step-peak"]["extra-mib"] > 0
    assert json.loads((out / "versions.json").read_text())["flwr"] == "1.42.0"
    assert not (out / "model").exists()  # random weights are not kept
