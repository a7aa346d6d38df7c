"""Results as standard JSON: no `Infinity` or `NaN`, which most readers refuse.

Python's `json` writes a non-finite float as a bare `Infinity`/`NaN` by default,
which `JSON.parse`, jq and pandas' strict mode reject. Every results file the
project writes (run folders, task outputs, benchmark tables) goes through
`write_json`, so a non-finite value becomes `null` with a warning naming where it
was, and `allow_nan=False` keeps it from coming back.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_LOG = logging.getLogger(__name__)


def finite(value: Any, where: str = "value") -> Any:
    """`value` with every non-finite float inside it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        _LOG.warning("%s = %s has no JSON form; written as null", where, value)
        return None
    if isinstance(value, Mapping):
        return {k: finite(v, f"{where}/{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def dumps(value: Any, *, indent: int | None = 2, where: str = "value") -> str:
    """`value` as standard JSON text (non-finite floats as null)."""
    return json.dumps(finite(value, where), indent=indent, allow_nan=False)


def write_json(path: Path, value: Any, *, indent: int | None = 2) -> None:
    """Write `value` to `path` as standard JSON, ending in a newline."""
    path.write_text(dumps(value, indent=indent, where=path.name) + "\n")
