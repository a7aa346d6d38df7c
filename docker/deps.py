"""Print the project's dependencies as a requirements file, minus the ones named.

The images install the project's dependencies from ``pyproject.toml`` (the one pinned
version set) before copying the source, so a code change does not reinstall torch.
Some pins cannot be installed everywhere: the Jetson image keeps NVIDIA's torch, and
maraboupy 2.0.0 / z3-solver 5.4.1.0 publish no linux/arm64 wheels (only the VeriX task
imports them, lazily). ``--drop`` leaves such a package out; ``--no-extras`` installs
``flwr`` without its ``simulation`` extra (Ray), which a SuperLink or SuperNode never
starts.

    python docker/deps.py [--drop NAME ...] [--no-extras] > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# PEP 508: the name, then optional [extras], then the version specifier and markers
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?(.*)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(
    pyproject: Path, drop: set[str], no_extras: bool
) -> tuple[list[str], set[str]]:
    """The requirement lines to install, and the dropped names that matched nothing."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
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
    parser.add_argument("--drop", action="append", default=[], metavar="NAME")
    parser.add_argument("--no-extras", action="store_true")
    args = parser.parse_args(argv)
    lines, unmatched = requirements(args.pyproject, set(args.drop), args.no_extras)
    if unmatched:
        # A renamed dependency would otherwise slip back in silently
        names = sorted(unmatched)
        print(f"deps.py: --drop matched no dependency: {names}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
