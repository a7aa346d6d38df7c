"""Named methods: Spry, its ablations and its baselines as settings of one harness.

Spry, FedFGD, FedAvg/FedYogi/FedSGD (backprop), FedAvgSplit, FedMeZO, BAFFLE and
FwdLLM differ only in the strategy (local epochs with weights up, or one estimate a
round), the engine a client runs, whether the server splits the trainable tensors,
and the server step; the sampling, the messages, the aggregation and the evaluation
are shared code. A method is therefore a small set of config overrides, applied under
the user's own (`spry run --method fedavg --set lr=1e-3`), and a run's method is
read back from its config, so `flwr run .` runs are named the same way.
"""

from __future__ import annotations

from .config import ConfigError, ConfigValue, RunConfig, default_values

METHODS: dict[str, dict[str, ConfigValue]] = {
    # Spry (Panchal et al., arXiv 2405.15551): forward-mode on a slice, FedYogi,
    # with this project's tuned defaults (config.py: a centred mean-pooled head that
    # every client trains with its exact gradient: reverse mode over the head
    # alone, nested inside the slice's jvp; the LoRA slices get forward gradients).
    # The server takes the forward-estimated slices as trained (avg) and steps the
    # exact head with Yogi: Yogi moves every coordinate of a mostly-noise delta by
    # about eta a round, which cost the encoder default 4 points against its own
    # head-only reference (benchmarks/results/compare_encoder.md). Every other
    # method steps all its tensors with its own server optimizer ('').
    "spry": {
        "strategy": "spry",
        "engine": "forward",
        "split": True,
        "server-optimizer": "yogi",
        "estimated-server-optimizer": "avg",
    },
    # Spry exactly as the paper configures it: the model's own head (BERT: on the
    # untrained pooler), dealt to one client like any other group, K = 1 tangent,
    # client AdamW lr 1e-4 with torch's default weight decay 0.01 (the official
    # code's AdamW), FedYogi eta 1e-2, and training in train mode: dropout on, LoRA
    # dropout 0.1 (each step's masks from its seed, so the jvp differentiates one
    # function).
    "spry-paper": {
        "strategy": "spry",
        "engine": "forward",
        "split": True,
        "server-optimizer": "yogi",
        "eta": 1e-2,
        "lr": 1e-4,
        "num-tangents": 1,
        "pooling": "model",
        "center-features": False,
        "share-head": False,
        "head-gradient": "shared",
        "weight-decay": 0.01,
        "dropout": True,
        "lora-dropout": 0.1,
        "estimated-server-optimizer": "",
    },
    # Spry with per-iteration communication: each round a client uploads the jvp
    # scalars of one batch; the server redraws the tangents and steps on the result.
    "spry-iter": {
        "strategy": "fedsgd",
        "engine": "forward",
        "split": True,
        "upload-scalars": True,
        "head-gradient": "shared",  # every upload is K scalars along seeded tangents
        "server-optimizer": "yogi",
        "estimated-server-optimizer": "",
    },
    # FedFGD: forward gradients over every trainable tensor, no split.
    "fedfgd": {
        "strategy": "spry",
        "engine": "forward",
        "split": False,
        "server-optimizer": "yogi",
        "estimated-server-optimizer": "",
    },
    # Spry's split with a different server step (the paper's ablations).
    "fedavgsplit": {
        "strategy": "spry",
        "engine": "forward",
        "split": True,
        "server-optimizer": "avg",
        "estimated-server-optimizer": "",
    },
    # Spry's reference: the same run with LoRA frozen at its initial values, so only
    # the head trains (every client, exactly, as in `spry`): a federated linear
    # probe. What Spry gains over it is what its forward gradients add.
    "head-only": {
        "strategy": "spry",
        "engine": "forward",
        "split": True,
        "server-optimizer": "yogi",
        "head-gradient": "exact",
        "train-lora": False,
        "estimated-server-optimizer": "avg",
    },
    # Backprop baselines: FedAvg (McMahan et al.), FedYogi (Reddi et al.), FedSGD.
    "fedavg": {
        "strategy": "spry",
        "engine": "backprop",
        "split": False,
        "server-optimizer": "avg",
    },
    "fedyogi": {
        "strategy": "spry",
        "engine": "backprop",
        "split": False,
        "server-optimizer": "yogi",
    },
    "fedsgd": {
        "strategy": "fedsgd",
        "engine": "backprop",
        "split": False,
        "server-optimizer": "sgd",
        "eta": 1.0,
    },
    # FedAvg with activation checkpointing: backprop's memory-frugal form.
    "fedavg-ckpt": {
        "strategy": "spry",
        "engine": "backprop-checkpoint",
        "split": False,
        "server-optimizer": "avg",
    },
    # FedMeZO (Ling et al., arXiv 2402.05926): MeZO local steps, weights averaged.
    "fedmezo": {
        "strategy": "spry",
        "engine": "mezo",
        "split": False,
        "server-optimizer": "avg",
        "estimated-server-optimizer": "",
    },
    # BAFFLE (Feng et al., arXiv 2301.12195), paper mode: shared directions, K loss
    # differences up, the server rebuilds, clips and takes an Adam step (README:
    # K 100 forward differences, lr 1e-2).
    "baffle": {
        "strategy": "baffle",
        "engine": "baffle",
        "upload-scalars": True,
        "num-tangents": 100,
        "split": False,
        "server-optimizer": "adam",
        "eta": 1e-2,
        "estimated-server-optimizer": "",
    },
    # FwdLLM (Xu et al., arXiv 2308.13894): FedSGD with central differences,
    # directions chosen by cosine to the last step's gradient, variance pacing,
    # server SGD lr 0.01 decaying linearly.
    "fwdllm": {
        "strategy": "fwdllm",
        "engine": "fwdllm",
        "num-tangents": 1,
        "split": False,
        "server-optimizer": "sgd",
        "eta": 1e-2,
        "estimated-server-optimizer": "",
    },
    # As in Spry's comparison code (spry/engines/as_in_spry.py): local AdamW epochs,
    # weights up, FedYogi, and each estimator's bug kept.
    "baffle-plus": {
        "strategy": "spry",
        "engine": "baffle-plus",
        "num-tangents": 10,
        "split": False,
        "server-optimizer": "yogi",
        "estimated-server-optimizer": "",
    },
    "fwdllm-plus": {
        "strategy": "spry",
        "engine": "fwdllm-plus",
        "num-tangents": 20,
        "split": False,
        "server-optimizer": "yogi",
        "estimated-server-optimizer": "",
    },
}


