"""The parts a ServerApp injects into a sampled, sliced round, and their defaults.

Three policies are not the algorithm but change a round: which client can train
which groups and how long its device takes (a `Dealer`), which clients fail and how
long the server waits (`Faults`), and what happens to groups whose clients all
failed (a `SecondWave`). Each is a small protocol here with a do-nothing default,
so a strategy built by hand is the plain algorithm, and the ServerApp composes in
the real ones (`server/budgets.py`, `server/faults.py`, `server/second_wave.py`),
as Flower composes a strategy with `dp_fixed_clipping`. The protocols sit in
`strategies/` because the strategies call them and may import only `spry/`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from flwr.app import RecordDict

from spry.splitting import assign_groups

from .waves import WaveResult

if TYPE_CHECKING:  # (sliced_rounds.py imports this module)
    from .sliced_rounds import SlicedRounds

Params = Callable[[Iterable[str]], int]  # parameters in the named tensors


class Dealer(Protocol):
    """Who can train which groups, and how long a client's device takes."""

    def eligible(
        self,
        nodes: list[int],
        partitions: Mapping[int, int],
        groups: Sequence[tuple[str, ...]],
        shared: Sequence[str],
        params: Params,
    ) -> list[int]:
        """The `nodes` (partition order) that can train some slice."""
        ...  # pragma: no cover

    def deal(
        self,
        groups: Sequence[tuple[str, ...]],
        nodes: list[int],
        partitions: Mapping[int, int],
        shared: Sequence[str],
        params: Params,
    ) -> dict[int, list[str]]:
        """Node -> the names it trains (a node missing from it is sent nothing)."""
        ...  # pragma: no cover

    def device_seconds(self, partition: int, seconds: float) -> float:
        """The host's `seconds` on `partition`'s device."""
        ...  # pragma: no cover

    def predicted_bytes(self, params: int) -> float | None:
        """The predicted peak memory of training `params` (None: no model)."""
        ...  # pragma: no cover


class RoundRobin:
    """The plain deal: every node trains, groups round-robin, device = host."""

    def eligible(
        self,
        nodes: list[int],
        partitions: Mapping[int, int],
        groups: Sequence[tuple[str, ...]],
        shared: Sequence[str],
        params: Params,
    ) -> list[int]:
        return nodes

    def deal(
        self,
        groups: Sequence[tuple[str, ...]],
        nodes: list[int],
        partitions: Mapping[int, int],
        shared: Sequence[str],
        params: Params,
    ) -> dict[int, list[str]]:
        del partitions, params  # every node can hold anything
        return assign_groups(groups, nodes, shared=shared)

    def device_seconds(self, partition: int, seconds: float) -> float:
        return seconds

    def predicted_bytes(self, params: int) -> float | None:
        return None


class Faults(Protocol):
    """Which clients of a wave fail, and the deadline the server waits."""

    deadline: float

    def draw(
        self, seed: int, server_round: int, wave: int, partitions: Sequence[int]
    ) -> dict[int, str]:
        """Partition -> fault kind, for the faulty ones among `partitions`."""
        ...  # pragma: no cover

    def deliver(self, content: RecordDict, fault: str) -> RecordDict | None:
        """What reaches a client told `fault` (None: the message is lost)."""
        ...  # pragma: no cover

    def device_seconds(self, seconds: float, fault: str) -> float:
        """A client's device time, slowed if it straggles."""
        ...  # pragma: no cover


class NoFaults:
    """Nobody fails and the server waits for every reply."""

    deadline = float("inf")

    def draw(
        self, seed: int, server_round: int, wave: int, partitions: Sequence[int]
    ) -> dict[int, str]:
        return {}

    def deliver(self, content: RecordDict, fault: str) -> RecordDict | None:
        return content

    def device_seconds(self, seconds: float, fault: str) -> float:
        return seconds


class SecondWave(Protocol):
    """Deals a round's orphaned groups again; None when it could not."""

    def __call__(
        self,
        strategy: SlicedRounds,
        server_round: int,
        orphans: list[tuple[str, ...]],
        failed: int,
    ) -> WaveResult | None: ...  # pragma: no cover
