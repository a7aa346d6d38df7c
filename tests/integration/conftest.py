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

from .runs import REFERENCE_RUN, new_ray_pids, ray_pids, run_spry


@dataclass(frozen=True)
class ReferenceRun:
    """A finished `spry run` of runs.REFERENCE_RUN.

    Attributes
    ----------
    run_dir : Path
        Its results folder (metrics.csv, summary.json, final-weights.npz, ...).
    stray_ray_pids : set[int]
        Ray processes it started that were still alive after it exited.
    """

    run_dir: Path
    stray_ray_pids: set[int]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """The uninterrupted 3-round run on three clients, once per session."""
    folder = tmp_path_factory.mktemp("reference")
    before = ray_pids()
    run_dir = run_spry(folder / "results", *REFERENCE_RUN, log=folder / "run.log")
    return ReferenceRun(run_dir=run_dir, stray_ray_pids=new_ray_pids(before))