def method_overrides(name: str) -> dict[str, ConfigValue]:
    """The config overrides that make a run the method `name`."""
    try:
        return dict(METHODS[name.lower()])
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; known methods: {', '.join(METHODS)}"
        ) from None


# Settings a method's presets give as defaults a user may tune (Spry with K = 4, or
# with dropout, is still Spry); every other key a preset sets defines the method
# (`train-lora`: with LoRA frozen, Spry is its head-only reference).
HYPERPARAMETERS = frozenset(
    {
        "client-optimizer",
        "dropout",
        "lora-dropout",
        "weight-decay",
        "num-tangents",
        "eta",
        "lr",
        "pooling",
        "center-features",
        "share-head",
        "head-gradient",
        "tangent-distribution",
        "tangent-batch",
        "estimated-server-optimizer",
    }
)


def method_of(cfg: RunConfig) -> str:
    """The name of the method `cfg` runs, or "custom" if it matches none.

    A method whose every setting `cfg` has is named first (so the paper's Spry is
    told from the tuned one); otherwise a method is matched on every defining key
    any method sets (its own value, or the default where it sets none), so Spry with
    `upload-scalars` on is not reported as Spry, while Spry with K = 4 tangents is.
    """
    values, defaults = cfg.to_mapping(), default_values()
    every = {key for overrides in METHODS.values() for key in overrides}
    for keys in (every, every - HYPERPARAMETERS):
        for name, overrides in METHODS.items():
            if all(values[k] == overrides.get(k, defaults[k]) for k in keys):
                return name
    return "custom"
