"""SOAP's overhead profile: execution time, peak memory and memory over time.

Huang et al. measure a program's execution time (ET), its peak memory (MU) and
its total memory usage (TMU: the area under the memory-over-time curve, MB*s)
with memory_profiler, which samples the process's resident set size at an
interval. We do the same from outside the program, so the measurement costs the
program nothing: the sandbox's parent reads the child's `VmRSS` from
`/proc/<pid>/status` every `interval` seconds (`MemoryTrace`), and the child
reports the monotonic start and end of the program's run (the same clock), so
the area is taken over exactly the run, not the interpreter's start-up:

- ET: end - start, seconds, as the child timed it;
- MU: the kernel's peak resident set (`VmHWM`) at the end of the run, exact even
  for a spike between two samples; it includes the interpreter (as
  memory_profiler's does), so normalized values (NMU) sit near 1 for small code;
- TMU: the integral of the sampled RSS over [start, end], each sample held until
  the next (a step function); a run shorter than one interval gets the RSS of the
  sample just before it times ET.

MB here is 2**20 bytes, as memory_profiler reports it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MB = float(2**20)


def rss_bytes(pid: int) -> int | None:
    """`VmRSS` of process `pid` in bytes; None once it has gone (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


@dataclass
class MemoryTrace:
    """RSS samples (monotonic seconds, bytes) of one process, in time order."""

    times: list[float] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    def add(self, when: float, value: int | None) -> None:
        if value is not None:
            self.times.append(when)
            self.values.append(value)

    def value_at(self, when: float) -> int:
        """The last sample at or before `when` (the first one before any)."""
        index = bisect.bisect_right(self.times, when) - 1
        return self.values[max(index, 0)]

    def area(self, start: float, end: float) -> float:
        """Byte-seconds under the step curve on [start, end]."""
        if not self.times or end <= start:
            return 0.0
        total, now, level = 0.0, start, self.value_at(start)
        first = bisect.bisect_right(self.times, start)
        for when, value in zip(self.times[first:], self.values[first:], strict=True):
            if when >= end:
                break
            total += level * (when - now)
            now, level = when, value
        return total + level * (end - now)

    def peak(self, start: float, end: float) -> int:
        """The largest sample on [start, end] (the one before it included)."""
        if not self.times:
            return 0
        lo = max(bisect.bisect_right(self.times, start) - 1, 0)
        hi = bisect.bisect_right(self.times, end)
        return max(self.values[lo : max(hi, lo + 1)])


@dataclass(frozen=True)
class Profile:
    """One run's overhead: seconds, MB, MB*s, and the hottest lines.

    `lines` rows are (line number, hits, seconds) of the program, hottest first,
    when the run was traced (its ET is then the traced one: use it for the
    feedback, not for the metrics).
    """

    et: float
    mu: float
    tmu: float
    samples: int
    lines: tuple[tuple[int, int, float], ...] = ()

    def normalized(self, reference: Profile) -> dict[str, float]:
        """NET, NMU, NTMU: this profile over `reference`'s (the canonical one)."""
        return {
            "net": ratio(self.et, reference.et),
            "nmu": ratio(self.mu, reference.mu),
            "ntmu": ratio(self.tmu, reference.tmu),
        }


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else float("nan")


def profile_of(
    trace: MemoryTrace, start: float, end: float, hwm_bytes: int, lines=()
) -> Profile:
    """The profile of a run on [start, end], from the parent's trace and `VmHWM`."""
    return Profile(
        et=end - start,
        mu=max(hwm_bytes, trace.peak(start, end)) / MB,
        tmu=trace.area(start, end) / MB,
        samples=sum(start <= t <= end for t in trace.times),
        lines=tuple((int(a), int(b), float(c)) for a, b, c in lines),
    )
