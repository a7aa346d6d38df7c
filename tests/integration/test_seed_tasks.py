"""The seed tasks end to end in Flower's simulation engine, cut down to seconds.

Slow (`make test-all`): each is a simulation; the tasks' own tests cover them
without one (tests/tasks/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SMALL = ["--rounds", "1", "--clients", "4", "--per-round", "2",
         "--set", "eval-clients-per-round=2"]  # fmt: skip


def _run(tmp_path: Path, *args: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", *SMALL, *args,
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    return run_dir


def test_verix_trains_then_explains_with_verified_masks(tmp_path):
    run_dir = _run(
        tmp_path, "--task", "verix",
        "--set", "verix.hidden=8", "--set", "verix.explain-images=2",
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["verix"]["explained"] == 2 and summary["verix"]["sound"] == 2
    assert len(list((run_dir / "explanations").glob("*.png"))) == 2
    weights = dict(__import__("numpy").load(run_dir / "final-weights.npz"))
    assert set(weights) == {
        "hidden1.weight", "hidden1.bias", "classifier.weight", "classifier.bias"
    }  # fmt: skip


def test_raee_clients_share_counts_the_server_merges(tmp_path):
    run_dir = _run(
        tmp_path, "--task", "raee",
        "--set", "max-train-examples=200", "--set", "max-test-examples=32",
        "--set", "client-eval-fraction=0.2",
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    report = summary["task-report"]
    assert report["clients"] == 4 and report["examples"] == 40  # 20% of 200
    assert 1 <= report["average-exit-layer"] <= 6
    assert 0 <= report["accuracy"] <= 1 and report["speed-up"] > 0
    assert {f"fixed-exit-{i}-accuracy" for i in range(1, 7)} <= set(report)
    # The task's tuned settings were applied under the command line's
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["num-tangents"] == 16 and config["num-clients"] == 4


def test_clipscope_prior_from_client_counts_in_two_rounds(tmp_path):
    # A tiny offline CLIP, built into this test's own cache by the ServerApp
    cache = tmp_path / "cache"
    results = tmp_path / "results"
    tiny = [
        "clip-epochs=1", "clip-max-train=200", "clip-width=32", "clip-depth=2",
        "clip-heads=2", "clip-patch=7", "wordnet-candidates=300",
        "num-nearest=5", "num-farthest=5", "train-images=400", "max-images=60",
    ]  # fmt: skip
    sets = [arg for option in tiny for arg in ("--set", f"clipscope.{option}")]
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--task", "clipscope",
         "--rounds", "2", "--clients", "4", "--per-round", "2",
         "--set", "eval-clients-per-round=2", *sets,
         "--results-dir", str(results)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**ENV, "SPRY_CACHE": str(cache)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = results.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    report = summary["task-report"]
    assert report["clients"] == 4 and report["images"] == 400
    scored = json.loads((run_dir / "clipscope.json").read_text())
    assert scored["prior-source"] == "clients"
    assert {"msp", "energy", "clipscope", "clipscope-online"} <= set(scored)
    assert (run_dir / "clipscope-scores.png").is_file()
    weights = dict(__import__("numpy").load(run_dir / "final-weights.npz"))
    assert set(weights) == {"log_scale"}


def test_sep_and_coop_train_prompts_base_to_new_in_two_rounds(tmp_path):
    # A tiny offline CLIP, built into this test's own cache by the ServerApp;
    # SEP with Spry, then CoOp with backprop FedAvg on the same cache
    cache = tmp_path / "cache"
    tiny = [
        "clip-epochs=1", "clip-max-train=200", "clip-width=32", "clip-depth=2",
        "clip-heads=2", "clip-patch=7", "shots=8", "test-per-class=5",
        "tfm-hidden=16",
    ]  # fmt: skip
    sets = [arg for option in tiny for arg in ("--set", f"sep.{option}")]
    for method, sep_method in (("spry", "sep"), ("fedavg", "coop")):
        results = tmp_path / method
        result = subprocess.run(
            [sys.executable, "-m", "cli", "run", "--task", "sep", "--method", method,
             "--rounds", "2", "--clients", "4", "--per-round", "2",
             "--set", "eval-clients-per-round=2", *sets,
             "--set", f"sep.method={sep_method}", "--results-dir", str(results)],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
            env={**ENV, "SPRY_CACHE": str(cache)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        (run_dir,) = results.iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["rounds-recorded"] == 3  # round 0 (zero-shot), 1, 2
        scored = json.loads((run_dir / "sep.json").read_text())
        assert scored["method"] == sep_method
        assert len(scored["evaluations"]) == 3
        for when in ("zero-shot", "final"):
            assert 0.0 <= scored[when]["harmonic-mean"] <= 1.0
        weights = dict(__import__("numpy").load(run_dir / "final-weights.npz"))
        if sep_method == "coop":
            assert set(weights) == {"text_prompts"}
        else:
            assert {"text_prompts", "visual_prompts"} < set(weights)
            assert all(
                k in ("text_prompts", "visual_prompts")
                or k.startswith(("text_fusion.", "visual_fusion."))
                for k in weights
            )
