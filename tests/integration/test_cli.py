"""The command line: bad input gets one clear line and a non-zero exit, fast.

The checks run in this process (`cli.main.main` with an argv, stderr captured),
with the apps' loader replaced by one that fails the test: bad input must be
refused before anything that starts a worker. One subprocess run checks what only
a fresh process shows: exactly one line on stderr, the exit code, and that neither
torch nor Flower (so no Ray worker) was loaded and no results folder was written.
A missing model or dataset is looked up on the Hub, whose offline switch is read
at import: those two run in a fresh process started offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import cli.run
from cli.main import main
from spry.resolve import resolve
from tests.integration.runs import CLI_MODULE, ENV, ROOT

BAD_INPUT = [
    (["--alpha", "0"], "`alpha` should be > 0, got 0.0"),
    (["--clients", "5", "--per-round", "10"], "should not exceed `num-clients` (5)"),
    (["--set", "lr=fast"], "`lr` should be a float, got 'fast'"),
    (["--set", "lr"], "--set expects key=value, got 'lr'"),
    (["--set", "no-such-key=1"], "unknown config key(s) ['no-such-key']"),
    (["--method", "fedprox"], "known methods: spry, spry-paper, spry-iter"),
    (["--set", "orphan-slices=retry"], "`orphan-slices` should be one of"),
    # The resolving step: names checked against their registries
    (["--set", "engine=nope"], "`engine` should be one of ('forward', 'backprop'"),
    (["--set", "server-optimizer=lamb"], "`server-optimizer` should be one of"),
    (
        ["--method", "spry-iter", "--set", "engine=backprop"],
        "`upload-scalars` needs an engine whose estimate is K scalars",
    ),
    (["--set", "device-profiles=iphone:1"], "unknown device profile 'iphone'"),
    (["--set", "fault-crash=0.8", "--set", "fault-timeout=0.3"], "sum to at most 1"),
    (["--task", "nope"], "unknown task 'nope'; registered tasks: "),
    (["--set", "verx.epsilon=0.1"], "'verx.epsilon' names no registered task"),
    (["--set", "baffle.clip=0.5"], "nor the run's strategy ('spry')"),
    # Above the library: the strategies' registry, the strategy's own options
    (["--set", "strategy=nope"], "unknown strategy 'nope'; available: ['baffle'"),
    (
        ["--method", "fwdllm", "--set", "fwdllm.candidates=0"],
        "strategy 'fwdllm': `candidates` should be at least 1, got 0",
    ),
    (
        ["--method", "fwdllm", "--set", "fwdllm.candidate=3"],
        "strategy 'fwdllm' has no option(s) ['fwdllm.candidate']",
    ),
    (
        ["--method", "baffle", "--set", "local-epochs=2"],
        "the baffle strategy takes one batch per client per round",
    ),
]
# The task's model and data: the Hub's libraries read the offline switch when they
# load, so these run in a fresh process started offline
HUB_INPUT = [
    (["--model", "no-such/model-xyz"], "cannot load model 'no-such/model-xyz'"),
    (["--dataset", "no-such/dataset-xyz"], "unknown dataset 'no-such/dataset-xyz'"),
]


@pytest.fixture()
def no_worker_may_start(monkeypatch):
    """Loading the ServerApp or ClientApp (what starts workers) fails the test."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")

    def refuse(component: str) -> object:
        raise AssertionError(f"bad input reached the apps ({component})")

    monkeypatch.setattr(cli.run, "_load", refuse)
    saved = dict(os.environ)  # `run` sets Ray's and the tokenizers' variables
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_code_2(
    args, message, capsys, no_worker_may_start, tmp_path
):
    results = tmp_path / "results"
    code = main(["run", *args, "--results-dir", str(results)])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("spry: error:") and message in error
    assert error.count("\n") == 1, error
    assert not results.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "nope"], "argument --engine: invalid choice: 'nope'"),
        (["--partitioner", "zipf"], "argument --partitioner: invalid choice: 'zipf'"),
        (["--rounds", "two"], "argument --rounds: invalid int value: 'two'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_a_bad_flag_is_one_line_too(args, message, capsys, no_worker_may_start):
    with pytest.raises(SystemExit) as exit_:
        main(["run", *args])
    error = capsys.readouterr().err
    assert exit_.value.code == 2
    assert error.startswith(("spry: error:", "spry run: error:"))
    assert message in error
    assert error.count("\n") == 1, error


@pytest.mark.parametrize(("args", "message"), HUB_INPUT)
def test_a_missing_model_or_dataset_is_one_line(args, message, tmp_path):
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", CLI_MODULE, "run", *args, "--results-dir", results],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("spry: error:") and message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not results.exists()


def test_a_fresh_process_reports_a_bad_flag_in_one_line_before_loading_torch(
    tmp_path,
):
    results = tmp_path / "results"
    report = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["spry", "run", "--alpha", "0", "--results-dir", sys.argv[1]]
        try:
            runpy.run_module({CLI_MODULE!r}, run_name="__main__")
        finally:  # what the process loaded by the time it exits
            print(sorted(m for m in ("torch", "flwr", "ray") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", report, str(results)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert done.stderr == "spry: error: `alpha` should be > 0, got 0.0\n"
    assert done.stdout.strip() == "[]"  # no torch, no Flower, no Ray worker
    assert not results.exists()


def test_config_lists_every_key_and_the_registered_names(capsys):
    from spry.config import default_values

    assert main(["config"]) == 0
    listing = capsys.readouterr().out
    for key in default_values():
        assert key in listing
    engine = next(line for line in listing.splitlines() if "engine " in line)
    assert "[forward, backprop, backprop-checkpoint, mezo" in engine
    strategy = next(line for line in listing.splitlines() if " strategy " in line)
    assert "[spry, fedsgd, baffle, fwdllm]" in strategy


def test_config_lists_each_strategys_options_with_default_and_help(capsys):
    assert main(["config"]) == 0
    listing = capsys.readouterr().out.splitlines()
    max_repeats = next(line for line in listing if "fwdllm.max-repeats" in line)
    assert max_repeats.split()[:3] == ["fwdllm.max-repeats", "=", "4"]
    assert "most extra direction passes a step" in max_repeats
    clip = next(line for line in listing if "baffle.clip" in line)
    assert clip.split()[:3] == ["baffle.clip", "=", "0.3"]


def test_a_strategy_option_set_on_the_command_line_reaches_the_strategy(
    monkeypatch, no_worker_may_start, capsys
):
    import strategies
    from server.server_app import compose_strategy
    from spry.devices import DeviceProfile, Fleet

    given: dict = {}

    def server_app_factory(overrides):  # what `run` hands the ServerApp
        given.update(overrides)
        raise RuntimeError("stop before Flower starts")

    monkeypatch.setattr(cli.run, "_load", lambda component: server_app_factory)
    args = ["--method", "fwdllm", "--set", "fwdllm.max-repeats=2"]
    assert main(["run", *args]) == 1  # stopped, as planned, at the ServerApp
    assert "stop before Flower starts" in capsys.readouterr().err
    assert given["fwdllm.max-repeats"] == 2  # typed, with the other defaults
    assert given["fwdllm.candidates"] == 10

    # The ServerApp resolves what it is given, then composes the strategy
    cfg = strategies.resolve(
        resolve(
            {
                **given,
                "num-clients": 4,
                "clients-per-round": 2,
                "eval-clients-per-round": 2,
            }
        )
    )
    fleet = Fleet([DeviceProfile("host", float("inf"), 1.0)] * 4)
    strategy = compose_strategy(cfg, {10 + p: p for p in range(4)}, [], fleet)
    assert type(strategy).__name__ == "FwdLLM" and strategy.max_repeats == 2


def test_devices_lists_the_catalogue_and_a_file_adds_to_it(tmp_path, capsys):
    catalog = tmp_path / "mine.toml"
    catalog.write_text("[watch-1gb]\nbudget-mib = 400\nspeed = 0.05\n")
    assert main(["devices", "--catalog", str(catalog)]) == 0
    lines = (line.split() for line in capsys.readouterr().out.splitlines()[1:])
    rows = {parts[0]: parts[1:] for parts in lines if len(parts) == 3}
    assert rows["phone-4gb"] == ["1536", "0.2"]
    assert rows["watch-1gb"] == ["400", "0.05"]
    catalog.write_text("[watch]\nram = 1\n")
    assert main(["devices", "--catalog", str(catalog)]) == 2
    error = capsys.readouterr().err
    assert "[watch] should hold `budget-mib`" in error and error.count("\n") == 1


def test_the_console_script_runs_the_cli_package():
    script = os.path.join(os.path.dirname(sys.executable), "spry")
    done = subprocess.run(
        [script, "run", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--resume PATH" in done.stdout


def test_a_run_that_wrote_no_summary_is_not_an_earlier_runs_success(tmp_path):
    """The exit status reads this run's summary, never an older one in the folder."""
    import json
    import time

    earlier = tmp_path / "20260101-000000-spry"
    earlier.mkdir()
    (earlier / "summary.json").write_text(json.dumps({"status": "completed"}))
    cfg = resolve({"results-dir": str(tmp_path)})
    started = time.time() + 1.0  # this run starts after the earlier one finished

    assert cli.run._last_run_completed(cfg)  # no start given: the newest counts
    assert not cli.run._last_run_completed(cfg, since=started)
    this_run = tmp_path / "20260101-000100-spry"
    this_run.mkdir()
    (this_run / "summary.json").write_text(json.dumps({"status": "failed"}))
    assert not cli.run._last_run_completed(cfg, since=started - 60)
    (this_run / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert cli.run._last_run_completed(cfg, since=started - 60)
