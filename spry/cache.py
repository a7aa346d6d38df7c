"""Where Spry keeps what it derives once and reuses: `$SPRY_CACHE` (~/.cache/spry).

Dequantized offline weights and measured client memory models live here, so a
second run skips the work.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("SPRY_CACHE", Path.home() / ".cache" / "spry"))
