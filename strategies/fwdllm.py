"""FwdLLM [Xu et al., 2023]: FedSGD on finite-difference gradients, paced by variance.

Paper: arxiv.org/abs/2308.13894; code UbiquitousLearning/FwdLLM
(`FedSgdAggregator`, `FedSgdClientManager`, `fwdgrad_utils.py`), read for
shared/BASELINES.md.

Per step: each sampled client perturbs along one direction (central difference,
h = 0.01) and uploads its dense gradient estimate; on odd steps the directions are
candidates ranked by cosine to the previous step's gradient (shared candidates,
client i takes the i-th best; `spry.engines.selection`). The server pools the
estimates and checks their variance on a probe tensor: while it is above the
threshold it does not step but asks the same clients for fresh directions on the
same batches; then it steps with plain SGD on the pool's unweighted mean, at a rate
decaying linearly to 0 over the run.

Differences from the original, on purpose: the probe is a trainable tensor (the
first one; the original's fixed index can be frozen, which disables pacing); every
candidate is ranked (the original's cosine helper drops all but its last chunk);
extra passes are capped (`max_repeats`); clients are sampled afresh each step
(FwdLLM keeps a round's clients for all its batch steps); the model call keeps the
attention mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.common.logger import log

from spry import protocol
from spry.aggregation import ServerOptimizer
from spry.config import ConfigError, Options, RunConfig
from spry.engines import DIRECTIONAL
from spry.seeding import STREAM_SELECTION, derive_seed

from .fedsgd import FedSGD
from .replies import slice_arrays
from .sliced_rounds import Contributions


def pool_variance(probes: Sequence[np.ndarray]) -> float:
    """FwdLLM's pacing statistic over the pooled estimates of the probe tensor.

    The element-mean of the unbiased variance between the means of the first and
    the second half of the pool.
    """
    if len(probes) < 2:
        return 0.0
    half = len(probes) // 2
    first = np.mean(probes[:half], axis=0)
    second = np.mean(probes[half:], axis=0)
    return float(np.mean(np.var(np.stack([first, second]), axis=0, ddof=1)))


@dataclass(frozen=True)
class FwdLLMOptions(Options):
    """FwdLLM's own settings: `fwdllm.<option>` keys of the run config."""

    var_threshold: float = field(
        default=0.1,
        metadata={
            "help": "ask for more directions while the probe variance is above this"
        },
    )
    max_repeats: int = field(
        default=4, metadata={"help": "most extra direction passes a step"}
    )
    candidates: int = field(
        default=10,
        metadata={"help": "candidates per selected direction (x clients)"},
    )

    def __post_init__(self) -> None:
        if self.var_threshold < 0:
            raise ConfigError(
                f"`var-threshold` should be >= 0, got {self.var_threshold}"
            )
        if self.max_repeats < 0:
            raise ConfigError(f"`max-repeats` should be >= 0, got {self.max_repeats}")
        if self.candidates < 1:
            raise ConfigError(
                f"`candidates` should be at least 1, got {self.candidates}"
            )


