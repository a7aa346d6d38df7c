"""Who may import whom (ARCHITECTURE.md), checked by reading the source.

The rules hold only while something fails when they break, so this test reads every
source file's syntax tree (module-level and function-level imports alike; imports
under `if TYPE_CHECKING:` never run and are left out) and fails on:

- `spry/` importing `server/`, `clients/`, `strategies/` or `cli/`;
- `spry/config.py` importing any of `spry/` (the config is the bottom layer);
- `strategies/` importing `server/`, `clients/` or `cli/` (it builds on `spry/`);
- `server/` and `clients/` importing each other;
- anything importing `cli/` (the composition root: it imports, nothing imports it;
  only the drivers above it, `tests/` and `benchmarks/`, call it, and are not read);
- a module outside a task package importing it (a task package is a subpackage
  folder of `spry/tasks/`): not the core, not the apps, not another task; tasks are
  loaded by name through the registry (the command line, the composition root,
  may import one);
- `spry/`'s modules forming an import cycle.

The checker runs on a root folder, so the last tests run it on small trees written to
a temporary folder and see each rule fail on a deliberately bad import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers' packages; tests/ and benchmarks/ drive them from above, unread.
SOURCES = ("spry", "strategies", "server", "clients", "cli")
TASKS = "spry.tasks"
CONFIG = "spry.config"
# Who must not import whom: importer's package -> packages it must not import.
FORBIDDEN = {
    "spry": (
        ("server", "clients", "strategies", "cli"),
        "the library imports nothing above it",
    ),
    "strategies": (("server", "clients", "cli"), "strategies build on spry/ only"),
    "server": (("clients", "cli"), "server and clients meet only by messages"),
    "clients": (
        ("server", "strategies", "cli"),
        "server and clients meet only by messages",
    ),
}


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, and where it is written."""

    source: str
    target: str
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path) -> dict[str, Path]:
    """Every module of the source packages under `root`, by dotted name."""
    found: dict[str, Path] = {}
    for package in SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            found[_module_name(path, root)] = path
    return found


def _under(name: str, package: str | tuple[str, ...]) -> bool:
    packages = (package,) if isinstance(package, str) else package
    return any(name == p or name.startswith(p + ".") for p in packages)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that runs, in functions too; `if TYPE_CHECKING:` bodies skipped."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The modules `name` (at `path`) imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST) -> None:
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        found.append(Import(name, target, where))

    for node in _statements(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base, node)
        elif _imports_by_name(node):  # importlib.import_module("a.b"): an import
            add(node.args[0].value, node)  # type: ignore[attr-defined]
    return found


