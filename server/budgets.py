"""Device budgets: the dealer a run with a device fleet injects into its strategy.

A part of its own (not the strategy's) because only the ServerApp knows the fleet:
each partition's device (memory budget, speed) and the clients' memory model
(`spry.devices.plan_fleet`). Composed in as the strategy's `dealer`
(`strategies.parts.Dealer`), it decides which clients can train at all, deals
each sampled client only the groups its device can hold, turns the host's
measured seconds into the device's, and predicts each client's peak memory for the
round log. It lives in `server/` beside the other parts the ServerApp composes; a
strategy built without it deals round-robin to everyone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO

from flwr.common.logger import log

from spry.devices import Fleet
from spry.splitting import assign_within_budgets
from strategies.parts import Params, RoundRobin


class BudgetDealer(RoundRobin):
    """Deals within each device's memory budget; device time = host time / speed.

    Parameters
    ----------
    fleet : Fleet
        Each partition's device and, when some budget is finite, the memory model.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def eligible(
        self,
        nodes: list[int],
        partitions: Mapping[int, int],
        groups: Sequence[tuple[str, ...]],
        shared: Sequence[str],
        params: Params,
    ) -> list[int]:
        """Nodes whose device can hold the shared tensors and the cheapest group."""
        if not self.fleet.budgeted:
            return super().eligible(nodes, partitions, groups, shared, params)
        needs = params(shared)
        cheapest = min((self.fleet.cost(params(g)) for g in groups), default=0.0)
        fit = [n for n in nodes if self.fleet.room(partitions[n], needs) >= cheapest]
        log(
            INFO,
            "device budgets: %d of %d clients can train a slice",
            len(fit),
            len(partitions),
        )
        return fit

    def deal(
        self,
        groups: Sequence[tuple[str, ...]],
        nodes: list[int],
        partitions: Mapping[int, int],
        shared: Sequence[str],
        params: Params,
    ) -> dict[int, list[str]]:
        """Deal `groups` to `nodes`, never past a device's room (when budgeted)."""
        if not self.fleet.budgeted:  # every device holds anything: round-robin
            return super().deal(groups, nodes, partitions, shared, params)
        needs = params(shared)
        room = {n: self.fleet.room(partitions[n], needs) for n in nodes}
        cost = [self.fleet.cost(params(g)) for g in groups]
        return assign_within_budgets(groups, nodes, room=room, cost=cost, shared=shared)

    def device_seconds(self, partition: int, seconds: float) -> float:
        """How long `seconds` of the host's work takes on `partition`'s device."""
        return seconds / self.fleet.profiles[partition].speed

    def predicted_bytes(self, params: int) -> float | None:
        """The memory model's peak for training `params` (None: no model)."""
        return self.fleet.predicted_bytes(params)
