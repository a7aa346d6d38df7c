"""Fault injection: which sampled clients crash, time out or straggle in a round.

Real federations lose clients every round. A simulation that never does says
nothing about how a strategy copes, so a run can make a fixed share of each
round's sampled clients fail, drawn from (seed, round, wave) alone so that the
same clients fail in every run with that seed, whatever order Flower runs them in:

- crash: the ClientApp raises before training; Flower returns its error reply.
- timeout: the client never answers (the message is lost on the way); the server
  stops waiting at the round's deadline.
- straggle: the client trains, but its device takes `straggle-factor` times longer;
  past the deadline its reply is too late and is discarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .seeding import STREAM_FAULTS, numpy_rng

if TYPE_CHECKING:
    from .config import SimulationConfig

CRASH = "crash"
TIMEOUT = "timeout"
STRAGGLE = "straggle"
KINDS = (CRASH, TIMEOUT, STRAGGLE)


class InjectedFault(RuntimeError):
    """Raised by a client told to crash (not a bug in the client)."""

    MARKER = "injected fault"


@dataclass(frozen=True)
class FaultPlan:
    """Shares of each round's sampled clients that crash, time out or straggle.

    Parameters
    ----------
    crash : float (default: 0.0)
    timeout : float (default: 0.0)
    straggle : float (default: 0.0)
        Each rounded to a whole number of the sampled clients.
    straggle_factor : float (default: 4.0)
        How many times longer a straggler's device takes.
    """

    crash: float = 0.0
    timeout: float = 0.0
    straggle: float = 0.0
    straggle_factor: float = 4.0

    def __post_init__(self) -> None:
        shares = (self.crash, self.timeout, self.straggle)
        if any(not 0 <= s <= 1 for s in shares) or sum(shares) > 1:
            raise ValueError(
                f"fault shares should each be in [0, 1] and sum to at most 1, "
                f"got crash {self.crash}, timeout {self.timeout}, "
                f"straggle {self.straggle}"
            )
        if self.straggle_factor < 1:
            raise ValueError(
                f"straggle factor should be >= 1, got {self.straggle_factor}"
            )

    @classmethod
    def from_config(cls, sim: SimulationConfig) -> FaultPlan:
        """The plan of a run's `fault-*` and `straggle-factor` keys."""
        return cls(
            crash=sim.fault_crash,
            timeout=sim.fault_timeout,
            straggle=sim.fault_straggle,
            straggle_factor=sim.straggle_factor,
        )

    @property
    def active(self) -> bool:
        return self.crash + self.timeout + self.straggle > 0

    def draw(
        self, seed: int, server_round: int, wave: int, partitions: Sequence[int]
    ) -> dict[int, str]:
        """Partition -> fault kind, for the faulty ones among `partitions`."""
        if not self.active or not partitions:
            return {}
        n = len(partitions)
        shares = (self.crash, self.timeout, self.straggle)
        counts = [round(share * n) for share in shares]
        while sum(counts) > n:  # rounding up three shares can overshoot
            counts[counts.index(max(counts))] -= 1
        order = numpy_rng(seed, STREAM_FAULTS, server_round, wave).permutation(
            sorted(partitions)
        )
        kinds = [k for k, c in zip(KINDS, counts, strict=True) for _ in range(c)]
        return {int(p): kind for p, kind in zip(order, kinds, strict=False)}
