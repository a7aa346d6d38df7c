"""A task's third-party packages: an install extra, checked when the task loads.

A task package whose solvers, indexes or data readers need packages the default
install leaves out names them in an extra (`[project.optional-dependencies]`) and
calls `require` first thing in its `__init__`. A missing package then stops the run
when the registry loads the task, before any process starts, with one line that
says what to install, instead of an ImportError traceback from a worker.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from ..config import ConfigError


class MissingExtra(ConfigError):
    """A task's extra is not installed; the message is the pip command."""


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The top-level `modules` that cannot be imported here (found, not imported)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(extra: str, modules: Sequence[str], *, task: str | None = None) -> None:
    """Raise `MissingExtra` unless every module of `extra` can be imported.

    Parameters
    ----------
    extra : str
        The extra that installs them (`pip install -e ".[<extra>]"`).
    modules : Sequence[str]
        Their top-level import names (`z3` for z3-solver, `sklearn` for
        scikit-learn); looked up with `importlib.util.find_spec`, so nothing is
        imported and a task that loads stays as cheap as before.
    task : str | None (default: None)
        The task's name in the message; the extra's name when None.
    """
    missing = missing_modules(modules)
    if missing:
        raise MissingExtra(
            f"task {task or extra!r} needs extra packages: "
            f'pip install -e ".[{extra}]" (missing: {", ".join(missing)})'
        )
