"""`spry`: run a federated simulation, or list the configuration keys.

    spry run                          # the default: Spry on MiniLM + Rotten Tomatoes
    spry run --rounds 5 --clients 20 --per-round 5 --set lr=1e-3
    spry run --resume results/RUN     # continue a killed run from its checkpoint
    spry config                       # every key, its default and what it means
    spry devices                      # the device profiles a run can simulate
    spry tasks                        # the registered tasks (`spry run --task NAME`)

`spry run` checks the whole config, the model and the dataset before starting any
process, so bad input costs one line of error, not a traceback from a worker. This
module imports only what parsing and the config's own checks need (no torch, no
Flower), so a bad flag is reported at once; `cli.run` loads the rest after it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from spry.config import ConfigError, ConfigValue
from spry.engines import ENGINES
from spry.methods import METHODS, method_overrides

from .listings import print_config, print_devices, print_tasks
from .run import run

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


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parse_set(items: Sequence[str]) -> dict[str, ConfigValue]:
    values: dict[str, ConfigValue] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def overrides_from_args(args: argparse.Namespace) -> dict[str, ConfigValue]:
    """A run's overrides (later wins): task, method, task x method, flags, --set."""
    method = method_overrides(args.method) if args.method else {}
    user: dict[str, ConfigValue] = {}
    for flag, key in _SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            user[key] = value
    user.update(_parse_set(args.set or []))
    task_name = user.get("task", method.get("task"))
    if task_name is None:
        return {**method, **user}
    from spry.tasks import get  # the task's own settings: loading it takes seconds

    task = get(str(task_name))
    tuned = task.method_defaults.get((args.method or "spry").lower(), {})
    return {**task.run_defaults, **method, **tuned, **user}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spry", description=__doc__.split("\n")[0])
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
    run_p.add_argument("--engine", choices=tuple(ENGINES))
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
