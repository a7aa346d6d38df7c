"""The RAEE task on the real MiniLM: its early exit is the model's own exit there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spry.config import RunConfig, default_values
from spry.tasks import load_task
from spry.tasks.raee.layers import forward_to_layer
from spry.tasks.raee.retrieval import RetrievalDatabase


@pytest.fixture(scope="module")
def task():
    cfg = RunConfig.from_run_config(
        {
            **default_values(),
            "task": "raee",
            "num-clients": 4,
            "clients-per-round": 2,
            "eval-clients-per-round": 2,
            "max-train-examples": 160,
            "max-test-examples": 32,
            "client-eval-fraction": 0.3,
        }
    )
    return load_task(cfg)


def test_each_exit_is_a_trainable_group_and_the_encoder_is_frozen(task):
    trainable = task.model()
    assert list(trainable.names) == [
        f"exits.{i}.{p}" for i in range(6) for p in ("weight", "bias")
    ]
    assert task.head_names(trainable.names) == []  # Spry splits every exit
    batch = next(task.train_batches(trainable, 0, 1, 0))
    assert batch["states"].shape[1:] == (7, 384)  # embeddings + 6 layers


def test_the_early_exit_predicts_what_that_exit_predicts_on_the_full_states(task):
    trainable = task.model()
    exits = trainable.model
    rows = task.partition(1).held_out
    batch = task._tokens(rows, range(len(rows)))
    # A database that sends example n to layer 1 + n % 6: every exit is used
    states = task.states(rows)
    layers = 1 + np.arange(len(rows)) % 6
    database = RetrievalDatabase(
        states[:, 0].numpy(), layers, num_layers=6
    )  # the queries are these very examples: each retrieves itself first
    _, chosen, predictions = task.early_exit(exits, database, batch)
    expected_layers = database.predict(states[:, 0].numpy(), k=task.options.k)
    assert chosen.tolist() == expected_layers.tolist()
    full = exits(states).argmax(-1)  # (N, 6): every exit from one full pass
    assert predictions.tolist() == [
        int(full[n, chosen[n] - 1]) for n in range(len(rows))
    ]
    # And the pass that stops early computes the same state as the full pass
    state = forward_to_layer(
        task.encoder()[0], batch["input_ids"], batch["attention_mask"], 3
    )
    torch.testing.assert_close(state, states[:, 3], atol=1e-5, rtol=1e-5)


def test_a_client_report_counts_what_the_merge_turns_into_metrics(task):
    trainable = task.model()
    report = task.report(trainable, 0)
    n = report["examples"]
    assert n == len(task.partition(0).held_out) > 0
    assert n <= report["exit-layer-sum"] <= 6 * n
    assert 0 <= report["raee-correct"] <= n
    # Fixed-layer counts equal the task's own per-exit evaluation
    scores = task.evaluate(trainable, task.partition(0).held_out)
    for layer in range(1, 7):
        assert report[f"exit-{layer}-correct"] == pytest.approx(
            scores[f"exit-{layer}-accuracy"] * n
        )
    merged = task.merge_reports(
        [report, {**report, "raee-seconds": 2 * report["raee-seconds"]}]
    )
    assert merged["examples"] == 2 * n
    assert merged["accuracy"] == pytest.approx(report["raee-correct"] / n)
    assert merged["average-exit-layer"] == pytest.approx(report["exit-layer-sum"] / n)
    assert merged["speed-up"] == pytest.approx(
        2 * report["full-seconds"] / (3 * report["raee-seconds"])
    )
    assert merged["fixed-exit-6-accuracy"] == merged["full-model-accuracy"]
