"""Fault injection and the deadline: the `Faults` policy a ServerApp injects.

A part of its own so that the strategies hold only their algorithm: the run's
`FaultPlan` (shares of each wave's clients that crash, time out or straggle,
drawn from (seed, round, wave) in `spry.faults`) and the deadline in device-seconds
the server waits for a wave. Composed in as the strategy's `faults`
(`strategies.parts.Faults`): it marks a crashing client's message, drops the
message of a client that times out (lost on the way: the server hears nothing
back), and slows a straggler's device time, which the strategy compares with the
deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flwr.app import RecordDict

from spry import protocol
from spry.config import RunConfig
from spry.faults import CRASH, STRAGGLE, TIMEOUT, FaultPlan


@dataclass(frozen=True)
class FaultInjection:
    """Injected faults and the server's deadline for each wave.

    Parameters
    ----------
    plan : FaultPlan (default: FaultPlan(), none)
        Shares of each wave's clients that crash, time out or straggle.
    deadline : float (default: inf)
        Device-seconds the server waits for a wave; later replies are dropped.
    """

    plan: FaultPlan = field(default_factory=FaultPlan)
    deadline: float = float("inf")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> FaultInjection:
        """The run's faults; its deadline, else the round timeout."""
        sim = cfg.simulation
        return cls(
            FaultPlan.from_config(sim), sim.round_deadline or cfg.runtime.round_timeout
        )

    def draw(
        self, seed: int, server_round: int, wave: int, partitions: Sequence[int]
    ) -> dict[int, str]:
        """Partition -> fault kind, for the faulty ones among `partitions`."""
        return self.plan.draw(seed, server_round, wave, partitions)

    def deliver(self, content: RecordDict, fault: str) -> RecordDict | None:
        """A timing-out client's message is lost; a crashing one is told to crash."""
        if fault == TIMEOUT:
            return None
        if fault == CRASH:
            content[protocol.CONFIG][protocol.FAULT] = CRASH
        return content

    def device_seconds(self, seconds: float, fault: str) -> float:
        """A straggler's device takes `straggle_factor` times longer."""
        return seconds * self.plan.straggle_factor if fault == STRAGGLE else seconds
