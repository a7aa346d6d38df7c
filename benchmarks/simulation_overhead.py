"""What Flower's simulation engine costs: a round there vs the same work in a loop.

One script, one machine, same rounds: first `spry run` (the ServerApp and ClientApp
in Flower's simulation engine with Ray workers), then the same strategy and the
same ClientApp function called directly, client after client, in this process.
Both record each round's training wall time the same way, inside the strategy,
from configure_train to the end of aggregate_train (sending, every client's work,
receiving, aggregating). Round 1 pays for starting workers and loading the model
in both, so the comparison uses the rounds after it.

Fair concurrency matters more than anything here: Ray runs `cpu_count /
client-num-cpus` clients at once. The default comparison gives each client every
core (one Ray worker) and the loop the same torch threads; `--client-cpus 1` also
runs the parallel layout, where the engine should beat the loop.

    python -m benchmarks.simulation_overhead                # 100 clients, 10 a round
    python -m benchmarks.simulation_overhead --rounds 6 --client-cpus 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from spry.jsonfile import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def settings(args: argparse.Namespace, client_cpus: int) -> dict[str, Any]:
    return {
        "num-server-rounds": args.rounds,
        "num-clients": args.clients,
        "clients-per-round": args.per_round,
        "eval-clients-per-round": 0,
        "eval-every": 10_000,  # central evaluation only after round 0 and the last
        "center-features": False,  # no statistics round before round 1
        "client-num-cpus": client_cpus,
        "seed": args.seed,
    }


def flower_rounds(overrides: dict[str, Any], results: Path) -> list[float]:
    """Per-round training wall seconds of a `spry run` with `overrides`."""
    from cli.run import run

    code = run({**overrides, "results-dir": str(results)})
    if code != 0:
        raise RuntimeError(f"spry run failed with exit code {code}")
    (log,) = results.glob("*/rounds.json")
    rounds = json.loads(log.read_text())
    return [rounds[str(r)]["train-wall-seconds"] for r in range(1, len(rounds) + 1)]


def loop_rounds(overrides: dict[str, Any]) -> list[float]:
    """The same rounds with the ClientApp's train function called in a loop."""
    import torch
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from clients.client_app import train
    from spry import protocol
    from spry.config import RunConfig, default_values
    from spry.data import load_for
    from spry.models import build_classifier, is_head
    from strategies import STRATEGIES

    cfg = RunConfig.from_run_config({**default_values(), **overrides})
    torch.set_num_threads(cfg.runtime.client_num_cpus)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    data = load_for(cfg.data)
    trainable = build_classifier(
        cfg.model, num_labels=data.num_labels, seed=cfg.runtime.seed
    )
    head = [n for n in trainable.names if is_head(n)]
    partitions = {10_000 + p: p for p in range(cfg.data.num_clients)}
    strategy = STRATEGIES[cfg.strategy.strategy].from_run(cfg, partitions, head)
    contexts = {
        node: Context(
            run_id=1,
            node_id=node,
            node_config={
                protocol.PARTITION_ID: p,
                protocol.NUM_PARTITIONS: cfg.data.num_clients,
            },
            state=RecordDict(),
            run_config={},
        )
        for node, p in partitions.items()
    }
    arrays = ArrayRecord({k: Array(v) for k, v in trainable.state().items()})
    for server_round in range(1, cfg.runtime.num_server_rounds + 1):
        messages = strategy.configure_train(
            server_round, arrays, ConfigRecord(), grid=None
        )
        replies = [train(m, contexts[m.metadata.dst_node_id]) for m in messages]
        new, _ = strategy.aggregate_train(server_round, replies)
        arrays = new if new is not None else arrays
    return [
        strategy.round_log[r]["train-wall-seconds"]
        for r in range(1, cfg.runtime.num_server_rounds + 1)
    ]


def compare(args: argparse.Namespace, client_cpus: int) -> dict[str, Any]:
    overrides = settings(args, client_cpus)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        flower = flower_rounds(overrides, Path(tmp))
        flower_total = time.perf_counter() - started
    started = time.perf_counter()
    loop = loop_rounds(overrides)
    loop_total = time.perf_counter() - started
    # Round r samples the same clients in both, with very different partition
    # sizes from round to round: compare the same rounds, 2 onwards, in total.
    steady_flower, steady_loop = sum(flower[1:]), sum(loop[1:])
    return {
        "client-num-cpus": client_cpus,
        "workers": max((os.cpu_count() or 1) // client_cpus, 1),
        "flower-round-seconds": flower,
        "loop-round-seconds": loop,
        "flower-seconds-after-round-1": steady_flower,
        "loop-seconds-after-round-1": steady_loop,
        "ratio": steady_flower / steady_loop,
        "flower-process-seconds": flower_total,
        "loop-process-seconds": loop_total,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Simulation overhead: Flower's engine vs a plain loop",
        "",
        f"{result['clients']} clients, {result['per-round']} per round, "
        f"{result['rounds']} rounds, default model and engine; training wall time "
        "(configure_train to aggregate_train) of rounds 2+, summed: the same rounds "
        "and clients in both. "
        f"{result['machine']}, {result['cpus']} CPUs.",
        "",
        "| client CPUs | Ray workers | Flower s | loop s | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["layouts"]:
        lines.append(
            f"| {row['client-num-cpus']} | {row['workers']} | "
            f"{row['flower-seconds-after-round-1']:.1f} | "
            f"{row['loop-seconds-after-round-1']:.1f} | {row['ratio']:.3f} |"
        )
    lines += [
        "",
        "Ratio below 1: the engine ran clients in parallel that the loop ran one "
        "after another. Round 1 (worker start, model load) is left out of both.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--client-cpus",
        type=int,
        action="append",
        help="client-num-cpus layouts to compare (default: all cores per client)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "simulation_overhead")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    layouts = args.client_cpus or [os.cpu_count() or 1]
    result = {
        "clients": args.clients,
        "per-round": args.per_round,
        "rounds": args.rounds,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "layouts": [compare(args, c) for c in layouts],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
