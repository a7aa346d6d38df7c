"""Device budgets and injected faults through Flower's real simulation engine.

A population where 30% of the devices cannot hold any slice, and 40% of each
round's sampled clients crash or never answer: the run must finish, never sample
a device over its budget, reassign every group its clients lost, and say so in
its results. Slow (`make test-all`): the memory probes and two simulations.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import strict_json

from .runs import CLI_MODULE, ROOT

pytestmark = pytest.mark.slow

CATALOG = "[tiny-256mb]\nbudget-mib = 256\nspeed = 0.1\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache, so the memory probes run (once) in this module."""
    cache = tmp_path_factory.mktemp("spry-cache")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SPRY_CACHE": str(cache)}


def _spry(env, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    catalog = tmp_path / "devices.toml"
    catalog.write_text(CATALOG)
    command = [
        sys.executable, "-m", CLI_MODULE, "run", "--rounds", "2", "--clients", "10",
        "--per-round", "5", "--results-dir", str(tmp_path / "results"),
        "--set", "eval-clients-per-round=2", "--set", "max-train-examples=300",
        "--set", "max-test-examples=64", "--set", f"device-catalog={catalog}", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )


def test_faults_and_budgets_in_the_real_engine(env, tmp_path):
    done = _spry(
        env, tmp_path,
        "--set", "device-profiles=tiny-256mb:0.3,phone-4gb:0.4,laptop-16gb:0.3",
        "--set", "fault-crash=0.2", "--set", "fault-timeout=0.2",
        "--set", "round-deadline=600",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "completed"
    # One crash and one timeout among each round's 5 clients, and their groups
    # went to fresh clients in a second wave
    drops = summary["dropouts"]
    assert (drops["dropped-crash"], drops["dropped-timeout"]) == (2, 2)
    assert drops["dropped-error"] == drops["dropped-invalid"] == 0
    assert drops["orphan-groups"] > 0
    assert drops["reassigned-groups"] == drops["orphan-groups"]
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["coverage-trained"]) for r in rows[1:]] == [1.0, 1.0]
    assert [r["over-budget"] for r in rows[1:]] == ["0", "0"]
    # The tiny devices were never sent work; the others within their budgets,
    # and they reported what they measured
    profiles = summary["profiles"]
    assert profiles["tiny-256mb"]["clients"] == 3
    assert profiles["tiny-256mb"]["client-rounds-trained"] == 0
    trained = 0
    for name in ("phone-4gb", "laptop-16gb"):
        row = profiles[name]
        trained += row["client-rounds-trained"]
        if row["client-rounds-trained"]:
            assert row["predicted-peak-mib-max"] * 1.1 <= row["budget-mib"]
            assert row["measured-extra-mib-max"] > 0
    # Per round: 3 of the 5 sampled, and the 2 spare eligible devices that took
    # the lost groups (the 7 that fit hold 5 sampled + 2 spare)
    assert trained == 2 * (3 + 2)
    assert summary["driver-peak-rss-mib"] > 0
    # Injected crashes are logged as such, without the worker's stack
    assert "client error: injected fault: crash" in done.stderr


def test_a_population_where_no_device_fits_one_group_fails_before_training(
    env, tmp_path
):
    done = _spry(env, tmp_path, "--set", "device-profiles=tiny-256mb:1")
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("spry: error: no device in the population can train")
    assert "tiny-256mb 256 MiB" in error and "predicted to peak at" in error
    assert not (tmp_path / "results").exists()  # nothing started
