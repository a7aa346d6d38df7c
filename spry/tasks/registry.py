"""Tasks by name: Python entry points, so a package outside this repo can add one.

A package registers a task in its own pyproject.toml:

    [project.entry-points."spry.tasks"]
    my-task = "my_package.my_module:MyTask"

and `spry run --task my-task` (or `task = "my-task"` in the run config) runs it, in
simulation and in deployment, with no change here. Every process of a run (the
driver, each Ray worker, each SuperNode) looks the name up the same way, so the
package must be installed wherever clients run. For a task defined in a script or a
notebook, `register(name, "module:Class")` is the in-process hook; it reaches Ray
workers through the `SPRY_TASKS` environment variable it also sets.

A task's own third-party packages are an install extra; its package checks them
first (`spry.tasks.extras.require`), so loading a task whose extra is missing fails
here with one line naming the pip command, before any process starts.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..config import ConfigError

if TYPE_CHECKING:
    from .base import Task

GROUP = "spry.tasks"
ENV_VAR = "SPRY_TASKS"  # "name=module:Class;name2=module:Class"

# This package's own tasks: also entry points in pyproject.toml, listed here too so
# that a source checkout or a Flower app bundle (not pip-installed) still finds them.
BUILTIN = {
    "classification": "spry.tasks.classification:ClassificationTask",
    "clipscope": "spry.tasks.clipscope:ClipscopeTask",
    "conifer": "spry.tasks.conifer:ConiferTask",
    "deepinception": "spry.tasks.deepinception:DeepInceptionTask",
    "lm-classification": "spry.tasks.lm_classification:LMClassificationTask",
    "mustard": "spry.tasks.mustard:MustardTask",
    "raee": "spry.tasks.raee:RaeeTask",
    "sep": "spry.tasks.sep:SepTask",
    "sft": "spry.tasks.sft:SFTTask",
    "soap": "spry.tasks.soap:SoapTask",
    "tips": "spry.tasks.tips:TipsTask",
    "verix": "spry.tasks.verix:VerixTask",
    "xfinder": "spry.tasks.xfinder:XFinderTask",
}


def _from_env() -> dict[str, str]:
    pairs = [p for p in os.environ.get(ENV_VAR, "").split(";") if p.strip()]
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, target = pair.partition("=")
        if not sep or ":" not in target:
            raise ConfigError(f"{ENV_VAR}: expected name=module:Class, got {pair!r}")
        found[name.strip()] = target.strip()
    return found


def available() -> dict[str, str]:
    """Registered name -> "module:Class": built-ins, entry points, then the hook."""
    found = dict(BUILTIN)
    found.update({ep.name: ep.value for ep in entry_points(group=GROUP)})
    found.update(_from_env())
    return dict(sorted(found.items()))


def register(name: str, target: str) -> None:
    """Register `target` ("module:Class") as `name` here and in later workers."""
    current = _from_env()
    current[name] = target
    os.environ[ENV_VAR] = ";".join(f"{k}={v}" for k, v in current.items())
    _load.cache_clear()


def get(name: str) -> type[Task]:
    """The task class registered as `name`; unknown names list the registered ones."""
    targets = available()
    if name not in targets:
        listing = ", ".join(targets) or "none (is the package installed?)"
        raise ConfigError(f"unknown task {name!r}; registered tasks: {listing}")
    return _load(name, targets[name])


@cache
def _load(name: str, target: str) -> type[Task]:
    from .base import Task

    module_name, _, attr = target.partition(":")
    try:
        task = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"task {name!r} ({target}) cannot be loaded: {error}"
        ) from None
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise ConfigError(f"task {name!r} ({target}) is not a spry.tasks.Task")
    return task
