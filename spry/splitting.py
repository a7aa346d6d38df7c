"""Spry's weight splitting: which client trains which trainable tensors this round.

Trainable tensors are cut, in model order, into groups of `group_size` consecutive
tensors (the authors' code uses 2: one LoRA A/B pair) and dealt round-robin to the
round's clients. With more groups than clients a client gets several groups; with
more clients than groups, several clients get the same group (the authors' code
raises KeyError there). Either way every tensor goes to at least one client:
dealing runs over max(groups, clients) positions, position i giving group
i mod G to client i mod M.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .seeding import STREAM_SAMPLING, numpy_rng


def sample_clients(seed: int, draw: int, count: int, population: int) -> list[int]:
    """`count` distinct indices into a population sorted by partition id.

    A pure function of (seed, draw): the server's round sampling and any offline
    probe of "the clients of round r" get the same clients. The order of the draw
    is the order in which groups are dealt.
    """
    rng = numpy_rng(seed, STREAM_SAMPLING, draw)
    return [int(i) for i in rng.choice(population, size=count, replace=False)]


def make_groups(names: Sequence[str], group_size: int) -> list[tuple[str, ...]]:
    """Consecutive groups of `group_size` names (the last may be shorter)."""
    if group_size < 1:
        raise ValueError(f"`group_size` should be >= 1, got {group_size}")
    return [tuple(names[i : i + group_size]) for i in range(0, len(names), group_size)]


def group_tensors(
    names: Sequence[str], shared: Sequence[str], group_size: int, split: bool
) -> list[tuple[str, ...]]:
    """The groups a round deals: the non-shared names in groups of `group_size`.

    Without splitting, all of them form one group, so every client gets it.
    """
    dealt = [n for n in names if n not in set(shared)]
    return make_groups(dealt, group_size if split else len(dealt) or 1)


def assign_groups(
    groups: Sequence[Sequence[str]],
    clients: Sequence[int],
    *,
    shared: Sequence[str] = (),
) -> dict[int, list[str]]:
    """Deal `groups` round-robin to `clients`; every client also gets `shared`.

    Returns client -> the names it trains, in group order, without duplicates.
    """
    if not clients:
        raise ValueError("no clients to assign groups to")
    if len(set(clients)) != len(clients):
        raise ValueError(f"clients must be distinct, got {list(clients)}")
    assignment: dict[int, list[str]] = {client: [] for client in clients}
    if groups:
        for i in range(max(len(groups), len(clients))):
            assignment[clients[i % len(clients)]].extend(groups[i % len(groups)])
    for client, names in assignment.items():
        names.extend(shared)
        assignment[client] = list(dict.fromkeys(names))
    return assignment


def coverage(assignment: dict[int, list[str]], names: Sequence[str]) -> float:
    """Share of `names` that at least one client trains."""
    assigned = {n for owned in assignment.values() for n in owned}
    return sum(n in assigned for n in names) / len(names) if names else 1.0


def assign_within_budgets(
    groups: Sequence[Sequence[str]],
    clients: Sequence[int],
    *,
    room: Mapping[int, float],
    cost: Sequence[float],
    shared: Sequence[str] = (),
) -> dict[int, list[str]]:
    """Deal `groups` as `assign_groups` does, never past a client's memory room.

    `room[c]` is what client c can still hold for groups (its budget less its fixed
    and shared needs); `cost[g]` what group g needs. Position i offers group
    i mod G to client i mod M; a client without room for it (or holding it) passes
    it to the next client in deal order, so devices with more room end up with more
    groups, and a group goes untrained only when no sampled client can hold it.
    A client left with no group is given the least-covered group it fits; one that
    fits none is left out of the result (it is sent no work). With unlimited room
    this is exactly `assign_groups`.
    """
    if not clients:
        raise ValueError("no clients to assign groups to")
    if len(cost) != len(groups):
        raise ValueError(f"{len(groups)} groups but {len(cost)} costs")
    left = {c: float(room[c]) for c in clients}
    held: dict[int, list[int]] = {c: [] for c in clients}
    owners = [0] * len(groups)

    def give(client: int, g: int) -> None:
        held[client].append(g)
        left[client] -= cost[g]
        owners[g] += 1

    if groups:
        for i in range(max(len(groups), len(clients))):
            g = i % len(groups)
            for j in range(len(clients)):
                client = clients[(i + j) % len(clients)]
                if g not in held[client] and left[client] >= cost[g]:
                    give(client, g)
                    break
        for client in clients:
            fits = [g for g in range(len(groups)) if cost[g] <= left[client]]
            if not held[client] and fits:
                give(client, min(fits, key=lambda g: (owners[g], g)))
    assignment: dict[int, list[str]] = {}
    for client in clients:
        if groups and not held[client]:
            continue
        names = [n for g in sorted(held[client]) for n in groups[g]]
        assignment[client] = list(dict.fromkeys([*names, *shared]))
    return assignment
