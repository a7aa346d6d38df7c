"""MUSTARD's concept seeds: what a generated problem is about.

MUSTARD samples one or two concepts (a concept pair makes a problem that combines
them) from a list of mathematical concepts by area, and asks the generator for a
problem on them. Here the areas are the four the offline checker decides:
arithmetic, algebra, number theory and inequalities, several concepts each.
`sample_seeds` draws a fixed list from the run's seed: each seed is a single
concept or, with probability `pair_share`, a pair of two different concepts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AREAS: dict[str, tuple[str, ...]] = {
    "arithmetic": (
        "order of operations",
        "fractions",
        "percentages",
        "factorials",
    ),
    "algebra": (
        "linear equations",
        "quadratic equations",
        "polynomial identities",
    ),
    "number theory": (
        "greatest common divisor",
        "least common multiple",
        "modular arithmetic",
        "primality",
        "divisibility",
        "parity",
    ),
    "inequalities": (
        "sum of squares",
        "squares are nonnegative",
        "linear inequalities",
    ),
}


@dataclass(frozen=True, order=True)
class Concept:
    """A named concept of one area."""

    area: str
    name: str

    def __str__(self) -> str:
        return f"{self.name} ({self.area})"


CONCEPTS: tuple[Concept, ...] = tuple(
    Concept(area, name) for area, names in AREAS.items() for name in names
)
BY_NAME: dict[str, Concept] = {c.name: c for c in CONCEPTS}


@dataclass(frozen=True)
class Seed:
    """One concept, or two that the problem combines."""

    concepts: tuple[Concept, ...]

    @property
    def key(self) -> str:
        """The seed's concepts, sorted: a concept pair's identity for diversity."""
        return " + ".join(sorted(c.name for c in self.concepts))

    def __str__(self) -> str:
        return "; ".join(str(c) for c in self.concepts)


def sample_seeds(count: int, *, seed: int, pair_share: float = 0.5) -> list[Seed]:
    """`count` seeds: single concepts, and pairs with probability `pair_share`."""
    rng = np.random.default_rng([seed, 19])
    seeds = []
    for _ in range(count):
        size = 2 if rng.random() < pair_share else 1
        chosen = rng.choice(len(CONCEPTS), size=size, replace=False)
        seeds.append(Seed(tuple(CONCEPTS[int(i)] for i in sorted(chosen))))
    return seeds


def read_concepts(line: str) -> Seed | None:
    """The seed a prompt's "Concepts: a (area); b (area)" line names, if known."""
    names = [part.split("(")[0].strip() for part in line.split(";")]
    concepts = [BY_NAME[n] for n in names if n in BY_NAME]
    return Seed(tuple(concepts)) if concepts else None
