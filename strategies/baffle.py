"""BAFFLE [Feng et al., 2023]: backprop-free FedSGD with shared perturbations.

Paper: arxiv.org/abs/2301.12195; code FengHZ/BAFFLE (`model/stein_identity.py`,
`main.py`), read for shared/BASELINES.md.

Paper mode: the server broadcasts one seed a round, so every client perturbs along
the same K directions; a client sends only its K loss differences (with
`upload-scalars`; the preset), and the server averages them, rebuilds
g = (1/K) sum_k (dL_k / sigma) v_k, clips it to an inf-norm of 0.3 and takes an
Adam step. BAFFLE's code instead draws independent directions per client and clips
each client's estimate; with scalar uploads only the server-side clip is possible,
and shared directions give K directions a round in all, not C * K.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spry.config import ConfigError, Options, RunConfig
from spry.engines import DIRECTIONAL
from spry.seeding import STREAM_TANGENTS, derive_seed

from .fedsgd import FedSGD
from .sliced_rounds import Contributions


@dataclass(frozen=True)
class BaffleOptions(Options):
    """BAFFLE's own settings: `baffle.<option>` keys of the run config."""

    clip: float = field(
        default=0.3,
        metadata={"help": "inf-norm clip of the rebuilt gradient (0: off)"},
    )

    def __post_init__(self) -> None:
        if self.clip < 0:
            raise ConfigError(f"`clip` should be >= 0, got {self.clip}")


class Baffle(FedSGD):
    """FedSGD whose clients share the round's directions; clipped server gradient.

    Parameters
    ----------
    clip : float (default: 0.3)
        The rebuilt gradient is scaled so its largest entry is at most `clip` in
        absolute value (torch's `clip_grad_norm_` with the inf norm); 0 turns it off.
    **kwargs
        `SlicedRounds`' parameters.
    """

    Options = BaffleOptions

    def __init__(self, *, clip: float = BaffleOptions.clip, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if clip < 0:
            raise ValueError(f"`clip` should be >= 0, got {clip}")
        self.clip = clip

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """Clients upload K scalars along shared directions: a directional engine."""
        super().check_run(cfg)
        if cfg.client.engine not in DIRECTIONAL:
            raise ConfigError(
                f"the baffle strategy uploads K scalars along shared directions; "
                f"engine {cfg.client.engine!r} is not one of {DIRECTIONAL}"
            )

    @classmethod
    def _options(
        cls,
        cfg: RunConfig,
        partitions: Mapping[int, int],
        head: Sequence[str],
        options: Options,
    ) -> dict[str, Any]:
        assert isinstance(options, BaffleOptions)
        shared = super()._options(cfg, partitions, head, options)
        return {**shared, "clip": options.clip}

    def _direction_seed(self, server_round: int, node_id: int) -> int:
        """One seed for every client of the round: shared perturbations."""
        del node_id
        return derive_seed(self.seed, STREAM_TANGENTS, server_round)

    def _gradient(self, contributions: Contributions) -> dict[str, np.ndarray]:
        gradient = super()._gradient(contributions)
        largest = max(float(np.abs(g).max()) for g in gradient.values())
        if self.clip and largest > self.clip:
            scale = self.clip / (largest + 1e-6)  # torch's clip_grad_norm_ epsilon
            gradient = {name: g * scale for name, g in gradient.items()}
        return gradient