def _imports_by_name(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def task_packages(root: Path) -> list[str]:
    """Each subpackage folder of spry/tasks is one task's package."""
    folder = root / TASKS.replace(".", "/")
    return (
        sorted(
            f"{TASKS}.{child.name}"
            for child in folder.iterdir()
            if child.is_dir() and (child / "__init__.py").exists()
        )
        if folder.is_dir()
        else []
    )


def layer_violations(root: Path) -> list[str]:
    """Imports that cross the layers the wrong way, one line each."""
    modules = find_modules(root)
    tasks = task_packages(root)
    broken: list[str] = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            target = imp.target
            above, why = FORBIDDEN.get(name.partition(".")[0], ((), ""))
            if any(_under(target, top) for top in above):
                broken.append(f"{imp} ({why})")
            elif name == CONFIG and _under(target, "spry"):
                broken.append(f"{imp} (the config imports nothing of the library)")
            elif _under(target, "cli") and not _under(name, "cli"):
                broken.append(f"{imp} (nothing imports the composition root)")
            for task in tasks:
                if _under(target, task) and not _under(name, (task, "cli")):
                    broken.append(f"{imp} (a task package is loaded by its name)")
    return broken


def import_cycles(root: Path, package: str = "spry") -> list[list[str]]:
    """The strongly connected components of `package`'s import graph (Tarjan).

    An edge goes to the module an import names (`from .engines import make_engine`
    names `spry.engines`); the parent packages Python runs on the way are left out,
    since a package's own modules import their siblings through it by design.
    """
    modules = find_modules(root)
    ours = {name: path for name, path in modules.items() if _under(name, package)}
    graph = {
        name: sorted(
            {imp.target for imp in imports_of(name, path, modules)} & set(ours) - {name}
        )
        for name, path in ours.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_imports_follow_the_layers():
    broken = layer_violations(ROOT)
    assert not broken, "\n".join(broken)


def test_the_library_has_no_import_cycle():
    cycles = import_cycles(ROOT)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


# A small tree that keeps every rule, and one bad import per rule added to it.
GOOD_TREE = {
    "spry/__init__.py": "",
    "spry/config.py": "import os\n",
    "spry/engines/__init__.py": "from ..config import os\n",
    "spry/engines/forward.py": "from ..config import os\n",
    "spry/tasks/__init__.py": "from .registry import get\n",
    "spry/tasks/registry.py": (
        "from ..config import os\n"
        "def get(name):\n"
        "    import importlib\n"
        "    return importlib.import_module('spry.tasks.' + name)\n"
    ),
    "spry/tasks/toy/__init__.py": "from .model import Toy\n",
    "spry/tasks/toy/model.py": "from spry.engines import forward\nclass Toy: ...\n",
    "spry/hints.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from server.app import App  # never runs: not an import\n"
    ),
    "strategies/__init__.py": "from spry.engines import forward\n",
    "server/__init__.py": "",
    "server/app.py": "import strategies\nfrom spry.tasks import get\n",
    "clients/__init__.py": "",
    "clients/app.py": "from spry.tasks.registry import get\n",
    "cli/__init__.py": "",
    "cli/main.py": "import server.app\nimport clients.app\nimport spry.tasks.toy\n",
}

BAD_IMPORTS = [
    (
        "spry/config.py",
        "def f():\n    from server import app\n",
        "imports nothing above",
    ),
    ("spry/engines/forward.py", "import strategies\n", "imports nothing above"),
    ("spry/config.py", "import cli.main\n", "imports nothing above"),
    ("spry/config.py", "def f():\n    from .engines import x\n", "nothing of the"),
    ("strategies/__init__.py", "from server.app import x\n", "build on spry/ only"),
    ("server/app.py", "from clients import app\n", "meet only by messages"),
    ("clients/app.py", "def f():\n    import server.app\n", "meet only by messages"),
    ("server/app.py", "from cli.main import x\n", "server and clients"),
    ("spry/engines/__init__.py", "from ..tasks.toy import Toy\n", "loaded by its name"),
    ("clients/app.py", "from spry.tasks.toy.model import Toy\n", "loaded by its name"),
    (
        "spry/hints.py",
        "import importlib\nimportlib.import_module('server.app')\n",
        "imports nothing above",
    ),
]


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_passes_a_tree_that_keeps_the_rules(tmp_path):
    root = _write(tmp_path, GOOD_TREE)
    assert layer_violations(root) == []
    assert import_cycles(root) == []


@pytest.mark.parametrize(("path", "line", "rule"), BAD_IMPORTS)
def test_the_checker_fails_on_a_bad_import(tmp_path, path, line, rule):
    root = _write(tmp_path, GOOD_TREE)
    with open(root / path, "a") as source:
        source.write(line)
    broken = layer_violations(root)
    assert len(broken) == 1 and rule in broken[0], broken
    assert broken[0].startswith(f"{root / path}:")


def test_the_checker_finds_a_cycle_held_by_a_function_level_import(tmp_path):
    root = _write(tmp_path, GOOD_TREE)
    # forward -> config at module level; config -> forward inside a function
    with open(root / "spry/config.py", "a") as source:
        source.write("def engine():\n    from .engines import forward\n")
    assert import_cycles(root) == [["spry.config", "spry.engines.forward"]]


def test_the_checker_finds_a_cycle_through_relative_imports_across_packages(
    tmp_path,
):
    root = _write(tmp_path, GOOD_TREE)
    # registry -> toy -> toy.model -> engines.forward -> registry
    with open(root / "spry/tasks/registry.py", "a") as source:
        source.write("from . import toy\n")
    assert import_cycles(root) == []
    with open(root / "spry/engines/forward.py", "a") as source:
        source.write("from ..tasks import registry\n")
    assert import_cycles(root) == [
        [
            "spry.engines.forward",
            "spry.tasks.registry",
            "spry.tasks.toy",
            "spry.tasks.toy.model",
        ]
    ]
