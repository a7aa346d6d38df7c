"""The task registry and task options in the run config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spry.config import ConfigError, RunConfig, default_values
from spry.resolve import resolve
from spry.tasks import Task, available, get, load_task, register
from spry.tasks.base import tensor_batches
from spry.tasks.registry import ENV_VAR


def test_the_seed_tasks_are_registered_and_load():
    names = available()
    for name in ("classification", "raee", "verix"):
        assert name in names
        task = get(name)
        assert issubclass(task, Task) and task.name == name and task.summary


def test_an_unknown_task_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown task 'nope'; registered tasks: "):
        get("nope")
    with pytest.raises(ConfigError, match="classification, .*raee, .*verix"):
        resolve({**default_values(), "task": "nope"})


def test_the_in_process_hook_registers_a_task_for_this_process_and_its_workers(
    monkeypatch,
):
    monkeypatch.delenv(ENV_VAR, raising=False)
    register("toy-hooked", "tests.tasks.toy_task:ToyTask")
    assert (
        "toy-hooked=tests.tasks.toy_task:ToyTask" in __import__("os").environ[ENV_VAR]
    )
    cfg = RunConfig.from_run_config({**default_values(), "task": "toy-hooked"})
    assert type(load_task(cfg)).__name__ == "ToyTask"


def test_a_target_that_is_not_a_task_is_refused(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fake=spry.config:RunConfig")
    with pytest.raises(ConfigError, match="is not a spry.tasks.Task"):
        get("fake")
    monkeypatch.setenv(ENV_VAR, "missing=spry.no_such_module:Task")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        get("missing")


def test_task_options_are_typed_defaulted_and_round_trip():
    cfg = resolve({**default_values(), "task": "verix", "verix.epsilon": "0.1"})
    options = dict(cfg.task_options)
    assert options["epsilon"] == 0.1 and options["explain-images"] == 20
    flat = cfg.to_mapping()
    assert flat["verix.epsilon"] == 0.1 and flat["task"] == "verix"
    assert RunConfig.from_run_config(flat) == cfg


def test_another_tasks_options_are_ignored_and_a_typo_prefix_is_not():
    # A pyproject may carry several tasks' tables; only the selected task's count
    cfg = resolve({**default_values(), "verix.epsilon": 0.3})
    assert cfg.task.task == "classification" and cfg.task_options == ()
    with pytest.raises(ConfigError, match="'verx.epsilon' names no registered task"):
        resolve({**default_values(), "verx.epsilon": 0.3})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("raee.k", 0, "task 'raee': `k` should be at least 1, got 0"),
        ("verix.epsilon", 2, "task 'verix': `epsilon` should be in (0, 1], got 2.0"),
        ("verix.solver", "cvc5", "`solver` should be marabou, z3 or auto"),
        ("verix.hidden", "32,x", "`hidden` should be positive widths"),
        ("verix.epsilon", "wide", "`epsilon` should be a float, got 'wide'"),
        ("raee.depth", 3, "task 'raee' has no option(s) ['raee.depth']"),
    ],
)
def test_an_invalid_task_option_names_the_field(key, value, message):
    task = key.split(".")[0]
    with pytest.raises(ConfigError) as error:
        resolve({**default_values(), "task": task, key: value})
    assert message in str(error.value)


def test_tensor_batches_keep_every_column_on_the_same_rows_in_order():
    columns = {"x": torch.arange(10) * 10, "y": torch.arange(10)}
    order = np.array([9, 2, 5, 0, 7])

    batches = list(tensor_batches(columns, 2, order))

    assert [b["y"].tolist() for b in batches] == [[9, 2], [5, 0], [7]]
    assert all(torch.equal(b["x"], b["y"] * 10) for b in batches)
    assert torch.equal(
        torch.cat([b["y"] for b in tensor_batches(columns, 4)]), columns["y"]
    )
