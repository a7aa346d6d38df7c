"""How much memory a client needs to train a slice: measured, then interpolated.

A device-budget check must say, before any work is sent, whether a client's process
would fit. The answer comes from the same measurement as the benchmark suite
(`benchmarks.memory`): a fresh process (`spry.tasks.memory_probe`) asks the run's
task for the model a client trains and its largest batch (`Task.probe_inputs`: for
the classifier, full-length sequences, the longest a client can see), makes the
weights resident, trains a slice for two local steps with the run's engine,
optimizer and batch size, and reports its resident-set high-water mark: what a
device's training process would hold at its peak (interpreter, torch, weights,
optimizer state and the step's activations).

Two slices are measured, the smallest a client can be sent and all trainable
tensors, and a client's peak is taken as linear in the number of parameters it
trains between them: each trained parameter adds its optimizer state, gradient and
tangents, the rest is fixed. Results are cached by setting under
`$SPRY_CACHE/memory-model/`, so a run measures once per task, model and engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import cache_root
from .memory import LIVE_ENV

if TYPE_CHECKING:
    from .config import ConfigValue, RunConfig
    from .tasks.base import Task

MIB = 2**20
PROBE_TIMEOUT = 900.0
# The fresh process that builds a client of the run's task and measures it: in the
# task layer, which knows tasks; this module only fits and caches what it reports
PROBE_MODULE = "spry.tasks.memory_probe"


@dataclass(frozen=True)
class MemoryModel:
    """A client's predicted peak bytes: fixed + per trained parameter.

    Parameters
    ----------
    fixed_bytes : float
        Peak with no trained parameters (process, frozen weights, the step's
        activations and tangents at the run's batch and length).
    per_param_bytes : float
        What each trained parameter adds (optimizer state, gradient, tangents).
    probes : tuple[dict, ...]
        The measurements it was fitted to.
    """

    fixed_bytes: float
    per_param_bytes: float
    probes: tuple[dict, ...] = ()

    def peak_bytes(self, params: int) -> float:
        return self.fixed_bytes + self.per_param_bytes * params

    @property
    def baseline_bytes(self) -> float | None:
        """The probe process before its steps (interpreter, torch, the weights).

        A client's step peak measured elsewhere (in a simulation worker) plus this
        is what a device's training process would hold (None: no probes).
        """
        if not self.probes:
            return None
        small = self.probes[0]
        return float(small["peak_bytes"] - small["step_extra_bytes"])

    @classmethod
    def fit(cls, small: dict, full: dict, num_tangents: int) -> MemoryModel:
        """The line through the two probes (`peak_bytes`, `params`).

        When the two differ by less than the measurement can resolve (LoRA slices
        of a few thousand parameters), the slope falls back to its floor: fp32
        AdamW moments, gradient and K tangents per parameter.
        """
        floor = 4.0 * (3 + num_tangents)
        d_params = full["params"] - small["params"]
        d_bytes = full["peak_bytes"] - small["peak_bytes"]
        slope = max(d_bytes / d_params if d_params > 0 else floor, floor)
        fixed = small["peak_bytes"] - slope * small["params"]
        return cls(fixed_bytes=fixed, per_param_bytes=slope, probes=(small, full))


def _cache_file(
    cfg: RunConfig,
    names: Sequence[str],
    task: Mapping[str, ConfigValue],
    context: Mapping[str, ConfigValue],
) -> Path:
    import torch

    key = json.dumps(
        {
            "task": dict(task),
            "context": dict(context),
            "model": cfg.model.to_mapping(),
            "client": cfg.client.to_mapping(),
            "cpus": cfg.runtime.client_num_cpus,
            "gpus": cfg.runtime.client_num_gpus > 0,
            "seed": cfg.runtime.seed,
            "names": list(names),
            "torch": torch.__version__,
            "python": sys.version_info[:2],
            "allocator": "live",  # probes before it ran as glibc comes
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root() / "memory-model" / f"{digest}.json"


def measure(
    cfg: RunConfig, names: Sequence[str], context: Mapping[str, ConfigValue]
) -> dict:
    """A client training `names`, measured in a fresh process (cached by setting).

    `context` is the task's `probe_context()`; `cfg` names the task and its options.
    """
    settings = {"name": cfg.task.task, **dict(cfg.task_options)}
    cache = _cache_file(cfg, names, settings, context)
    if cache.exists():
        return json.loads(cache.read_text())
    request = json.dumps(
        {"config": cfg.to_mapping(), "names": list(names), "context": dict(context)}
    )
    done = subprocess.run(
        [sys.executable, "-m", PROBE_MODULE, request],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        # Under the live allocator, as the simulation's workers and the benchmark
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **LIVE_ENV},
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the memory probe failed (exit {done.returncode}): {done.stderr[-2000:]}"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def calibrate(
    cfg: RunConfig, task: Task, smallest: Sequence[str], everything: Sequence[str]
) -> MemoryModel:
    """The memory model of `cfg`'s clients of `task`, from probes of two slices."""
    context = task.probe_context()
    small = measure(cfg, smallest, context)
    full = measure(cfg, everything, context)
    return MemoryModel.fit(small, full, cfg.client.num_tangents)
