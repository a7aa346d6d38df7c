"""Flower strategies, one algorithm a file, sharing splitting/aggregation in `spry`.

`spry` runs every local-epoch method (Spry, FedFGD, FedAvg/FedYogi, FedMeZO: they
differ in engine, split and server step, see `spry.methods`); `fedsgd` the
one-estimate-a-round family, with `baffle` and `fwdllm` on top of it.
"""

from .baffle import Baffle
from .fedsgd import FedSGD
from .fwdllm import FwdLLM
from .spry import RoundFailedError, Spry

STRATEGIES: dict[str, type[Spry]] = {
    "spry": Spry,
    "fedsgd": FedSGD,
    "baffle": Baffle,
    "fwdllm": FwdLLM,
}

__all__ = ["STRATEGIES", "Baffle", "FedSGD", "FwdLLM", "RoundFailedError", "Spry"]
