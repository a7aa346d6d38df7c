"""The command line: bad input gets one clear line and a non-zero exit, fast."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _spry(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spry.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha", "0"], "`alpha` should be > 0, got 0.0"),
        (
            ["--clients", "5", "--per-round", "10"],
            "should not exceed `num-clients` (5)",
        ),
        (["--model", "no-such/model-xyz"], "cannot load model 'no-such/model-xyz'"),
        (["--dataset", "no-such/dataset-xyz"], "unknown dataset 'no-such/dataset-xyz'"),
        (["--set", "lr=fast"], "`lr` should be a float, got 'fast'"),
        (["--set", "no-such-key=1"], "unknown config key(s) ['no-such-key']"),
        (["--method", "fedprox"], "known methods: spry, spry-paper, spry-iter"),
        (
            ["--method", "spry-iter", "--set", "engine=backprop"],
            "`upload-scalars` needs an engine whose estimate is K scalars",
        ),
        (["--set", "device-profiles=iphone:1"], "unknown device profile 'iphone'"),
        (
            ["--set", "fault-crash=0.8", "--set", "fault-timeout=0.3"],
            "sum to at most 1",
        ),
        (["--set", "orphan-slices=retry"], "`orphan-slices` should be one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = _spry("run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith("spry: error:")
    ]
    assert len(error_lines) == 1


def test_config_lists_every_key():
    from spry.config import default_values

    result = _spry("config")
    assert result.returncode == 0
    for key in default_values():
        assert key in result.stdout


def test_devices_lists_the_catalogue_and_a_file_adds_to_it(tmp_path):
    catalog = tmp_path / "mine.toml"
    catalog.write_text("[watch-1gb]\nbudget-mib = 400\nspeed = 0.05\n")
    result = _spry("devices", "--catalog", str(catalog))
    assert result.returncode == 0
    lines = (line.split() for line in result.stdout.splitlines()[1:])
    rows = {parts[0]: parts[1:] for parts in lines if len(parts) == 3}
    assert rows["phone-4gb"] == ["1536", "0.2"]
    assert rows["watch-1gb"] == ["400", "0.05"]
    catalog.write_text("[watch]\nram = 1\n")
    bad = _spry("devices", "--catalog", str(catalog))
    assert bad.returncode == 2 and "[watch] should hold `budget-mib`" in bad.stderr
