"""One measurement point, in a process of its own: build, warm up, measure, time.

A high-water mark, allocator state or lazily built kernels left by one engine would
leak into the next one's number, so every point is a fresh interpreter
(`python -m benchmarks.memory --worker POINT_JSON`) printing one JSON record.

The step measured is a client's training step: the engine's gradient (estimate) for
the tensors it trains, then the optimizer update (AdamW; SGD for MeZO, which keeps
no state; none for inference). The worker builds the model, reads every weight once
(safetensors weights are mmapped and would otherwise fault into memory during the
step), runs one tiny step (batch 1, 8 tokens) of the same engine so that lazy
allocations and the optimizer state exist, takes the baseline, measures one step on
random token ids (no padding, labels random or the next tokens), then times further
steps apart from the measurement.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from spry.config import ClientConfig, StrategyConfig
from spry.memory import (
    LIVE_ENV,
    cpu_rss_bytes,
    make_resident,
    release_free_memory,
    tensor_bytes,
    track_peak_memory,
)
from spry.models import TrainableModel, is_head
from spry.models.quantized import weight_count

from .models import CAUSAL_LM, LABEL_WORDS, BenchModel, bench_model

MIB = 2**20
ENGINES = ("inference", "backprop", "backprop-checkpoint", "spry", "fedfgd", "mezo")
# Measured on request only (`--engines`): what a lever costs. spry-kN is Spry's
# client with N tangents in one vmapped pass; spry-kN-seq the same N tangents one
# jvp after another (`tangent-batch=1`): the same estimate, K = 1's memory.
# spry-unfused is Spry's client with PyTorch's per-operator forward-AD rules instead
# of the fused ones (`spry.engines.fused`): the before of that change. spry-bN is
# Spry's client with N MiB blocks for the fused rules (`fused-block-mib`; 2 by default).
LEVER_ENGINES = (
    "spry-k4", "spry-k8", "spry-k8-seq", "spry-unfused", "spry-b8", "spry-b32",
)  # fmt: skip
Batch = dict[str, torch.Tensor]
Record = dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One measurement: a model, an engine and a shape, in a fresh process."""

    model: str
    engine: str
    batch: int
    seq: int
    dtype: str = "float32"  # frozen base weights
    chunk: int = 0  # causal LMs: loss over this many positions at a time (0: all)
    allocator: str = "live"  # CPU: "live" (LIVE_ENV) or "glibc" (as it comes)
    timed: int = 0  # steps timed after the measured one
    device: str = "cpu"
    threads: int = 2

    def key(self) -> tuple:
        return tuple(asdict(self).values())


