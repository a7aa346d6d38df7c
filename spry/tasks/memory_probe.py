"""Measure one client of the run's task, in a fresh process, for the memory model.

`spry.memory_model.measure` starts `python -m spry.tasks.memory_probe REQUEST` so
that the process holds nothing but this client, as a device would, and reads the
JSON line it prints. The task says what a client holds (`Task.probe_inputs`: the
model it trains and its largest batch); this module trains a slice of it for two
local steps with the run's engine and reports the peak.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

from ..config import ConfigValue, RunConfig


def probe(
    cfg: RunConfig, names: Sequence[str], context: Mapping[str, ConfigValue]
) -> dict:
    """Measure, in this process, the peak of a client training `names` (stable).

    The peak is the resident-set high-water mark of the larger of the two steps
    (interpreter, torch and the weights included), measured as a simulation client
    measures its steps (`spry.memory.StepPeaks`); on CUDA it is
    `max_memory_allocated`, GPU memory only (a Jetson's unified memory also holds
    the process's CPU side, which this leaves out).
    """
    import torch

    from ..memory import StepPeaks, make_resident
    from ..training import make_client_engine, train_slice, warm_up
    from . import load_task

    torch.set_num_threads(cfg.runtime.client_num_cpus)
    gpu = cfg.runtime.client_num_gpus > 0 and torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    task = load_task(cfg)
    trainable, batch = task.probe_inputs(device, context)
    make_resident(trainable.model)
    engine = make_client_engine(cfg.client)
    # as a client and the benchmark: start-up cost in the baseline, not the step
    warm_up(trainable, list(names), batch, loss=task.loss, engine=engine)
    step = StepPeaks(device)
    step.start()
    train_slice(
        trainable,
        list(names),
        lambda epoch: [batch, batch],
        loss=task.loss,
        engine=engine,
        cfg=cfg.client,
        seed=cfg.runtime.seed,
        server_round=1,
        partition_id=0,
        peaks=step,
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


def main(request_json: str) -> None:
    request = json.loads(request_json)
    cfg = RunConfig.from_run_config(request["config"])
    result = probe(cfg, request["names"], request["context"])
    print(json.dumps({**result, "engine": cfg.client.engine}), flush=True)


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    main(sys.argv[1])
