"""The CLIPScope task without Flower: its parts called as the apps call them.

A tiny offline CLIP (built into a temporary $SPRY_CACHE, seconds), 4 clients,
300 WordNet candidates. The 2-round simulation is in
tests/integration/test_seed_tasks.py (slow).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spry.config import ConfigError, RunConfig, default_values
from spry.tasks import load_task
from spry.tasks.clipscope.evaluation import METHODS
from spry.tasks.clipscope.prior import class_prior
from spry.tasks.clipscope.wordnet import WORDNET_DIR
from spry.vision.images import FASHION_MNIST_DIR

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR.is_dir() and (WORDNET_DIR / "data.noun").is_file()),
    reason="needs Debian's dataset-fashion-mnist and wordnet-base",
)

TINY = {
    "clipscope.clip-epochs": 1,
    "clipscope.clip-max-train": 200,
    "clipscope.clip-width": 32,
    "clipscope.clip-depth": 2,
    "clipscope.clip-heads": 2,
    "clipscope.clip-patch": 7,
    "clipscope.wordnet-candidates": 300,
    "clipscope.num-nearest": 5,
    "clipscope.num-farthest": 5,
    "clipscope.train-images": 400,
    "clipscope.max-images": 80,
}


def _task(**extra):
    cfg = RunConfig.from_run_config(
        {
            **default_values(),
            "task": "clipscope",
            "num-clients": 4,
            "clients-per-round": 2,
            "eval-clients-per-round": 2,
            **TINY,
            **extra,
        }
    )
    return load_task(cfg)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPRY_CACHE", str(tmp_path_factory.mktemp("spry-cache")))
        yield _task()


def test_only_the_temperature_trains(task):
    trainable = task.model()
    assert list(trainable.state()) == ["log_scale"]
    assert trainable.state()["log_scale"].shape == (1,)
    batch = next(iter(task.train_batches(trainable, 0, 1, 0)))
    loss, logits = task.loss(trainable.model, batch)
    assert logits.shape == (len(batch["labels"]), 10)
    loss.backward()
    assert trainable.model.log_scale.grad is not None
    assert not any(p.requires_grad for p in task.clip().parameters())


def test_clients_share_counts_and_the_server_scores(task, tmp_path):
    # Prepare
    trainable = task.model()
    reports = [task.report(trainable, c) for c in range(4)]
    # Execute
    merged = task.merge_reports(reports)
    notes = task.finish(trainable, tmp_path)["clipscope"]
    # Assert: every client image counted once, names are the ID classes
    assert merged["images"] == 400
    assert sum(v for k, v in merged.items() if k.startswith("predicted-")) == 400
    written = json.loads((tmp_path / "clipscope.json").read_text())
    assert written["prior-source"] == notes["prior-source"] == "clients"
    counts = np.array([merged[f"predicted-{n}"] for n in written["id-classes"]])
    np.testing.assert_allclose(written["prior"], class_prior(counts).numpy(), rtol=1e-6)
    assert len(written["mined-nearest"]) == len(written["mined-farthest"]) == 5
    for method in METHODS:
        assert 0.0 <= written[method]["auroc"] <= 1.0
    assert (tmp_path / "clipscope-scores.png").stat().st_size > 10_000


def test_near_pair_holds_out_four_classes(task):
    near = _task(**{"clipscope.pair": "fashion-near"})
    assert near.dataset.num_labels == 6
    assert set(near.dataset.train["label"]) <= set(range(6))
    assert near.pair.name == "fashion-near"


def test_options_are_checked():
    with pytest.raises(ConfigError, match="pair"):
        _task(**{"clipscope.pair": "cifar"})
    with pytest.raises(ConfigError, match="percentile"):
        _task(**{"clipscope.percentile": 101.0})


def test_evaluate_reports_zero_shot_accuracy(task):
    metrics = task.evaluate(task.model(), task.test_data())
    assert metrics["num-examples"] == 80
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["logit-scale"] == pytest.approx(
        float(torch.exp(task.model().model.log_scale.detach())), rel=1e-6
    )


def test_near_pair_builds_a_clip_that_never_saw_the_ood_classes(task):
    near = _task(**{"clipscope.pair": "fashion-near"})
    assert near.unseen_classes() == ("shirt", "sneaker", "bag", "ankle boot")
    assert task.unseen_classes() == ()
