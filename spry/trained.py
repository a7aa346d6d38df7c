"""A finished run's model, rebuilt for use: its task's model with the final weights.

A run writes its config (`config.json`) and its trainable tensors after the last
round (`final-weights.npz`) into its results folder; the frozen weights are the
named model's own. So what a run trained can be used from the folder alone, by a
later evaluation or by another task: MUSTARD reads word-problem answers with the
extractor an xFinder run trained (`mustard.extractor-generator=results/RUN`).
`load_trained` rebuilds the model as the run built it and loads the tensors
(`spry.generators.make_generator` takes such a folder and generates with it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import ConfigError
from .models import TrainableModel
from .resolve import resolve
from .tasks import Task, load_task

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "final-weights.npz"


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` is a finished run's results folder (config and final weights)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_trained(
    run_dir: str | Path, device: str = "cpu"
) -> tuple[Task, TrainableModel]:
    """The run's task and its model with the run's final trainable tensors."""
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise ConfigError(
            f"{run_dir} is not a finished run's results folder: it needs "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} (written when the last round ends)"
        )
    config = json.loads((run_dir / CONFIG_FILE).read_text())["config"]
    task = load_task(resolve(config))
    trainable = task.build_model(device)
    with np.load(run_dir / WEIGHTS_FILE) as arrays:
        trainable.load({name: arrays[name] for name in arrays.files})
    return task, trainable
