"""The second wave: groups whose clients all failed, dealt to fresh clients.

A part of its own because it is a recovery policy, not the algorithm: when every
client holding a group crashed, timed out, came late or sent an invalid reply, the
round would leave that group untrained. Composed in as the strategy's
`second_wave` (`strategies.parts.SecondWave`, when the run's `orphan-slices` is
"reassign"), it samples as many fresh eligible clients as failed, from the
SAMPLE_REASSIGN draw of (seed, round), deals them the orphans, sends the wave (its
own faults drawn as wave 1) and classifies the replies the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO

from flwr.common.logger import log

from spry.config import RunConfig
from spry.seeding import SAMPLE_REASSIGN
from strategies.sliced_rounds import SlicedRounds
from strategies.waves import WaveResult


@dataclass(frozen=True)
class SecondWave:
    """Deal a round's orphaned groups again, to clients not sampled this round.

    Parameters
    ----------
    timeout : float | None (default: None)
        Wall-clock timeout of the second wave's messages.
    """

    timeout: float | None = None

    @classmethod
    def from_run(cls, cfg: RunConfig) -> SecondWave | None:
        """The run's second wave (None when orphaned slices are skipped)."""
        if cfg.simulation.orphan_slices != "reassign":
            return None
        return cls(timeout=cfg.runtime.round_timeout)

    def __call__(
        self,
        strategy: SlicedRounds,
        server_round: int,
        orphans: list[tuple[str, ...]],
        failed: int,
    ) -> WaveResult | None:
        """Deal `orphans` to as many fresh clients as `failed`; None if none left."""
        spare = [n for n in strategy.eligible() if n not in strategy.assignment]
        count = min(failed, len(spare))
        if not count or strategy.grid is None:
            return None
        nodes = strategy.sample(server_round, count, SAMPLE_REASSIGN, population=spare)
        assignment = strategy.deal(orphans, nodes)
        if not assignment:
            return None
        strategy.assignment.update(assignment)
        messages = strategy.wave_messages(server_round, 1, assignment)
        log(
            INFO,
            "reassign: %d orphaned group(s) to partitions %s",
            len(orphans),
            [strategy.partitions[n] for n in assignment],
        )
        replies = strategy.grid.send_and_receive(messages, timeout=self.timeout)
        return strategy.collect(server_round, replies)