def random_batch(
    kind: str, vocab: int, batch: int, seq: int, *, device: str, seed: int
) -> Batch:
    """`seq` random token ids per example, no padding.

    Ids start at 3, so no special token appears (RoBERTa derives positions from
    where its pad token is). Binary labels for a classifier and for label words
    (the class whose word is the target), none for a causal LM (it predicts the
    next token).
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind != CAUSAL_LM:
        out["labels"] = torch.randint(0, 2, (batch,), generator=gen)
    return {k: v.to(device) for k, v in out.items()}


def spry_slice(trainable: TrainableModel) -> list[str]:
    """What the first client of a default Spry round trains (stable names)."""
    from spry.splitting import assign_groups, make_groups

    strategy = StrategyConfig()
    names = list(trainable.names)
    head = [n for n in names if is_head(n)] if strategy.share_head else []
    dealt = [n for n in names if n not in head]
    groups = make_groups(dealt, strategy.group_size)
    clients = list(range(strategy.clients_per_round))
    return assign_groups(groups, clients, shared=head)[0]


def make_engine_for(engine: str):
    """The gradient engine behind a suite engine name, and its scope.

    The scope is "slice" (Spry's first client's slice) or None (every tensor).
    """
    from spry.engines import ForwardGradient, make_engine

    if engine in ("spry", "spry-unfused") or engine[:6] in ("spry-k", "spry-b"):
        # the default client: K tangents (spry-kN: N), exact head, its slice
        client = ClientConfig()
        exact = is_head if client.head_gradient == "exact" else None
        k, _, sequential = engine[6:].partition("-")
        tangents = int(k) if engine.startswith("spry-k") else client.num_tangents
        blocks = float(k) if engine.startswith("spry-b") else client.fused_block_mib
        return ForwardGradient(
            num_tangents=tangents,
            distribution=client.tangent_distribution,
            tangent_batch=1 if sequential == "seq" else client.tangent_batch,
            exact=exact,
            fused=engine != "spry-unfused",
            block_mib=blocks,
        ), "slice"
    if engine == "fedfgd":  # forward gradient over every trainable tensor
        return ForwardGradient(num_tangents=1), None
    return make_engine(engine), None


def make_loss(model: BenchModel, chunk: int):
    """The task loss every engine of this model differentiates."""
    if model.kind == LABEL_WORDS:  # the lm-classification task's own loss
        from spry.tasks.lm_classification.scoring import as_ids, label_word_loss

        return partial(label_word_loss, label_ids=as_ids(model.label_ids))
    if model.kind == CAUSAL_LM:
        from spry.language_modeling import make_causal_lm_loss

        return make_causal_lm_loss(chunk)
    from spry.classification import classification_loss

    return classification_loss


def make_step(
    point: Point, model: BenchModel, trainable: TrainableModel
) -> tuple[Callable[[Batch], None], torch.optim.Optimizer | None, list[str]]:
    """One training step of `point.engine`, its optimizer, and what it trains."""
    loss = make_loss(model, point.chunk)
    net = trainable.model
    if point.engine == "inference":

        @torch.no_grad()
        def infer(batch: Batch) -> None:
            loss(net, batch)

        return infer, None, []
    estimator, scope = make_engine_for(point.engine)
    names = spry_slice(trainable) if scope == "slice" else list(trainable.names)
    live = {n: trainable.parameters()[n] for n in names}
    own = {trainable.own_name(n): p for n, p in live.items()}
    if point.engine == "mezo":  # MeZO's update is plain SGD: no optimizer state
        optimizer = torch.optim.SGD(list(live.values()), lr=1e-3)
    else:
        optimizer = torch.optim.AdamW(list(live.values()), lr=1e-3)
    device = point.device

    def step(batch: Batch) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        estimate = estimator.estimate(net, loss, batch, own, generator=gen)
        for name, param in own.items():
            param.grad = estimate.grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer, names


def timed(step: Callable[[Batch], None], batch: Batch, device: str) -> float:
    start = time.perf_counter()
    step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(point: Point) -> Record:
    """Build, warm up, measure one step, time `point.timed` more; one record."""
    torch.set_num_threads(point.threads)
    dev, started = point.device, time.perf_counter()
    model = bench_model(point.model)
    trainable = model.build(point.dtype, dev)
    net = trainable.model
    built = time.perf_counter() - started
    built_rss = cpu_rss_bytes() if not dev.startswith("cuda") else 0
    make_resident(net)
    step, optimizer, names = make_step(point, model, trainable)
    vocab = net.config.vocab_size
    step(random_batch(model.kind, vocab, 1, 8, device=dev, seed=1))  # warm-up
    batch = random_batch(model.kind, vocab, point.batch, point.seq, device=dev, seed=0)
    release_free_memory(dev)
    with track_peak_memory(dev) as report:
        step(batch)
    times = [timed(step, batch, dev) for _ in range(point.timed)]
    cuda = dev.startswith("cuda")
    weights = tensor_bytes([*net.parameters(), *net.buffers()])
    state = [] if optimizer is None else optimizer.state.values()
    optimizer_bytes = tensor_bytes(
        t for s in state for t in s.values() if torch.is_tensor(t) and t.dim() > 0
    )
    trainable_params = trainable.parameters()
    return {
        **asdict(point),
        "kind": model.kind,
        "weights": model.weights,
        "extra_mib": report.extra_bytes / MIB,
        "rss_peak_mib": report.peak_bytes / MIB,
        "baseline_mib": report.baseline_bytes / MIB,
        "weights_mib": weights / MIB,
        "optimizer_mib": optimizer_bytes / MIB,
        "runtime_mib": max(report.baseline_bytes - weights - optimizer_bytes, 0) / MIB,
        "total_mib": (weights + optimizer_bytes + report.extra_bytes) / MIB,
        "exact": report.exact,
        "live": cuda or all(os.environ.get(k) == v for k, v in LIVE_ENV.items()),
        "measured_step_seconds": report.seconds,
        "step_seconds": statistics.median(times) if times else None,
        "step_seconds_all": times,
        "build_seconds": built,
        "build_rss_mib": built_rss / MIB,  # CPU: the process right after building
        "layers": net.config.num_hidden_layers,
        "params_total": weight_count(net),  # quantized weights too
        "params_trainable": sum(p.numel() for p in trainable_params.values()),
        "params_stepped": sum(trainable_params[n].numel() for n in names),
        "device_name": torch.cuda.get_device_name(dev) if cuda else platform.machine(),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],  # other work skews step times
        "pid": os.getpid(),
    }


def main(point_json: str) -> None:
    """Run the point given as JSON and print its record as one JSON line."""
    import transformers

    transformers.logging.set_verbosity_error()
    point = Point(**json.loads(point_json))
    print(json.dumps(run(point)), flush=True)


def agreement(model_name: str, dtype: str, *, tangents: int = 8) -> Record:
    """How far the jvp with `dtype` frozen weights is from the exact value.

    The exact value is float32 backprop's gradient dotted with the same tangent;
    the distance to backprop in `dtype` itself is reported too.
    """
    from spry.engines import directional_derivative, make_engine

    model = bench_model(model_name)
    loss = make_loss(model, 0)
    errors, same = [], []
    nets = {d: model.build(d, "cpu") for d in ("float32", dtype)}
    gen = torch.Generator().manual_seed(0)
    values = {n: torch.randn(p.shape, generator=gen) * 0.05
              for n, p in nets["float32"].parameters().items()}  # fmt: skip
    exact: dict[str, dict[str, torch.Tensor]] = {}
    params: dict[str, dict[str, torch.Tensor]] = {}
    vocab = nets["float32"].model.config.vocab_size
    batch = random_batch(model.kind, vocab, 8, 64, device="cpu", seed=0)
    for d, trainable in nets.items():
        trainable.load(values)  # LoRA B starts at zero: make every tensor matter
        params[d] = {
            trainable.own_name(n): p for n, p in trainable.parameters().items()
        }
        exact[d] = (
            make_engine("backprop")
            .estimate(trainable.model, loss, batch, params[d], generator=gen)
            .grads
        )
    for _ in range(tangents):
        v = {n: torch.randn(p.shape, generator=gen) for n, p in params[dtype].items()}
        _, derivative, _ = directional_derivative(
            nets[dtype].model, loss, batch, params[dtype], v
        )
        for d, out in (("float32", errors), (dtype, same)):
            dotted = sum((exact[d][n] * v[n]).sum() for n in v)
            out.append(float((derivative - dotted).abs() / dotted.abs()))
    return {
        "model": model_name,
        "dtype": dtype,
        "tangents": tangents,
        "median_relative_error": statistics.median(errors),
        "median_relative_error_same_dtype": statistics.median(same),
        "batch": 8,
        "seq": 64,
    }
