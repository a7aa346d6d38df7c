"""The resolving step: a run config checked against what implements it.

`spry.config` checks what a value is on its own and imports nothing of the library.
Whether a name names something is asked here, once per run, of the registry that
implements it: the engines (`spry.engines`), the tangent distributions, the server
optimizers (`spry.aggregation`), the device catalogue (`spry.devices`), the fault
plan (`spry.faults`), and the tasks with their options (`spry.tasks`). The command
line resolves before it starts anything, and the ServerApp resolves what
`flwr run .` gives it. Strategies sit above the library, so a strategy's name and
its options (`<strategy>.<option>` keys, kept here as given) are checked by their
own registry (`strategies.resolve`), in those two places.

The cheap checks come first and the registries that load torch, models and data
(devices, faults, tasks) are imported only after them, so a misspelt engine or
optimizer is reported in milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .aggregation import ServerOptimizer
from .config import ConfigError, ConfigValue, RunConfig
from .engines import DIRECTIONAL, DISTRIBUTIONS, ENGINES


def named_choices() -> dict[str, tuple[str, ...]]:
    """Keys whose value must name a registered thing, with the registered names."""
    return {
        "engine": tuple(ENGINES),
        "tangent-distribution": DISTRIBUTIONS,
        "server-optimizer": ServerOptimizer.KINDS,
        "estimated-server-optimizer": ("", *ServerOptimizer.KINDS),
    }


def resolve(values: Mapping[str, ConfigValue]) -> RunConfig:
    """The run config of `values`, checked against every registry below strategies.

    Returns the config with the selected task's options typed and completed with
    their defaults. Raises `ConfigError` naming the first bad key.
    """
    cfg = RunConfig.from_run_config(values)  # types, ranges, combinations
    flat = cfg.to_mapping()
    for key, names in named_choices().items():
        if flat[key] not in names:
            raise ConfigError(f"`{key}` should be one of {names}, got {flat[key]!r}")
    _check_directional(cfg)
    _check_prefixes(values, cfg.strategy.strategy)
    _check_simulation(cfg)
    return dataclasses.replace(cfg, task_options=_task_options(cfg))


def _check_directional(cfg: RunConfig) -> None:
    """Scalar uploads need an engine the server can rebuild from K scalars.

    Which engines a strategy takes is the strategy's check (`strategies.resolve`).
    """
    engine = cfg.client.engine
    if cfg.strategy.upload_scalars and engine not in DIRECTIONAL:
        raise ConfigError(
            f"`upload-scalars` needs an engine whose estimate is K scalars along "
            f"seeded directions ({', '.join(DIRECTIONAL)}); {engine!r} returns a "
            "gradient the server cannot rebuild from scalars"
        )


def _check_simulation(cfg: RunConfig) -> None:
    """The device mix names catalogued profiles; the fault shares make a plan."""
    from .devices import load_catalog, parse_mix
    from .faults import FaultPlan

    sim = cfg.simulation
    try:
        parse_mix(sim.device_profiles, load_catalog(sim.device_catalog))
        FaultPlan.from_config(sim)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_prefixes(values: Mapping[str, ConfigValue], strategy: str) -> None:
    """A `<name>.<option>` key naming no registered task nor the strategy is a typo.

    The run's strategy's own keys are its registry's to check (above the library).
    """
    from .tasks.registry import available  # loads torch: after the cheap checks

    registered = available()
    for key in sorted(k for k in values if "." in k):
        if key.partition(".")[0] not in (*registered, strategy):
            raise ConfigError(
                f"config key {key!r} names no registered task "
                f"({', '.join(registered)}) nor the run's strategy ({strategy!r})"
            )


def _task_options(cfg: RunConfig) -> tuple[tuple[str, ConfigValue], ...]:
    """The selected task's options, typed and completed with their defaults."""
    from .tasks.base import build_options  # loads the task: models and data
    from .tasks.registry import get

    task = get(cfg.task.task)  # an unknown task lists the registered ones
    options = build_options(task, dict(cfg.task_options)).to_mapping()
    return tuple(sorted(options.items()))