class FwdLLM(FedSGD):
    """FedSGD with cosine-selected directions and variance-controlled pacing.

    Parameters
    ----------
    var_threshold : float (default: 0.1)
        Ask for another pass of directions while the pool's variance exceeds it.
    max_repeats : int (default: 4)
        Extra passes at most per step.
    candidates : int (default: 10)
        Candidate directions per selected one (FwdLLM: 10 x clients).
    num_tangents : int (default: 1)
        Directions per client per pass (to size the candidate pool).
    **kwargs
        `SlicedRounds`' parameters; `optimizer` should be SGD (FwdLLM's).
    """

    Options = FwdLLMOptions
    # Repeat passes go back to the round's own clients: no second wave.
    reassigns = False

    def __init__(
        self,
        *,
        var_threshold: float = FwdLLMOptions.var_threshold,
        max_repeats: int = FwdLLMOptions.max_repeats,
        candidates: int = FwdLLMOptions.candidates,
        num_tangents: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.var_threshold = var_threshold
        self.max_repeats = max_repeats
        self.candidates = candidates
        self.num_tangents = num_tangents
        self.steps = 0  # server steps taken
        self.previous: dict[str, np.ndarray] | None = None  # last step's gradient
        self.pool: list[dict[str, np.ndarray]] = []
        self.repeats = 0
        self.repeat_nodes: list[int] | None = None
        self.step_data_round = 1

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """A finite-difference engine (it chooses directions), dense uploads."""
        super().check_run(cfg)
        finite_difference = tuple(e for e in DIRECTIONAL if e != "forward")
        if cfg.client.engine not in finite_difference:
            raise ConfigError(
                f"the fwdllm strategy chooses the directions of a finite-difference "
                f"engine ({', '.join(finite_difference)}); got {cfg.client.engine!r}"
            )
        if cfg.strategy.upload_scalars:
            raise ConfigError(
                "the fwdllm strategy uploads dense gradients (its directions are "
                "chosen, not redrawn from a seed); drop `upload-scalars`"
            )

    @classmethod
    def _options(
        cls,
        cfg: RunConfig,
        partitions: Mapping[int, int],
        head: Sequence[str],
        options: Options,
    ) -> dict[str, Any]:
        assert isinstance(options, FwdLLMOptions)
        return {
            **super()._options(cfg, partitions, head, options),
            "var_threshold": options.var_threshold,
            "max_repeats": options.max_repeats,
            "candidates": options.candidates,
            "num_tangents": cfg.client.num_tangents,
        }

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The shared state and FwdLLM's own: steps, last gradient, pending pool.

        Arrays under "fwdllm": "previous" and "pool" (by index). A step's repeat
        passes go to the same clients: they are saved by partition, since node ids
        change when a run is restarted.
        """
        arrays, state = super().checkpoint_state()
        own: dict[str, Any] = {"pool": {str(i): g for i, g in enumerate(self.pool)}}
        if self.previous is not None:
            own["previous"] = self.previous
        arrays["fwdllm"] = own
        state["fwdllm"] = {
            "steps": self.steps,
            "repeats": self.repeats,
            "step-data-round": self.step_data_round,
            "pool": len(self.pool),
            "repeat-partitions": None
            if self.repeat_nodes is None
            else [self.partitions[n] for n in self.repeat_nodes],
        }
        return arrays, state

    def load_checkpoint_state(
        self, arrays: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        super().load_checkpoint_state(arrays, state)
        own = state["fwdllm"]
        self.steps, self.repeats = own["steps"], own["repeats"]
        self.step_data_round = own["step-data-round"]
        saved = arrays.get("fwdllm", {})
        self.previous = dict(saved.get("previous", {})) or None
        pool = saved.get("pool", {})
        self.pool = [dict(pool.get(str(i), {})) for i in range(own["pool"])]
        node_of = {p: n for n, p in self.partitions.items()}
        partitions = own["repeat-partitions"]
        self.repeat_nodes = (
            None if partitions is None else [node_of[p] for p in partitions]
        )

    def _training_nodes(self, server_round: int) -> list[int]:
        if self.repeat_nodes is not None:  # the same clients, the same batches
            return list(self.repeat_nodes)
        self.step_data_round = server_round
        return super()._training_nodes(server_round)

    def _data_round(self, server_round: int) -> int:
        return self.step_data_round

    def _selects(self) -> bool:
        """Directions are chosen on odd steps, once there is a gradient to follow."""
        return self.previous is not None and self.steps % 2 == 1

    def _train_content(
        self, server_round: int, node_id: int, owned: list[str]
    ) -> RecordDict:
        content = super()._train_content(server_round, node_id, owned)
        if self._selects():
            assert self.previous is not None
            position = list(self.assignment).index(node_id)
            fields = content[protocol.CONFIG]
            fields[protocol.SELECT_SEED] = derive_seed(
                self.seed, STREAM_SELECTION, server_round
            )
            fields[protocol.SELECT_INDEX] = position * self.num_tangents
            fields[protocol.SELECT_COUNT] = (
                self.candidates * len(self.assignment) * self.num_tangents
            )
            content[protocol.TARGET] = slice_arrays(self.previous, owned)
        return content

    def _step(
        self, server_round: int, contributions: Contributions
    ) -> dict[str, np.ndarray]:
        self.pool.extend(grads for grads, _ in contributions)
        probe = next(iter(self.current))
        probes = [grads[probe] for grads in self.pool if probe in grads]
        variance = pool_variance(probes)
        entry = self.round_log.setdefault(server_round, {})
        entry.update({"fwdllm-variance": variance, "fwdllm-pool": len(self.pool)})
        if variance > self.var_threshold and self.repeats < self.max_repeats:
            self.repeats += 1
            self.repeat_nodes = list(self.assignment)
            log(
                INFO,
                "fwdllm: probe variance %.4g > %.4g with %d estimates: "
                "more directions (pass %d), no step",
                variance,
                self.var_threshold,
                len(self.pool),
                self.repeats + 1,
            )
            return dict(self.current)
        # FwdLLM averages the pooled estimates without sample weights.
        new = super()._step(server_round, [(grads, 1.0) for grads in self.pool])
        self.pool, self.repeats, self.repeat_nodes = [], 0, None
        self.steps += 1
        return new

    def _gradient(self, contributions: Contributions) -> dict[str, np.ndarray]:
        gradient = super()._gradient(contributions)
        self.previous = gradient  # the next odd step's directions follow it
        return gradient

    def _optimizer_now(self) -> ServerOptimizer:
        """SGD at eta (T - t) / T: FwdLLM's linear decay to 0 over the run."""
        if not self.num_rounds:
            return self.optimizer
        share = max(self.num_rounds - self.steps, 1) / self.num_rounds
        return dataclasses.replace(self.optimizer, eta=self.optimizer.eta * share)
