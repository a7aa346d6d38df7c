"""How much memory a client needs to train a slice: measured, then interpolated.

A device-budget check must say, before any work is sent, whether a client's process
would fit. The answer comes from the same measurement as the benchmark suite
(`benchmarks.memory`): a fresh process builds the run's model, makes its weights
resident, and trains a slice for two local steps with the run's engine, optimizer,
batch size and full-length sequences (the longest a client can see), and reports
its resident-set high-water mark: what a device's training process would hold at
its peak (interpreter, torch, weights, optimizer state and the step's activations).

Two slices are measured, the smallest a client can be sent and all trainable
tensors, and a client's peak is taken as linear in the number of parameters it
trains between them: each trained parameter adds its optimizer state, gradient and
tangents, the rest is fixed. Results are cached by setting under
`$SPRY_CACHE/memory-model/`, so a run measures once per model and engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import cache_root

if TYPE_CHECKING:
    from .config import RunConfig

MIB = 2**20
PROBE_TIMEOUT = 900.0


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


def probe(cfg: RunConfig, names: Sequence[str], num_labels: int) -> dict:
    """Measure, in this process, the peak of a client training `names` (stable).

    Meant for a fresh process (`python -m spry.memory_model`) that holds nothing
    but this client, as a device would. The peak is the resident-set high-water
    mark during the two steps (interpreter, torch and the weights included); on
    CUDA it is `max_memory_allocated`, GPU memory only (a Jetson's unified memory
    also holds the process's CPU side, which this leaves out).
    """
    import torch

    from .classification import classification_loss
    from .memory import make_resident, release_free_memory, track_peak_memory
    from .models import build_classifier
    from .training import make_client_engine, train_slice

    torch.set_num_threads(cfg.runtime.client_num_cpus)
    gpu = cfg.runtime.client_num_gpus > 0 and torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    trainable = build_classifier(
        cfg.model, num_labels=num_labels, seed=cfg.runtime.seed, device=device
    )
    make_resident(trainable.model)
    batch = full_length_batch(trainable.tokenizer, cfg, num_labels, device)
    engine = make_client_engine(cfg.client)
    release_free_memory(device)
    with track_peak_memory(device) as step:
        train_slice(
            trainable,
            list(names),
            lambda epoch: [batch, batch],
            loss=classification_loss,
            engine=engine,
            cfg=cfg.client,
            seed=cfg.runtime.seed,
            server_round=1,
            partition_id=0,
        )
    live = trainable.parameters()
    return {
        "names": len(names),
        "params": sum(live[n].numel() for n in names),
        "peak_bytes": step.peak_bytes,
        "step_extra_bytes": step.extra_bytes,
        "step_seconds": step.seconds / 2,
        "device": device,
    }


def full_length_batch(tokenizer, cfg: RunConfig, num_labels: int, device: str) -> dict:
    """A batch of `batch-size` examples of `max-length` tokens (a client's worst)."""
    from .classification import move, tokenize

    text = " ".join(["memory"] * cfg.model.max_length)
    labels = [i % num_labels for i in range(cfg.client.batch_size)]
    texts = [text] * cfg.client.batch_size
    return move(tokenize(tokenizer, texts, labels, cfg.model.max_length), device)


def _cache_file(cfg: RunConfig, names: Sequence[str], num_labels: int) -> Path:
    import torch

    key = json.dumps(
        {
            "model": cfg.model.to_mapping(),
            "client": cfg.client.to_mapping(),
            "cpus": cfg.runtime.client_num_cpus,
            "gpus": cfg.runtime.client_num_gpus > 0,
            "seed": cfg.runtime.seed,
            "names": list(names),
            "labels": num_labels,
            "torch": torch.__version__,
            "python": sys.version_info[:2],
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_root() / "memory-model" / f"{digest}.json"


def measure(cfg: RunConfig, names: Sequence[str], num_labels: int) -> dict:
    """`probe` in a fresh process (cached by setting)."""
    cache = _cache_file(cfg, names, num_labels)
    if cache.exists():
        return json.loads(cache.read_text())
    request = json.dumps(
        {"config": cfg.to_mapping(), "names": list(names), "num_labels": num_labels}
    )
    done = subprocess.run(
        [sys.executable, "-m", "spry.memory_model", request],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
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
    cfg: RunConfig, smallest: Sequence[str], everything: Sequence[str], num_labels: int
) -> MemoryModel:
    """The memory model of `cfg`'s clients, from probes of two slices."""
    small = measure(cfg, smallest, num_labels)
    full = measure(cfg, everything, num_labels)
    return MemoryModel.fit(small, full, cfg.client.num_tangents)


def main(request_json: str) -> None:
    from .config import RunConfig

    request = json.loads(request_json)
    cfg = RunConfig.from_run_config(request["config"])
    result = probe(cfg, request["names"], int(request["num_labels"]))
    print(json.dumps({**result, "engine": cfg.client.engine}), flush=True)


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    main(sys.argv[1])
