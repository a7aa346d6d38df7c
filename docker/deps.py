"""Print the project's dependencies as a requirements file, minus the ones named.

The images install the project's dependencies from ``pyproject.toml`` (the one pinned
version set) before copying the source, so a code change does not reinstall torch.
A SuperNode may be asked to run any task, so the list holds the core dependencies and
every task's extra (``[project.optional-dependencies]`` but ``test`` and ``all``;
``--extra NAME`` picks some instead). Some pins cannot be installed everywhere: the
Jetson image keeps NVIDIA's torch, and maraboupy 2.0.0 / z3-solver 5.4.1.0 publish no
linux/arm64 wheels (the ``verix`` extra; that task then says what it misses).
``--drop`` leaves such a package out; ``--no-extras`` installs ``flwr`` without its
``simulation`` extra (Ray), which a SuperLink or SuperNode never starts.

    python docker/deps.py [--extra NAME ...] [--drop NAME ...] [--no-extras] > req.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

# PEP 508: the name, then optional [extras], then the version specifier and markers
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?(.*)$")
# Extras that are no task's: the developer tools, and the union of the task extras
NOT_TASKS = {"test", "all"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(
    pyproject: Path,
    drop: set[str],
    no_extras: bool,
    task_extras: Iterable[str] | None = None,
) -> tuple[list[str], set[str]]:
    """The requirement lines to install, and the dropped names that matched nothing.

    The core dependencies, then those of `task_extras` (None: every task's extra).
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    if task_extras is None:
        task_extras = [name for name in optional if name not in NOT_TASKS]
    unknown = sorted(set(task_extras) - set(optional))
    if unknown:
        raise ValueError(f"no such extra: {unknown}; extras: {sorted(optional)}")
    deps = [*project["dependencies"], *(d for e in task_extras for d in optional[e])]
    wanted = {_normalise(name) for name in drop}
    lines, seen = [], set()
    for dep in deps:
        match = _REQUIREMENT.match(dep)
        if match is None:
            raise ValueError(f"cannot parse the requirement {dep!r}")
        name, extras, rest = match.groups()
        if _normalise(name) in wanted:
            seen.add(_normalise(name))
            continue
        lines.append(f"{name}{'' if no_extras else extras or ''}{rest}".strip())
    return lines, wanted - seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", action="append", default=None, metavar="NAME")
    parser.add_argument("--drop", action="append", default=[], metavar="NAME")
    parser.add_argument("--no-extras", action="store_true")
    args = parser.parse_args(argv)
    lines, unmatched = requirements(
        args.pyproject, set(args.drop), args.no_extras, args.extra
    )
    if unmatched:
        # A renamed dependency would otherwise slip back in silently
        names = sorted(unmatched)
        print(f"deps.py: --drop matched no dependency: {names}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
