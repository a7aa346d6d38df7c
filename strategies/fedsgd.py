"""FedSGD: each round, every sampled client sends one gradient estimate; one step.

The FedSGD family (McMahan et al.'s FedSGD with backprop; Spry's per-iteration
communication; BAFFLE and FwdLLM in `baffle.py`, `fwdllm.py`) shares Spry's
sampled, sliced rounds (`sliced_rounds.py`), and differs from Spry in what a client
does with its slice: no local optimizer, one estimate on one batch, uploaded as the
gradient itself or (`upload_scalars`) as the K scalars of a directional engine, from
which the server redraws the directions (it chose their seed) and rebuilds the
gradient. The server averages per tensor and steps on the pseudo-gradient -G, so
`ServerOptimizer("sgd", eta)` is w <- w - eta G and Yogi/Adam are the adaptive forms.

One Flower round is one server step: these methods need many more rounds than the
local-epoch ones, and each round costs a client one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Message, MetricRecord, RecordDict

from spry import protocol
from spry.aggregation import ServerOptimizer, merge_into, weighted_mean_per_tensor
from spry.engines import rebuild_from_scalars
from spry.seeding import STREAM_TANGENTS, derive_seed

from .replies import InvalidReply, checked_scalars, checked_update
from .sliced_rounds import Contributions, SlicedRounds


class FedSGD(SlicedRounds):
    """One estimate per client per round, one server step on the mean gradient.

    Takes `SlicedRounds`' parameters (`upload_scalars`: one step's K scalars).
    """

    one_step = True

    def _direction_seed(self, server_round: int, node_id: int) -> int:
        """The seed of a client's directions this round (its own, by partition)."""
        return derive_seed(
            self.seed, STREAM_TANGENTS, server_round, self.partitions[node_id]
        )

    def _data_round(self, server_round: int) -> int:
        """The round whose batch order clients use (FwdLLM repeats reuse one)."""
        return server_round

    def _train_content(
        self, server_round: int, node_id: int, owned: list[str]
    ) -> RecordDict:
        content = super()._train_content(server_round, node_id, owned)
        fields = content[protocol.CONFIG]
        fields[protocol.ONE_STEP] = True  # one estimate on one batch, no epochs
        fields[protocol.DIRECTION_SEED] = self._direction_seed(server_round, node_id)
        fields[protocol.DATA_ROUND] = self._data_round(server_round)
        return content

    def _contribution(
        self, server_round: int, node_id: int, reply: Message
    ) -> tuple[dict[str, np.ndarray], float, MetricRecord, int]:
        """(gradient of the slice, weight, metrics, bytes uploaded)."""
        owned = self.assignment[node_id]
        partition = self.partitions[node_id]
        if not self.upload_scalars:
            grads, weight, metrics = checked_update(
                reply, expected_names=owned, current=self.current, partition=partition
            )
            return grads, weight, metrics, sum(g.nbytes for g in grads.values())
        scalars, weight, metrics = checked_scalars(
            reply, num_tangents=self.client_cfg.num_tangents, partition=partition
        )
        if scalars.shape[0] != 1:
            raise InvalidReply(f"scalars: one step expected, got {scalars.shape[0]}")
        generator = torch.Generator().manual_seed(
            self._direction_seed(server_round, node_id)
        )
        shapes = {name: self.current[name].shape for name in owned}
        rebuilt = rebuild_from_scalars(
            shapes,
            scalars[0].tolist(),
            generator,
            distribution=self.client_cfg.tangent_distribution,
        )
        grads = {name: g.numpy() for name, g in rebuilt.items()}
        return grads, weight, metrics, scalars.nbytes

    def _gradient(self, contributions: Contributions) -> dict[str, np.ndarray]:
        """The round's gradient: per-tensor weighted mean (0 for untrained tensors)."""
        mean = weighted_mean_per_tensor(contributions)
        return {
            name: mean.get(name, np.zeros_like(value))
            for name, value in self.current.items()
        }

    def _step(
        self, server_round: int, contributions: Contributions
    ) -> dict[str, np.ndarray]:
        """Propose w - G (G: the round's gradient); the server optimizer steps to it."""
        gradient = self._gradient(contributions)
        proposal = {name: self.current[name] - g for name, g in gradient.items()}
        assert self.optimizer_state is not None
        new, self.optimizer_state = self._optimizer_now().update(
            self.current, merge_into(self.current, proposal), self.optimizer_state
        )
        return new

    def _optimizer_now(self) -> ServerOptimizer:
        """The server optimizer for this step (FwdLLM decays its rate)."""
        return self.optimizer
