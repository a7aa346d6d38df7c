"""SEP on a transformers `CLIPModel` folder, 2 rounds in Flower's simulation engine.

Slow (`make test-all`). The CLIP is the tiny random one of tests/vision/tiny_clip.py,
saved to a folder the run names with `sep.clip=<folder>`, as a user names a
downloaded CLIP; tests/tasks/test_sep_transformers_clip.py covers the task
without the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spry.vision.images import FASHION_MNIST_DIR
from tests.vision.tiny_clip import save_tiny_clip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not FASHION_MNIST_DIR.is_dir(),
        reason=f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR})",
    ),
]

ROOT = Path(__file__).resolve().parents[2]


def test_sep_trains_prompts_on_a_clip_folder_in_two_rounds(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")
    results = tmp_path / "results"
    options = [
        f"clip={folder}", "shots=8", "test-per-class=3", "tfm-hidden=16",
    ]  # fmt: skip
    sets = [arg for option in options for arg in ("--set", f"sep.{option}")]
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--task", "sep", "--method", "spry",
         "--rounds", "2", "--clients", "4", "--per-round", "2",
         "--set", "eval-clients-per-round=2", *sets, "--results-dir", str(results)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1",
             "SPRY_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = results.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds-recorded"] == 3  # round 0 (zero-shot), 1, 2
    scored = json.loads((run_dir / "sep.json").read_text())
    assert scored["method"] == "sep" and len(scored["evaluations"]) == 3
    assert scored["test-images"] == 60
    for when in ("zero-shot", "final"):
        assert 0.0 <= scored[when]["harmonic-mean"] <= 1.0
    # only the prompts and TFMs travelled, sized by the folder's CLIP
    weights = dict(__import__("numpy").load(run_dir / "final-weights.npz"))
    assert weights["text_prompts"].shape == (4, 32)
    assert weights["visual_prompts"].shape == (4, 48)
    assert all(
        k in ("text_prompts", "visual_prompts")
        or k.startswith(("text_fusion.", "visual_fusion."))
        for k in weights
    )
    assert not (tmp_path / "cache" / "offline-clip").exists()  # none was built
