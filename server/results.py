"""A run's results folder: config, per-round metrics, a plot, a summary.

Everything is written as the run goes (metrics appended and the plot redrawn after
each round), so a run that crashes or is interrupted keeps what it measured.

The JSON files are standard JSON that any reader accepts: no `Infinity` or `NaN`
(Python's json module writes them by default). A quantity without a finite value is
`null`, and its key names the unit (`"budget-mib": null`: no budget).
"""

from __future__ import annotations

import csv
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from spry.config import RunConfig
from spry.devices import Fleet
from spry.jsonfile import write_json
from spry.memory import cpu_peak_bytes
from spry.methods import method_of

# Columns copied from the strategy's round log as they are
_FROM_ROUND_LOG = (
    "dropped",
    "dropped-crash",
    "dropped-timeout",
    "dropped-late",
    "dropped-invalid",
    "dropped-empty",
    "dropped-error",
    "over-budget",
    "orphan-groups",
    "reassigned-groups",
    "coverage-trained",
)
COLUMNS = (
    "round",
    "test-accuracy",
    "test-loss",
    "test-macro-f1",
    "test-balanced-accuracy",
    "majority-rate",
    "federated-accuracy",
    "federated-loss",
    # The paper's metric (`eval-finetune-epochs` > 0): the same clients' held-out
    # scores after each fine-tuned a copy on its own training part
    "federated-finetuned-accuracy",
    "federated-finetuned-loss",
    "train-loss",
    "clients",
    *_FROM_ROUND_LOG,
    # The largest client step's peak: the worker's whole RSS at it, and its extra
    # above the worker's baseline (weights resident, just before local training:
    # the step's own memory, as `python -m benchmarks.memory` measures it), that
    # step's batch length, and whether every client ran the live allocator (0: the
    # extra also holds allocator history; not comparable with the benchmark)
    "client-peak-mib",
    "client-peak-extra-mib",
    "client-step-tokens",
    "client-live-allocator",
    "client-train-seconds-max",
    "upload-bytes-per-client",
    "forward-passes",
    "round-seconds",
    "train-wall-seconds",
    "device-round-seconds",
    "elapsed-seconds",
)

_PACKAGES = ("torch", "flwr", "transformers", "peft", "datasets", "numpy")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


