"""The expensive run the integration tests share: one uninterrupted reference run.

The reproducibility check (test_simulation.py) repeats it and must get the same
numbers; the kill-and-resume test (test_resume.py) kills a copy of it and must end
where it ended. Both compare against this one run instead of starting their own,
so the session pays for it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .runs import REFERENCE_RUN, run_spry, survivors


@dataclass(frozen=True)
class ReferenceRun:
    """A finished `spry run` of runs.REFERENCE_RUN.

    Attributes
    ----------
    run_dir : Path
        Its results folder (metrics.csv, summary.json, final-weights.npz, ...).
    survivors : set[int]
        Processes it started (Ray's included) still alive after it ended.
    """

    run_dir: Path
    survivors: set[int]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """The uninterrupted 3-round run on three clients, once per session."""
    folder = tmp_path_factory.mktemp("reference")
    results = folder / "results"
    run_dir = run_spry(results, *REFERENCE_RUN, log=folder / "run.log")
    return ReferenceRun(run_dir=run_dir, survivors=survivors(results))
