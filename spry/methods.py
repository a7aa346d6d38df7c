"""Named methods: Spry, its ablations and its baselines as settings of one harness.

Spry, FedFGD, FedAvg/FedYogi (backprop), FedAvgSplit and FedMeZO differ only in
which engine a client runs, whether the server splits the trainable tensors, and the
server step; the sampling, the messages, the aggregation and the evaluation are
shared code. A method is therefore a small set of config overrides, applied under
the user's own (`spry run --method fedavg --set lr=1e-3`), and a run's method is
read back from its config, so `flwr run .` runs are named the same way.
"""

from __future__ import annotations

from .config import ConfigError, ConfigValue, RunConfig

METHODS: dict[str, dict[str, ConfigValue]] = {
    # Spry (Panchal et al., arXiv 2405.15551): forward-mode on a slice, FedYogi.
    "spry": {"engine": "forward", "split": True, "server-optimizer": "yogi"},
    # FedFGD: forward gradients over every trainable tensor, no split.
    "fedfgd": {"engine": "forward", "split": False, "server-optimizer": "yogi"},
    # Spry's split with a different server step (the paper's ablations).
    "fedavgsplit": {"engine": "forward", "split": True, "server-optimizer": "avg"},
    # Backprop baselines: FedAvg (McMahan et al.) and FedYogi (Reddi et al.).
    "fedavg": {"engine": "backprop", "split": False, "server-optimizer": "avg"},
    "fedyogi": {"engine": "backprop", "split": False, "server-optimizer": "yogi"},
    # FedAvg with activation checkpointing: backprop's memory-frugal form.
    "fedavg-ckpt": {
        "engine": "backprop-checkpoint",
        "split": False,
        "server-optimizer": "avg",
    },
    # FedMeZO (Ling et al., arXiv 2402.05926): MeZO local steps, weights averaged.
    "fedmezo": {"engine": "mezo", "split": False, "server-optimizer": "avg"},
}


def method_overrides(name: str) -> dict[str, ConfigValue]:
    """The config overrides that make a run the method `name`."""
    try:
        return dict(METHODS[name.lower()])
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; known methods: {', '.join(METHODS)}"
        ) from None


def method_of(cfg: RunConfig) -> str:
    """The name of the method `cfg` runs, or "custom" if it matches none."""
    values = cfg.to_mapping()
    for name, overrides in METHODS.items():
        if all(values[k] == v for k, v in overrides.items()):
            return name
    return "custom"
