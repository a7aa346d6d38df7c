"""Client-side tasks: what clients learn, how it is scored, what they share.

`load_task(cfg)` gives the run's task (cached per process); `spry tasks` lists the
registered ones. See `base.Task` for the interface and `registry` for adding one.

Layout: the modules here are the core's (the interface `base`, with the labelled-data
task; the default `classification` task, which RAEE builds on; the `causal_lm` base
of the language-model tasks; `registry`, `extras`, `memory_probe`). Each folder is
one task's package (`verix/`, `raee/`) holding everything only it uses, its
third-party packages an install extra of the same name (`extras.require`). No core
module imports a task package; the registry loads them by name.
"""

from functools import lru_cache

from ..config import RunConfig
from .base import (
    ClientData,
    NoOptions,
    Task,
    TaskOptions,
    TextReply,
    TextTask,
    build_options,
    device_for,
)
from .registry import available, get, register


@lru_cache(maxsize=2)
def load_task(cfg: RunConfig) -> Task:
    """The run's task object; one per process and config, so caches are shared."""
    task = get(cfg.task.task)
    return task(cfg, build_options(task, dict(cfg.task_options)))


__all__ = [
    "ClientData",
    "NoOptions",
    "Task",
    "TaskOptions",
    "TextReply",
    "TextTask",
    "available",
    "device_for",
    "get",
    "load_task",
    "register",
]
