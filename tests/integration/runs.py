"""What two runs of `spry run` must agree on: metrics.csv without its clock columns."""

from __future__ import annotations

import csv
from pathlib import Path

# Wall-clock and memory readings differ between identical runs; the rest must not
TIMING = {
    "round-seconds",
    "train-wall-seconds",
    "device-round-seconds",
    "elapsed-seconds",
    "client-train-seconds-max",
    "client-peak-mib",
    "client-peak-extra-mib",
}


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv of a run folder, one dict a round, timing columns left out."""
    with open(run_dir / "metrics.csv") as fh:
        return [
            {k: v for k, v in row.items() if k not in TIMING}
            for row in csv.DictReader(fh)
        ]