@dataclass
class RunRecorder:
    """Writes one run's results under `directory` and prints a line per round."""

    directory: Path
    num_rounds: int
    majority_rate: float | None  # the task's reference line, when it has one
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # extra summary fields
    fleet: Fleet | None = None  # the clients' devices, for the per-profile summary
    started: float = field(default_factory=time.time)
    last: float = field(default_factory=time.time)

    @classmethod
    def create(
        cls, cfg: RunConfig, *, reference: Mapping[str, float] | None = None
    ) -> RunRecorder:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run = f"{method_of(cfg)}-{cfg.client.engine}-seed{cfg.runtime.seed}"
        name = f"{stamp}-{run}"
        directory = Path(cfg.runtime.results_dir) / name
        suffix = 1
        while directory.exists():
            directory = Path(cfg.runtime.results_dir) / f"{name}-{suffix}"
            suffix += 1
        directory.mkdir(parents=True)
        _write_manifest(directory, cfg)
        with open(directory / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh).writerow(COLUMNS)
        log(INFO, "Results folder: %s", directory)
        return cls(
            directory=directory,
            num_rounds=cfg.runtime.num_server_rounds,
            majority_rate=(reference or {}).get("majority-rate"),
        )

    @classmethod
    def reopen(
        cls,
        directory: Path,
        cfg: RunConfig,
        state: Mapping[str, Any],
        *,
        reference: Mapping[str, float] | None = None,
    ) -> RunRecorder:
        """Continue a resumed run's results in its own folder, from `state`.

        metrics.csv is rewritten from the checkpoint's rows: a run killed after
        the checkpoint may have appended a row for a round that runs again.
        Elapsed time continues from the checkpoint's (the downtime is left out).
        """
        if not (directory / "config.json").exists():
            _write_manifest(directory, cfg)
        recorder = cls(
            directory=directory,
            num_rounds=cfg.runtime.num_server_rounds,
            majority_rate=(reference or {}).get("majority-rate"),
            rows=[dict(row) for row in state["rows"]],
            notes=dict(state["notes"]),
            started=time.time() - float(state["elapsed-seconds"]),
        )
        with open(directory / "metrics.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for row in recorder.rows:
                writer.writerow(["" if row.get(c) is None else row[c] for c in COLUMNS])
        log(INFO, "Results folder (resumed): %s", directory)
        return recorder

    def checkpoint_state(self) -> dict[str, Any]:
        """What `reopen` needs: the rows so far, the notes, the elapsed time."""
        return {
            "rows": self.rows,
            "notes": self.notes,
            "elapsed-seconds": time.time() - self.started,
        }

    def record(
        self,
        server_round: int,
        central: Mapping[str, float],
        round_log: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Append one round's row, redraw the plot, print a progress line."""
        now = time.time()
        train = round_log.get("train", {})
        federated = round_log.get("federated-evaluate", {})
        row: dict[str, Any] = {
            "round": server_round,
            "test-accuracy": central["accuracy"],
            "test-loss": central["loss"],
            # Imbalanced data: scores that a majority-class guess cannot inflate
            "test-macro-f1": central.get("macro-f1"),
            "test-balanced-accuracy": central.get("balanced-accuracy"),
            "majority-rate": self.majority_rate,
            "federated-accuracy": federated.get("accuracy"),
            "federated-loss": federated.get("loss"),
            "federated-finetuned-accuracy": federated.get("finetuned-accuracy"),
            "federated-finetuned-loss": federated.get("finetuned-loss"),
            "train-loss": train.get("train-loss"),
            "clients": train.get("clients"),
            **{key: round_log.get(key) for key in _FROM_ROUND_LOG},
            "client-peak-mib": _mib(train.get("peak-mem-total-bytes-max")),
            "client-peak-extra-mib": _mib(train.get("peak-mem-bytes-max")),
            "client-step-tokens": train.get("peak-step-tokens"),
            "client-live-allocator": train.get("live-allocator-min"),
            "client-train-seconds-max": train.get("train-seconds-max"),
            "upload-bytes-per-client": train.get("upload-bytes-mean"),
            "forward-passes": train.get("forward-passes"),
            "round-seconds": now - self.last if server_round else 0.0,
            "train-wall-seconds": round_log.get("train-wall-seconds"),
            "device-round-seconds": round_log.get("device-seconds"),
            "elapsed-seconds": now - self.started,
        }
        # Every number the task's evaluation returned, its paper's metrics with
        # names the CSV's fixed columns do not have (SEP's base/new/H, Conifer's
        # per-level accuracies): evaluations.json, one entry a recorded round
        row["task-metrics"] = {
            key: float(value)
            for key, value in central.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        rejected = len(round_log.get("rejected") or {})  # not a CSV column
        self.last = now
        self.rows.append(row)
        with open(self.directory / "metrics.csv", "a", newline="") as fh:
            csv.writer(fh).writerow(["" if row[c] is None else row[c] for c in COLUMNS])
        write_json(
            self.directory / "evaluations.json",
            [{"round": r["round"], **r.get("task-metrics", {})} for r in self.rows],
            indent=1,
        )
        self._print(row, rejected)
        self.plot()
        return row

    def _print(self, row: Mapping[str, Any], rejected: int = 0) -> None:
        done = row["round"]
        eta = ""
        if done:
            per_round = (
                row["elapsed-seconds"] - self.rows[0]["elapsed-seconds"]
            ) / done
            eta = f" | ETA {_duration(per_round * (self.num_rounds - done))}"
        accuracy = f"test acc {100 * row['test-accuracy']:.1f}%"
        if self.majority_rate is not None:
            accuracy += f" (majority {100 * self.majority_rate:.1f}%)"
        parts = [
            f"round {done}/{self.num_rounds}",
            accuracy,
        ]
        if row.get("test-macro-f1") is not None:
            parts.append(f"macro-F1 {100 * row['test-macro-f1']:.1f}%")
        parts.append(f"test loss {row['test-loss']:.4f}")
        if row["federated-accuracy"] is not None:
            fed = f"fed acc {100 * row['federated-accuracy']:.1f}%"
            if row.get("federated-finetuned-accuracy") is not None:
                fed += f" (fine-tuned {100 * row['federated-finetuned-accuracy']:.1f}%)"
            parts.append(fed)
        if row["train-loss"] is not None:
            parts.append(f"train loss {row['train-loss']:.4f}")
        if row["client-peak-extra-mib"] is not None:
            step = f"client step peak +{row['client-peak-extra-mib']:.1f} MiB"
            if row.get("client-step-tokens"):
                step += f" at {row['client-step-tokens']} tokens"
            if row.get("client-live-allocator") == 0:
                step += " (not live: allocator history included)"
            parts.append(step)
        if row["client-peak-mib"] is not None:
            parts.append(f"worker RSS {row['client-peak-mib']:.0f} MiB")
        if row["dropped"]:
            parts.append(f"dropped {row['dropped']}")
        if rejected:  # each one's reason is in its WARNING line and rounds.json
            parts.append(f"rejected {rejected} invalid replies")
        if done:
            parts.append(f"{row['round-seconds']:.0f} s")
        log(INFO, "[spry] %s%s", " | ".join(parts), eta)

    def plot(self) -> Path:
        """Accuracy and loss per round, with the majority-class rate for reference."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        rounds = [r["round"] for r in self.rows]
        fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
        acc.plot(
            rounds,
            [100 * r["test-accuracy"] for r in self.rows],
            "o-",
            label="test (central)",
        )
        f1 = [
            (r["round"], 100 * r["test-macro-f1"])
            for r in self.rows
            if r.get("test-macro-f1") is not None
        ]
        if f1:
            acc.plot(*zip(*f1, strict=True), "^-", label="test macro-F1")
        fed = [
            (r["round"], 100 * r["federated-accuracy"])
            for r in self.rows
            if r["federated-accuracy"] is not None
        ]
        if fed:
            acc.plot(
                *zip(*fed, strict=True), "s--", label="clients' held-out (federated)"
            )
        tuned = [
            (r["round"], 100 * r["federated-finetuned-accuracy"])
            for r in self.rows
            if r.get("federated-finetuned-accuracy") is not None
        ]
        if tuned:
            acc.plot(
                *zip(*tuned, strict=True),
                "d:",
                label="clients' held-out, after fine-tuning (paper)",
            )
        if self.majority_rate is not None:
            acc.axhline(
                100 * self.majority_rate, color="grey", ls=":", label="majority class"
            )
        acc.set(xlabel="round", ylabel="%", title="Accuracy (and macro-F1)")
        acc.legend()
        loss.plot(rounds, [r["test-loss"] for r in self.rows], "o-", label="test loss")
        train = [
            (r["round"], r["train-loss"])
            for r in self.rows
            if r["train-loss"] is not None
        ]
        if train:
            loss.plot(*zip(*train, strict=True), "s--", label="client train loss")
        loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
        loss.legend()
        for axis in (acc, loss):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(self.directory.name)
        fig.tight_layout()
        path = self.directory / "plot.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def finish(
        self,
        status: str = "completed",
        round_log: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> Path:
        """Write summary.json (and rounds.json, the strategy's log); return its path.

        The summary holds final and best accuracy, time, dropouts, memory per
        device profile and the driver's peak memory.
        """
        summary: dict[str, Any] = {
            "status": status,
            "rounds-recorded": len(self.rows),
            **self.notes,
            "driver-peak-rss-mib": cpu_peak_bytes() / 2**20,
        }
        if round_log:
            # Every round's log, evaluated or not: sampled partitions, faults,
            # drops, coverage, per-client peaks, wall and device time
            write_json(
                self.directory / "rounds.json",
                {str(r): e for r, e in sorted(round_log.items())},
                indent=1,
            )
            summary["dropouts"] = _dropouts(round_log)
            # Round -> partition -> why its reply was rejected (rounds with any)
            summary["rejected-replies"] = {
                str(r): dict(e["rejected"])
                for r, e in sorted(round_log.items())
                if e.get("rejected")
            }
            summary["device-seconds"] = sum(
                e.get("device-seconds", 0.0) for e in round_log.values()
            )
            if self.fleet is not None:
                summary["profiles"] = profile_summary(self.fleet, round_log)
                _log_profiles(summary["profiles"])
        if self.rows:
            final = self.rows[-1]
            summary["client-step-peak"] = client_step_peak(self.rows)
            summary.update(
                {
                    "final-test-accuracy": final["test-accuracy"],
                    "best-test-accuracy": max(r["test-accuracy"] for r in self.rows),
                    "initial-test-accuracy": self.rows[0]["test-accuracy"],
                    "final-test-macro-f1": final.get("test-macro-f1"),
                    "final-test-balanced-accuracy": final.get("test-balanced-accuracy"),
                    "final-federated-accuracy": final.get("federated-accuracy"),
                    # The paper's metric; null unless `eval-finetune-epochs` > 0
                    "final-federated-finetuned-accuracy": final.get(
                        "federated-finetuned-accuracy"
                    ),
                    "majority-rate": self.majority_rate,
                    "wall-seconds": final["elapsed-seconds"],
                }
            )
        path = self.directory / "summary.json"
        write_json(path, summary)
        return path


def _write_manifest(directory: Path, cfg: RunConfig) -> None:
    manifest = {
        "method": method_of(cfg),
        "task": cfg.task.task,
        "config": cfg.to_mapping(),
        "versions": _versions(),
        "machine": platform.platform(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(directory / "config.json", manifest)


def _dropouts(round_log: Mapping[int, Mapping[str, Any]]) -> dict[str, int]:
    keys = [k for k in _FROM_ROUND_LOG if k.startswith("dropped") or "groups" in k]
    return {k: sum(int(e.get(k) or 0) for e in round_log.values()) for k in keys}


def profile_summary(
    fleet: Fleet, round_log: Mapping[int, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per device profile: clients, client-rounds trained, and peak memory.

    Predicted is the memory model's peak for the slice a client was sent (what the
    budget check used: a fresh process's whole peak). Measured is what the client
    reported: its largest step's peak above its worker's baseline
    (`measured-extra-mib-max`) and the worker's whole RSS (Ray's worker included,
    not a device's process). With a memory model, a device's measured peak is the
    model's own baseline (the probe process before its steps: interpreter, torch,
    weights) plus the measured step extra, beside the predicted one; a client-round
    whose measured peak exceeds its device's memory is counted in
    `client-rounds-over-budget` and flagged `measured-exceeds-budget`.
    """
    memory = fleet.memory
    baseline = None if memory is None else memory.baseline_bytes
    table: dict[str, dict[str, Any]] = {}
    for profile in fleet.profiles:
        row = table.setdefault(
            profile.name,
            {
                # null: no budget (the host, or a catalogue entry without a limit)
                "budget-mib": _finite_or_none(profile.budget_mib),
                "speed": profile.speed,
                "clients": 0,
                "client-rounds-trained": 0,
                "slice-tensors-max": 0,
                "predicted-peak-mib-max": None,
                "measured-peak-mib-max": None,
                "predicted-extra-mib-max": None,
                "measured-extra-mib-max": None,
                "measured-worker-rss-mib-max": None,
                "client-rounds-over-budget": 0,
                "measured-exceeds-budget": False,
            },
        )
        row["clients"] += 1
    for entry in round_log.values():
        # (partition, tensors, extra, total, predicted[, tokens]) per client-round
        for partition, tensors, extra, total, predicted, *_ in entry.get("peaks", []):
            profile = fleet.profiles[partition]
            row = table[profile.name]
            row["client-rounds-trained"] += 1
            row["slice-tensors-max"] = max(row["slice-tensors-max"], tensors)
            measured = None if baseline is None else baseline + extra
            for key, value in (
                ("predicted-peak-mib-max", predicted),
                ("measured-peak-mib-max", measured),
                (
                    "predicted-extra-mib-max",
                    None if predicted is None or baseline is None
                    else predicted - baseline,
                ),
                ("measured-extra-mib-max", extra),
                ("measured-worker-rss-mib-max", total),
            ):  # fmt: skip
                if value is not None:
                    mib = value / 2**20
                    row[key] = mib if row[key] is None else max(row[key], mib)
            if measured is not None and measured > profile.budget_bytes:
                row["client-rounds-over-budget"] += 1
                row["measured-exceeds-budget"] = True
    return table


def _log_profiles(table: Mapping[str, Mapping[str, Any]]) -> None:
    for name, row in table.items():
        log(
            INFO,
            "[spry] %-12s budget %s | %d clients | %d client-rounds | "
            "slices up to %d tensors | peak predicted %s, measured %s MiB | "
            "step extra predicted %s, measured %s MiB | worker RSS %s MiB",
            name,
            "none" if row["budget-mib"] is None else f"{row['budget-mib']:.0f} MiB",
            row["clients"],
            row["client-rounds-trained"],
            row["slice-tensors-max"],
            _fmt(row["predicted-peak-mib-max"]),
            _fmt(row["measured-peak-mib-max"]),
            _fmt(row["predicted-extra-mib-max"]),
            _fmt(row["measured-extra-mib-max"]),
            _fmt(row["measured-worker-rss-mib-max"]),
        )
        if row["measured-exceeds-budget"]:
            log(
                WARNING,
                "[spry] %s: %d client-rounds measured a peak (%s MiB) above the "
                "device's memory (%s MiB): the memory model under-predicted them",
                name,
                row["client-rounds-over-budget"],
                _fmt(row["measured-peak-mib-max"]),
                _fmt(row["budget-mib"]),
            )


def client_step_peak(rows: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The run's largest client step peak, over its trained rounds (None: none).

    `extra-mib` is the step's own memory above the worker's baseline (what the
    memory benchmark reports for a shape); `tokens` the batch length it had;
    `worker-rss-mib` the worker's whole resident set at its peak step (Ray,
    Python, torch and the model included); `live-allocator` false when some
    client's allocator kept freed memory (the extra is then not comparable).
    """
    trained = [r for r in rows if r.get("client-peak-extra-mib") is not None]
    if not trained:
        return None
    peak = max(trained, key=lambda r: r["client-peak-extra-mib"])
    live = [r.get("client-live-allocator") for r in trained]
    return {
        "extra-mib": peak["client-peak-extra-mib"],
        "tokens": peak.get("client-step-tokens"),
        "round": peak["round"],
        "worker-rss-mib": max(r["client-peak-mib"] or 0.0 for r in trained),
        "live-allocator": None if None in live else all(live),
        "how": "largest single training step's peak RSS above the worker's "
        "baseline (weights resident, freed memory returned, taken just before "
        "local training); max over the run's clients and rounds",
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
