"""Device profiles: what memory and speed a simulated client's device has.

Plain Flower simulates every client on the host's hardware. Here each client can be
given a device profile, a memory budget (what its training process may use at peak)
and a speed relative to one simulated client on the host, so a run says which
devices could train which slices and how long a round would take on them.

The catalogue's budgets and speeds are planning assumptions, not measurements of
particular devices: an Android foreground app is killed well before the phone's
RAM is used up, and a Jetson shares its RAM between CPU and GPU. Replace them with
your own figures through a catalogue file (`device-catalog`, TOML):

    [watch-1gb]
    budget-mib = 400
    speed = 0.05

Which client gets which profile is a pure function of (mix, number of clients,
seed), so every process computes the same answer without storing a table.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .seeding import STREAM_DEVICES, numpy_rng

if TYPE_CHECKING:
    from .config import RunConfig
    from .memory_model import MemoryModel
    from .tasks.base import Task

MIB = 2**20


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of device.

    Parameters
    ----------
    name : str
        How the run config and reports call it.
    budget_mib : float
        Peak memory its training process may use (inf: no limit).
    speed : float
        Compute speed relative to one simulated client on the host (1.0: same).
    """

    name: str
    budget_mib: float
    speed: float

    def __post_init__(self) -> None:
        if not self.budget_mib > 0:
            raise ValueError(f"{self.name}: budget-mib should be > 0")
        if not self.speed > 0:
            raise ValueError(f"{self.name}: speed should be > 0")

    @property
    def budget_bytes(self) -> float:
        return self.budget_mib * MIB


HOST = DeviceProfile("host", budget_mib=float("inf"), speed=1.0)

CATALOG: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("phone-4gb", budget_mib=1536, speed=0.2),
        DeviceProfile("phone-8gb", budget_mib=3072, speed=0.3),
        DeviceProfile("jetson-8gb", budget_mib=5120, speed=0.5),
        DeviceProfile("laptop-16gb", budget_mib=8192, speed=1.0),
        HOST,
    )
}


def load_catalog(path: str | Path | None = None) -> dict[str, DeviceProfile]:
    """The built-in catalogue, with the profiles of the TOML file at `path` added."""
    catalog = dict(CATALOG)
    if not path:
        return catalog
    try:
        tables = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"device catalogue {path}: {error}") from None
    for name, table in tables.items():
        if not isinstance(table, Mapping) or set(table) - {"budget-mib", "speed"}:
            raise ValueError(
                f"device catalogue {path}: [{name}] should hold `budget-mib` and "
                f"`speed`, got {table!r}"
            )
        try:
            catalog[name] = DeviceProfile(
                name, float(table["budget-mib"]), float(table.get("speed", 1.0))
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"device catalogue {path}: [{name}]: {error}") from None
    return catalog


def parse_mix(
    spec: str, catalog: Mapping[str, DeviceProfile]
) -> list[tuple[DeviceProfile, float]]:
    """`"phone-4gb:0.5,laptop-16gb:0.5"` -> [(profile, share), ...] (shares sum to 1).

    An empty spec means every client is the host itself, with no budget.
    """
    if not spec.strip():
        return [(HOST, 1.0)]
    mix: list[tuple[DeviceProfile, float]] = []
    for item in spec.split(","):
        name, _, share = item.strip().partition(":")
        if name not in catalog:
            raise ValueError(
                f"unknown device profile {name!r}; known: {sorted(catalog)} "
                "(add your own with `device-catalog`)"
            )
        try:
            weight = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"device share of {name!r} should be a number") from None
        if weight <= 0:
            raise ValueError(f"device share of {name!r} should be > 0, got {weight}")
        mix.append((catalog[name], weight))
    total = sum(w for _, w in mix)
    return [(p, w / total) for p, w in mix]


def profile_counts(
    mix: Sequence[tuple[DeviceProfile, float]], num_clients: int
) -> list[int]:
    """Clients per profile: shares times `num_clients`, largest remainders first."""
    exact = [share * num_clients for _, share in mix]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(mix)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: num_clients - sum(counts)]:
        counts[i] += 1
    return counts


def assign_profiles(
    mix: Sequence[tuple[DeviceProfile, float]], num_clients: int, seed: int
) -> list[DeviceProfile]:
    """The profile of each partition id, shuffled by `seed` (exact shares)."""
    counts = profile_counts(mix, num_clients)
    labels = [p for (p, _), n in zip(mix, counts, strict=True) for _ in range(n)]
    order = numpy_rng(seed, STREAM_DEVICES).permutation(num_clients)
    return [labels[i] for i in order]


@dataclass(frozen=True)
class Fleet:
    """Every client's device, and how much memory the run's clients need.

    Parameters
    ----------
    profiles : Sequence[DeviceProfile]
        The device of each partition id.
    memory : MemoryModel | None (default: None)
        The clients' predicted peak; None when no budget is finite (nothing to
        check, nothing measured).
    margin : float (default: 0.1)
        A client fits when its predicted peak x (1 + margin) is within budget.
    """

    profiles: Sequence[DeviceProfile]
    memory: MemoryModel | None = None
    margin: float = 0.1

    @property
    def budgeted(self) -> bool:
        return self.memory is not None

    def room(self, partition: int, params: int) -> float:
        """Bytes left for groups on `partition`'s device once `params` train."""
        profile = self.profiles[partition]
        if self.memory is None or profile.budget_mib == float("inf"):
            return float("inf")
        limit = profile.budget_bytes / (1 + self.margin)
        return limit - self.memory.peak_bytes(params)

    def cost(self, params: int) -> float:
        """What training `params` more parameters adds to a client's peak."""
        return 0.0 if self.memory is None else self.memory.per_param_bytes * params

    def predicted_bytes(self, params: int) -> float | None:
        return None if self.memory is None else self.memory.peak_bytes(params)


def plan_fleet(
    cfg: RunConfig, names: Sequence[str], head: Sequence[str], task: Task
) -> Fleet:
    """The run's fleet; measures the memory model when some budget is finite.

    The memory model asks `task` what a client holds (its model and largest batch,
    `Task.probe_inputs`), so budgets work for every task. Raises ValueError when
    no device of the mix can train the smallest slice (the shared tensors and the
    smallest group), naming the prediction and budgets.
    """
    from .splitting import group_tensors

    sim = cfg.simulation
    shared = list(head) if cfg.strategy.share_head else []
    groups = group_tensors(names, shared, cfg.strategy.group_size, cfg.strategy.split)
    mix = parse_mix(sim.device_profiles, load_catalog(sim.device_catalog))
    profiles = assign_profiles(mix, cfg.data.num_clients, cfg.runtime.seed)
    if all(p.budget_mib == float("inf") for p, _ in mix):
        return Fleet(profiles, None, sim.memory_margin)
    from .memory_model import calibrate

    smallest = min(groups, key=len) if groups else ()
    memory = calibrate(cfg, task, [*smallest, *shared], list(names))
    need = memory.peak_bytes(memory.probes[0]["params"]) * (1 + sim.memory_margin)
    if not any(need <= p.budget_bytes for p, _ in mix):
        budgets = ", ".join(f"{p.name} {p.budget_mib:.0f} MiB" for p, _ in mix)
        raise ValueError(
            f"no device in the population can train even one group: the smallest "
            f"slice ({len(smallest) + len(shared)} tensors) is predicted to peak at "
            f"{need / (1 + sim.memory_margin) / MIB:.0f} MiB, "
            f"{need / MIB:.0f} MiB with the {sim.memory_margin:g} margin; "
            f"the budgets are {budgets}"
        )
    return Fleet(profiles, memory, sim.memory_margin)
