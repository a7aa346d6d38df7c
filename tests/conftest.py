"""Shared fixtures: the real offline default model, built once per test session.

The expensive end-to-end runs shared between test modules (one reference `spry
run`) are in tests/integration/conftest.py.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Skip the selected `gpu` tests where CUDA is missing (`make test-all`)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_model():
    """The real all-MiniLM-L6-v2 + LoRA r=1 + head (the run's default)."""
    from spry.config import ModelConfig
    from spry.models import build_classifier

    return build_classifier(ModelConfig(), num_labels=2, seed=0)


@pytest.fixture(scope="session")
def default_data():
    from spry.data import load_text_dataset

    return load_text_dataset("rotten-tomatoes")


@pytest.fixture()
def server_identity():
    """What Flower's Grid sets before a strategy builds instruction messages."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
