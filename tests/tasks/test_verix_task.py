"""The VeriX task: its explanations of a model are written, sound and complete."""

from __future__ import annotations

import json

import numpy as np
import torch

from spry.config import RunConfig, default_values
from spry.tasks import load_task
from spry.tasks.verix.explanation import Explanation, verify
from spry.tasks.verix.solvers import make_solver
from tests.verification.pictures import cells, highlighted, panels, read


def test_explanations_of_the_model_are_sound_by_a_second_solver_and_drawn(tmp_path):
    cfg = RunConfig.from_run_config(
        {
            **default_values(),
            "task": "verix",
            "num-clients": 4,
            "clients-per-round": 2,
            "eval-clients-per-round": 2,
            "verix.hidden": "8",
            "verix.explain-images": 3,
            "verix.solver": "marabou",
            "verix.checker": "z3",
        }
    )
    task = load_task(cfg)
    trainable = task.model()
    metrics = task.finish(trainable, tmp_path)["verix"]

    assert metrics["explained"] == 3 and metrics["sound"] == 3
    assert metrics["solver"] == "MarabouSolver" and metrics["checker"] == "Z3Solver"
    records = json.loads((tmp_path / "explanations" / "explanations.json").read_text())
    assert len(records) == 3
    pixels = task.test_data()["pixels"]
    for record in records:
        # The explanation and the freed pixels partition the image
        assert sorted(record["features"] + record["freed"]) == list(range(64))
        assert record["verified"] and record["solver_calls"] == 64
        # Independently: freeing every pixel outside the explanation cannot flip it
        x = torch.tensor(np.asarray(pixels[record["index"]], dtype=np.float32))
        explanation = Explanation(
            **{k: v for k, v in record.items() if k in Explanation.__dataclass_fields__}
        )
        assert verify(trainable.model, x, explanation, make_solver("z3"))
    # Each picture shows its test image, the saved explanation's pixels in red
    grid = panels(read(tmp_path / "explanations.png"), 2, 2)  # 3 images: 2 x 2
    assert (grid[3] > 0.99).all()
    for record, panel in zip(records, grid, strict=False):
        image = np.asarray(pixels[record["index"]], dtype=np.float64).reshape(8, 8)
        name = f"{record['index']:03d}-pred{record['label']}.png"
        for rgb in (read(tmp_path / "explanations" / name), panel):
            drawn = cells(rgb, (8, 8))
            assert np.flatnonzero(highlighted(drawn)).tolist() == record["features"]
            plain = ~highlighted(drawn)
            assert np.allclose(drawn[plain], image[plain][:, None], atol=0.01)
    assert len(list((tmp_path / "explanations").glob("*.png"))) == 3
    assert metrics["mean-explanation-size"] == np.mean(
        [len(r["features"]) for r in records]
    )
