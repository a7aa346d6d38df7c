"""`spry run`: resolve the config, check it can run, simulate, stop every worker.

It runs the same ServerApp and ClientApp as `flwr run .` (loaded by the component
names in pyproject.toml) in Flower's simulation engine, in this process, and stops
every worker it started on the way out, also on Ctrl-C and on errors.

Order matters for how fast bad input is reported: `spry.resolve` checks the values
first (no torch), then the registries; the strategy and its options, the task's
model and data and the device plan come next; Flower starts last. The heavy imports
are therefore inside the functions, after the checks that need none of them.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from spry.config import ConfigValue, RunConfig, default_values
from spry.resolve import resolve

SERVER_APP_FACTORY = "server.server_app:make_server_app"
CLIENT_APP = "clients.client_app:app"


def _load(component: str) -> object:
    module, attr = component.split(":")
    return getattr(importlib.import_module(module), attr)


def preflight(cfg: RunConfig) -> RunConfig:
    """Check what the library cannot, build the task's model and test data once.

    Returns `cfg` with the strategy's options typed and completed (the config the
    ServerApp is given), so a bad strategy name or option fails here, in one line.
    """
    import strategies
    from spry.devices import plan_fleet
    from spry.tasks import load_task

    cfg = strategies.resolve(cfg)  # the strategy and its options: above the library
    if cfg.runtime.resume:  # a config the checkpoint's run did not have fails here
        from server.checkpoint import load

        load(cfg.runtime.resume).check_config(cfg)
    task = load_task(cfg)
    trainable = task.model()
    task.test_data()
    head = task.head_names(trainable.names)
    plan_fleet(cfg, list(trainable.names), head, task)  # fits somewhere?
    return cfg


def run(overrides: dict[str, ConfigValue]) -> int:
    """Run one simulation; 0 on success."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cfg = resolve({**_base_values(overrides), **overrides})
    cfg = preflight(cfg)
    # Ray's raylet and workers inherit this process's environment: the workers then
    # start under the live allocator, so a client's step peak is its live memory
    # (glibc reads it only at start-up: it has no effect on this process itself)
    from spry.memory import LIVE_ENV

    os.environ.update(LIVE_ENV)
    from flwr.simulation import run_simulation

    server_app = _load(SERVER_APP_FACTORY)(cfg.to_mapping())  # type: ignore[operator]
    client_app = _load(CLIENT_APP)
    backend_config = {
        "client_resources": {
            "num_cpus": cfg.runtime.client_num_cpus,
            "num_gpus": cfg.runtime.client_num_gpus,
        },
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }
    started = time.time()
    try:
        with _ctrl_c_stops_every_worker():
            run_simulation(
                server_app=server_app,  # type: ignore[arg-type]
                client_app=client_app,  # type: ignore[arg-type]
                num_supernodes=cfg.data.num_clients,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
    finally:
        _stop_ray()
    return 0 if _last_run_completed(cfg, since=started) else 1


def _base_values(overrides: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
    """The defaults, or a resumed run's own config (flags then only repeat it)."""
    resume = str(overrides.get("resume", ""))
    if not resume:
        return default_values()
    from server.checkpoint import read_config

    return {**default_values(), **read_config(resume)}


@contextmanager
def _ctrl_c_stops_every_worker() -> Iterator[None]:
    """On Ctrl-C, kill the processes this run started and exit 130 at once.

    A KeyboardInterrupt raised into Flower would unwind only the main thread: the
    ServerApp thread and the engine's worker threads keep calling Ray, and one that
    touches Ray after `ray.shutdown()` makes Ray's core end the process with status 1.
    So the handler does not unwind anything: what was measured is already on disk
    (results are written every round), and Ray's processes are our descendants.
    """

    def interrupt(signum: int, frame: object) -> None:
        print("spry: interrupted; stopping workers", file=sys.stderr, flush=True)
        _kill_descendants()
        sys.stdout.flush()
        os._exit(130)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _kill_descendants() -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)


def _stop_ray() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def _last_run_completed(cfg: RunConfig, since: float = 0.0) -> bool:
    """Whether this run's results folder says it completed.

    This run's folder is the newest one written since `since` (the run's start): a
    run that failed before writing its summary must not borrow the status of an
    earlier run in the same results folder.
    """
    import json
    from pathlib import Path

    root = Path(cfg.runtime.results_dir)
    summaries = sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if cfg.runtime.resume:  # a resumed run finishes in its own folder
        from server.checkpoint import checkpoint_path

        summaries = [checkpoint_path(cfg.runtime.resume).parent / "summary.json"]
    if not summaries or not summaries[-1].exists():
        return False
    if summaries[-1].stat().st_mtime < since:
        return False
    return json.loads(summaries[-1].read_text()).get("status") == "completed"
