"""Flower strategies, one algorithm a file, sharing splitting/aggregation in `spry`.

`sliced_rounds` holds the sampled, sliced round both families build on (with the
protocols of the parts the ServerApp injects: dealer, faults, second wave) and
`strategy_utils` the free functions they share. `spry` runs every local-epoch
method (Spry, FedFGD, FedAvg/FedYogi, FedMeZO: they differ in engine, split and
server step, see `spry.methods`); `fedsgd` the one-estimate-a-round family, with
`baffle` and `fwdllm` on top of it. A strategy's own settings are its `Options`
(`<strategy>.<option>` run-config keys), which `resolve` builds and checks.
"""

import dataclasses

from spry.config import ConfigError, RunConfig

from .baffle import Baffle
from .fedsgd import FedSGD
from .fwdllm import FwdLLM
from .sliced_rounds import RoundFailedError, SlicedRounds
from .spry import Spry

STRATEGIES: dict[str, type[SlicedRounds]] = {
    "spry": Spry,
    "fedsgd": FedSGD,
    "baffle": Baffle,
    "fwdllm": FwdLLM,
}


def get(name: str) -> type[SlicedRounds]:
    """The strategy called `name`; an unknown name lists the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; available: {sorted(STRATEGIES)}"
        ) from None


def resolve(cfg: RunConfig) -> RunConfig:
    """`cfg` with its strategy's options typed and completed with their defaults.

    The strategies' half of the resolving step (`spry.resolve.resolve` is the
    library's, which cannot know strategies): the command line calls it before
    anything starts, the ServerApp before it composes the strategy. Raises
    `ConfigError` in one line naming the strategy, the option or the key.
    """
    options = get(cfg.strategy.strategy).options(cfg).to_mapping()
    return dataclasses.replace(cfg, strategy_options=tuple(sorted(options.items())))


__all__ = [
    "STRATEGIES",
    "Baffle",
    "FedSGD",
    "FwdLLM",
    "RoundFailedError",
    "SlicedRounds",
    "Spry",
    "get",
    "resolve",
]
