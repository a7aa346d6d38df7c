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

from collections.abc import Sequence

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
