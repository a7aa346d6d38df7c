"""Spry [Panchal et al., 2024]: forward-mode federated fine-tuning, weights split.

Paper: arxiv.org/abs/2405.15551

Each round the server samples M clients, cuts the trainable tensors into groups and
deals them round-robin, so each client estimates a forward gradient over a small
slice (a much better estimate than one over all weights) and runs its local
optimizer on it. Replies are checked against what each client was sent and averaged
per tensor over the clients that trained it, weighted by examples; the server takes
a FedYogi step (FedAdam / plain averaging selectable) on the pseudo-gradient.

The round itself (sample, group, deal, send; check; evaluate) is the one the FedSGD
family shares, in `sliced_rounds.py`; this file holds what makes it Spry: what a reply
contributes (the trained slice, or its replay from uploaded scalars) and the server
step on the per-tensor mean. Device budgets, faults, the second wave, resuming and
the queries outside the rounds are parts the ServerApp composes in (`server/`).
With `tangent-guess` the shared round also sends each client the last global update
over its slice, a guess its forward tangents lean toward (biased toward it:
`spry.engines.directions.guessed_directions`).

Without splitting (`split=False`) every client trains every tensor: FedFGD with the
forward engine, FedAvg/FedYogi with backprop, FedMeZO with zero-order; they differ
in engine, split and server step (`spry.methods`), not in this code.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message, MetricRecord

from spry.aggregation import merge_into, weighted_mean_per_tensor
from spry.training import replay_local_training, step_generator

from .replies import checked_scalars, checked_update
from .sliced_rounds import Contributions, RoundFailedError, SlicedRounds

__all__ = ["RoundFailedError", "Spry"]


class Spry(SlicedRounds):
    """Spry strategy (message API): local training on dealt slices, FedYogi step.

    Takes `SlicedRounds`' parameters; `upload_scalars` means each local step's K
    scalars, from which the server rebuilds the slice by replaying `client_cfg`'s
    optimizer (exact to fp32).
    """

    def _contribution(
        self, server_round: int, node_id: int, reply: Message
    ) -> tuple[dict[str, np.ndarray], float, MetricRecord, int]:
        """(trained slice, weight, metrics, bytes uploaded) of a valid reply.

        With scalar uploads the slice is rebuilt by replaying the client's local
        optimizer on the gradients its seeds and scalars define.
        """
        owned = self.assignment[node_id]
        partition = self.partitions[node_id]
        if not self.upload_scalars:
            tensors, weight, metrics = checked_update(
                reply, expected_names=owned, current=self.current, partition=partition
            )
            return tensors, weight, metrics, sum(t.nbytes for t in tensors.values())
        scalars, weight, metrics = checked_scalars(
            reply, num_tangents=self.client_cfg.num_tangents, partition=partition
        )
        generators = (
            step_generator(self.seed, server_round, partition, step)
            for step in range(len(scalars))
        )
        tensors = replay_local_training(
            {n: self.current[n] for n in owned},
            scalars,
            generators,
            self.client_cfg.at_round(server_round, self.num_rounds),
        )
        return tensors, weight, metrics, scalars.nbytes

    def _step(
        self, server_round: int, contributions: Contributions
    ) -> dict[str, np.ndarray]:
        """Per-tensor weighted mean of the trained slices, then the server step."""
        aggregate = weighted_mean_per_tensor(contributions)
        assert self.optimizer_state is not None
        new, self.optimizer_state = self.optimizer.update(
            self.current, merge_into(self.current, aggregate), self.optimizer_state
        )
        return new
