"""`spry`: run a federated simulation, or list the configuration keys.

    spry run                          # the default: Spry on MiniLM + Rotten Tomatoes
    spry run --rounds 5 --clients 20 --per-round 5 --set lr=1e-3
    spry run --resume results/RUN     # continue a killed run from its checkpoint
    spry config                       # every key, its default and what it means
    spry devices                      # the device profiles a run can simulate
    spry tasks                        # the registered tasks (`spry run --task NAME`)

`spry run` checks the whole config, the model and the dataset before starting any
process, so bad input costs one line of error, not a traceback from a worker.
It runs the same ServerApp and ClientApp as `flwr run .` (loaded by the component
names in pyproject.toml) in Flower's simulation engine, in this process, and stops
every worker it started on the way out, also on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .config import ClientConfig, ConfigError, ConfigValue, RunConfig, default_values
from .methods import METHODS, method_overrides

SERVER_APP_FACTORY = "server.server_app:make_server_app"
CLIENT_APP = "clients.client_app:app"

_SHORTCUTS = {  # flag -> config key
    "rounds": "num-server-rounds",
    "clients": "num-clients",
    "per_round": "clients-per-round",
    "model": "model",
    "dataset": "dataset",
    "alpha": "alpha",
    "partitioner": "partitioner",
    "seed": "seed",
    "results_dir": "results-dir",
    "engine": "engine",
    "task": "task",
    "resume": "resume",
}


def _load(component: str) -> object:
    module, attr = component.split(":")
    return getattr(importlib.import_module(module), attr)


def _parse_set(items: Sequence[str]) -> dict[str, ConfigValue]:
    values: dict[str, ConfigValue] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def overrides_from_args(args: argparse.Namespace) -> dict[str, ConfigValue]:
    """The task's settings, the method's, the flags, then `--set` (later wins)."""
    overrides = method_overrides(args.method) if args.method else {}
    for flag, key in _SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    overrides.update(_parse_set(args.set or []))
    if "task" in overrides:
        from .tasks import get

        overrides = {**get(str(overrides["task"])).run_defaults, **overrides}
    return overrides


def preflight(cfg: RunConfig) -> None:
    """Build the task's model and test data once, so bad names fail here."""
    from .devices import plan_fleet
    from .tasks import load_task

    if cfg.runtime.resume:  # a config the checkpoint's run did not have fails here
        from server.checkpoint import load

        load(cfg.runtime.resume).check_config(cfg)
    task = load_task(cfg)
    trainable = task.model()
    task.test_data()
    head = task.head_names(trainable.names)
    plan_fleet(cfg, list(trainable.names), head, task)  # fits somewhere?


def run(overrides: dict[str, ConfigValue]) -> int:
    """Run one simulation; 0 on success."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cfg = RunConfig.from_run_config({**_base_values(overrides), **overrides})
    preflight(cfg)

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
    return 0 if _last_run_completed(cfg) else 1


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


def _last_run_completed(cfg: RunConfig) -> bool:
    """Whether the newest results folder of this config says it completed."""
    import json
    from pathlib import Path

    root = Path(cfg.runtime.results_dir)
    summaries = sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if cfg.runtime.resume:  # a resumed run finishes in its own folder
        from server.checkpoint import checkpoint_path

        summaries = [checkpoint_path(cfg.runtime.resume).parent / "summary.json"]
    if not summaries or not summaries[-1].exists():
        return False
    return json.loads(summaries[-1].read_text()).get("status") == "completed"


def print_config() -> None:
    for name, section in RunConfig.SECTIONS.items():
        print(f"[{name}]")
        for f in dataclasses.fields(section):
            help_text = f.metadata.get("help", "")
            print(f"  {f.name.replace('_', '-'):24} = {f.default!r:22} {help_text}")


def print_devices(catalog_path: str = "") -> None:
    from .devices import load_catalog

    print(f"{'profile':14} {'budget MiB':>10} {'speed':>6}")
    for profile in load_catalog(catalog_path).values():
        print(f"{profile.name:14} {profile.budget_mib:>10.0f} {profile.speed:>6g}")
    print(
        "\nbudget: peak memory its training process may use; speed: relative to one "
        "simulated client on this host.\nUse: --set device-profiles=phone-4gb:0.5,"
        "laptop-16gb:0.5 (add profiles with --set device-catalog=FILE.toml)"
    )


def print_tasks() -> None:
    """The registered tasks, one line each, and their options."""
    from .tasks import available, get

    for name in available():
        try:
            task = get(name)
        except ConfigError as error:
            print(f"{name:16s} (cannot load: {error})")
            continue
        print(f"{name:16s} {task.summary}")
        for option in task.Options.keys():
            default = getattr(task.Options(), option.replace("-", "_"))
            print(f"{'':16s}   {name}.{option} = {default!r}")
        if task.run_defaults:
            tuned = ", ".join(f"{k}={v}" for k, v in task.run_defaults.items())
            print(f"{'':16s}   run settings it applies: {tuned}")
    print(
        "\nUse: spry run --task NAME [--set NAME.OPTION=VALUE]; add a task with an "
        '[project.entry-points."spry.tasks"] entry in your package'
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spry", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run a federated simulation")
    run_p.add_argument(
        "--method",
        help=f"a named method: {', '.join(METHODS)} (default: spry's settings)",
    )
    run_p.add_argument("--rounds", type=int, help="federated rounds")
    run_p.add_argument("--clients", type=int, help="number of clients (partitions)")
    run_p.add_argument("--per-round", type=int, help="clients sampled per round")
    run_p.add_argument("--model", help="offline model name, HF id or local path")
    run_p.add_argument("--dataset", help="offline dataset name or HF dataset id")
    run_p.add_argument("--alpha", type=float, help="Dirichlet alpha (label skew)")
    run_p.add_argument("--partitioner", choices=["dirichlet", "iid"])
    run_p.add_argument("--engine", choices=ClientConfig.ENGINES)
    run_p.add_argument("--seed", type=int)
    run_p.add_argument("--task", help="a registered task (see `spry tasks`)")
    run_p.add_argument("--results-dir")
    run_p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue a run from its checkpoint (its results folder or "
        "checkpoint.npz), with its config; other flags must not change it",
    )
    run_p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config key (repeatable)",
    )
    sub.add_parser("config", help="list every config key with its default")
    sub.add_parser("tasks", help="list the registered tasks and their options")
    devices = sub.add_parser("devices", help="list the device profiles")
    devices.add_argument("--catalog", default="", help="TOML file of extra profiles")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        print_config()
        return 0
    if args.command == "tasks":
        print_tasks()
        return 0
    if args.command == "devices":
        try:
            print_devices(args.catalog)
        except ValueError as error:
            print(f"spry: error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        return run(overrides_from_args(args))
    except (ConfigError, ValueError, OSError) as error:  # one line, no traceback wall
        print(f"spry: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the engine started: nothing to stop
        print("spry: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the run started and failed; Flower logged the cause
        print(f"spry: error: the run failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
