"""What came back from one wave of training messages, classified.

A round sends its slices in one wave, and, when clients failed and their groups
are reassigned, in a second one. Each wave's replies end up here: accepted
contributions, and every client that gave nothing, with why (an injected crash or
timeout, a reply past the deadline, an invalid reply, a client without training
examples, a client error). The wave's device time is what the round would take on
the clients' devices: the slowest accepted reply, or the deadline when the server
had to wait it out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from flwr.app import RecordDict

DROP_KINDS = ("crash", "timeout", "late", "invalid", "empty", "error")


@dataclass
class WaveResult:
    """Accepted contributions of one wave and the clients dropped from it."""

    contributions: list[tuple[dict[str, np.ndarray], float]] = field(
        default_factory=list
    )
    accepted: list[RecordDict] = field(default_factory=list)  # their metrics
    uploaded: list[int] = field(default_factory=list)  # bytes per accepted client
    dropped: dict[int, str] = field(default_factory=dict)  # node id -> drop kind
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> why invalid
    errors: list[str] = field(default_factory=list)  # genuine client errors
    device_seconds: float = 0.0
    # (node, slice tensors, step extra, worker RSS, predicted, step tokens) per client
    peaks: list[tuple[int, int, int, int, float | None, int]] = field(
        default_factory=list
    )

    def drop_counts(self) -> dict[str, int]:
        counts = Counter(self.dropped.values())
        return {kind: counts.get(kind, 0) for kind in DROP_KINDS}

    def merge(self, other: WaveResult) -> WaveResult:
        """Both waves' results; device time adds (the second wave follows)."""
        return WaveResult(
            contributions=self.contributions + other.contributions,
            accepted=self.accepted + other.accepted,
            uploaded=self.uploaded + other.uploaded,
            dropped={**self.dropped, **other.dropped},
            rejected={**self.rejected, **other.rejected},
            errors=self.errors + other.errors,
            device_seconds=self.device_seconds + other.device_seconds,
            peaks=self.peaks + other.peaks,
        )
