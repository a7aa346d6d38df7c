"""A seeded template writer: well-formed MUSTARD items without a language model.

A 135M model rarely writes a valid item (benchmarks/results/task_mustard.md says how
rarely), so the pipeline, the checker's rejections and the fine-tuning are measured
on items written from templates: every concept of `seeds` has one, with its numbers
drawn from the writer's generator. A share `false_rate` (default 0.25) of the items
is deliberately false, by a near miss typical of a weak writer: an answer off by
one, a flipped or strengthened inequality, a missing solution, a wrong gcd or lcm,
an identity with one wrong coefficient, a composite called prime. The problem,
solution and answer then state the same false claim as the formal statement, so the
item reads as well as a true one and only the checker can tell. `planted` records
which items were made false, so the checker's rejections can be scored.

As a generator (`spry.generators.Generator`), `TemplateWriter` reads the seed from
the prompt's "Concepts:" line and writes the item's text, which the task parses
like any generator's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .generator import Item
from .seeds import Seed, read_concepts

FALSE_RATE = 0.25
NAMES = ("Ada", "Ben", "Cleo", "Dev", "Eli", "Fay")


@dataclass(frozen=True)
class Part:
    """One concept's problem, solution, answer and formal statement."""

    problem: str
    solution: str
    answer: str
    formal: str


Writer = Callable[[np.random.Generator, bool], Part]


def _int(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))


def _off_by_one(rng: np.random.Generator, value: int) -> int:
    return value + (1 if rng.random() < 0.5 else -1)


def _frac(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(value)


# -- arithmetic ----------------------------------------------------------------------


def order_of_operations(rng: np.random.Generator, false: bool) -> Part:
    a, b, c = _int(rng, 2, 30), _int(rng, 2, 12), _int(rng, 2, 12)
    value = a + b * c
    claim = _off_by_one(rng, value) if false else value
    return Part(
        f"Evaluate {a} + {b} * {c}.",
        f"Multiplication first: {b} * {c} = {claim - a}, then {a} + {claim - a} = "
        f"{claim}.",
        str(claim),
        f"{a} + {b}*{c} = {claim}",
    )


def fractions(rng: np.random.Generator, false: bool) -> Part:
    b, d = _int(rng, 2, 9), _int(rng, 2, 9)
    a, c = _int(rng, 1, b - 1), _int(rng, 1, d - 1)
    value = Fraction(a, b) + Fraction(c, d)
    claim = Fraction(a + c, b + d) if false else value  # the mediant: never the sum
    return Part(
        f"Compute {a}/{b} + {c}/{d} as a fraction in lowest terms.",
        f"Over a common denominator the sum is {_frac(claim)}.",
        _frac(claim),
        f"{a}/{b} + {c}/{d} = {_frac(claim)}",
    )


def percentages(rng: np.random.Generator, false: bool) -> Part:
    p, n = 5 * _int(rng, 1, 19), 20 * _int(rng, 1, 20)
    value = p * n // 100
    claim = _off_by_one(rng, value) if false else value
    return Part(
        f"What is {p} percent of {n}?",
        f"{p} percent of {n} is {p} * {n} / 100 = {claim}.",
        str(claim),
        f"{p}/100 * {n} = {claim}",
    )


def factorials(rng: np.random.Generator, false: bool) -> Part:
    k = _int(rng, 3, 8)
    claim = math.factorial(k - 1) if false else math.factorial(k)
    return Part(
        f"What is {k} factorial?",
        f"{k}! is the product 1 * 2 * ... * {k} = {claim}.",
        str(claim),
        f"factorial({k}) = {claim}",
    )


# -- algebra ---------------------------------------------------------------------------


def linear_equations(rng: np.random.Generator, false: bool) -> Part:
    a, x0, b = _int(rng, 2, 9), _int(rng, -10, 10), _int(rng, -20, 20)
    c = a * x0 + b
    claim = _off_by_one(rng, x0) if false else x0
    return Part(
        f"Solve {a}x + {b} = {c} for x.",
        f"Subtract {b} and divide by {a}: x = ({c} - {b}) / {a} = {claim}.",
        str(claim),
        f"solve x in Real: {a}*x + {b} = {c} -> {{{claim}}}",
    )


def quadratic_equations(rng: np.random.Generator, false: bool) -> Part:
    r1, r2 = (int(r) for r in rng.choice(np.arange(-9, 10), size=2, replace=False))
    s, p = r1 + r2, r1 * r2
    claimed = [r1] if false else [r1, r2]  # a missing solution
    listed = ", ".join(map(str, claimed))
    return Part(
        f"Find all real solutions of x^2 - ({s})x + ({p}) = 0.",
        f"The roots multiply to {p} and add to {s}, so x = {listed}.",
        listed,
        f"solve x in Real: x^2 - ({s})*x + ({p}) = 0 -> {{{listed}}}",
    )


def polynomial_identities(rng: np.random.Generator, false: bool) -> Part:
    a = _int(rng, 1, 9)
    if rng.random() < 0.5:
        linear = 2 * a + (1 if false else 0)  # one wrong coefficient
        return Part(
            f"Expand (x + {a})^2 and give the coefficient of x.",
            f"(x + {a})^2 = x^2 + {linear}x + {a * a}.",
            str(linear),
            f"identity: (x + {a})^2 = x^2 + {linear}x + {a * a}",
        )
    constant = a * a + (1 if false else 0)
    return Part(
        f"Expand (x + {a})(x - {a}) and give the constant term.",
        f"A difference of squares: x^2 - {constant}.",
        f"-{constant}",
        f"identity: (x + {a})*(x - {a}) = x^2 - {constant}",
    )


# -- number theory -----------------------------------------------------------------


_COPRIME = [
    (m, n) for m in range(1, 10) for n in range(m + 1, 12) if math.gcd(m, n) == 1
]


def greatest_common_divisor(rng: np.random.Generator, false: bool) -> Part:
    g = _int(rng, 2, 15)
    m, n = _COPRIME[int(rng.integers(len(_COPRIME)))]
    a, b = g * m, g * n
    claim = g // min(p for p in range(2, g + 1) if g % p == 0) if false else g
    return Part(
        f"What is the greatest common divisor of {a} and {b}?",
        f"{a} = {claim} * {a // claim} and {b} = {claim} * {b // claim}, and the "
        f"cofactors share no factor, so the gcd is {claim}.",
        str(claim),
        f"gcd({a}, {b}) = {claim}",
    )


def least_common_multiple(rng: np.random.Generator, false: bool) -> Part:
    g = _int(rng, 2, 6)
    m, n = _COPRIME[int(rng.integers(len(_COPRIME)))]
    a, b = g * m, g * n
    claim = a * b if false else g * m * n  # the product: wrong, since gcd > 1
    return Part(
        f"What is the least common multiple of {a} and {b}?",
        f"lcm({a}, {b}) = {a} * {b} / gcd = {claim}.",
        str(claim),
        f"lcm({a}, {b}) = {claim}",
    )


def modular_arithmetic(rng: np.random.Generator, false: bool) -> Part:
    m = _int(rng, 3, 13)
    a = _int(rng, m + 1, 500)
    value = a % m
    claim = (value + 1 if value + 1 < m else value - 1) if false else value
    return Part(
        f"What is the remainder when {a} is divided by {m}?",
        f"{a} = {m} * {a // m} + {claim}, so the remainder is {claim}.",
        str(claim),
        f"{a} % {m} = {claim}",
    )


_PRIMES = [p for p in range(11, 200) if all(p % d for d in range(2, int(p**0.5) + 1))]


def primality(rng: np.random.Generator, false: bool) -> Part:
    if false:  # a product of two primes called prime
        p, q = (int(v) for v in rng.choice(_PRIMES[:8], size=2, replace=False))
        n = p * q
        return Part(
            f"Is {n} a prime number?",
            f"{n} has no divisor up to its square root, so it is prime.",
            "yes",
            f"prime({n})",
        )
    p = _PRIMES[int(rng.integers(len(_PRIMES)))]
    if rng.random() < 0.5:
        return Part(
            f"Is {p} a prime number?",
            f"No prime up to the square root of {p} divides it, so it is prime.",
            "yes",
            f"prime({p})",
        )
    q = _PRIMES[int(rng.integers(len(_PRIMES)))]
    n = p * q
    return Part(
        f"Is {n} a prime number?",
        f"{n} = {p} * {q}, so it is not prime.",
        "no",
        f"not prime({n})",
    )


def divisibility(rng: np.random.Generator, false: bool) -> Part:
    d, k = _int(rng, 2, 19), _int(rng, 2, 40)
    n = d * k + (1 if false else 0)
    return Part(
        f"Is {n} divisible by {d}?",
        f"{n} = {d} * {k}, so yes.",
        "yes",
        f"divides({d}, {n})",
    )


def parity(rng: np.random.Generator, false: bool) -> Part:
    k = _int(rng, 0, 6)
    odd = 2 * k + (0 if false else 1)  # n^2 + (2k+1)n is always even
    return Part(
        f"Show that n^2 + {odd}n is even for every integer n.",
        f"n^2 + {odd}n = n(n + {odd}); one factor is even.",
        "true",
        f"forall n in Int: (n^2 + {odd}*n) % 2 = 0",
    )


# -- inequalities ------------------------------------------------------------------


def sum_of_squares(rng: np.random.Generator, false: bool) -> Part:
    k = _int(rng, 1, 5)
    relation = "<=" if false else ">="  # a flipped inequality
    return Part(
        f"Show that x^2 + {k * k}y^2 {relation} {2 * k}xy for all real x and y.",
        f"x^2 + {k * k}y^2 - {2 * k}xy = (x - {k}y)^2, a square.",
        "true",
        f"forall x, y in Real: x^2 + {k * k}*y^2 {relation} {2 * k}*x*y",
    )


def squares_are_nonnegative(rng: np.random.Generator, false: bool) -> Part:
    a = _int(rng, -9, 9)
    relation = ">" if false else ">="  # strict: fails at x = a
    return Part(
        f"Show that (x - ({a}))^2 {relation} 0 for every real x.",
        "A real square is never negative.",
        "true",
        f"forall x in Real: (x - ({a}))^2 {relation} 0",
    )


def linear_inequalities(rng: np.random.Generator, false: bool) -> Part:
    b, c = _int(rng, 2, 9), _int(rng, 5, 90)
    least = c // b + 1
    claim = _off_by_one(rng, least) if false else least
    return Part(
        f"What is the least integer n with {b}n > {c}?",
        f"{c} / {b} is below {claim} and at least {claim - 1}, so n = {claim}.",
        str(claim),
        f"{b}*{claim} > {c} and {b}*({claim} - 1) <= {c}",
    )


WRITERS: dict[str, Writer] = {
    "order of operations": order_of_operations,
    "fractions": fractions,
    "percentages": percentages,
    "factorials": factorials,
    "linear equations": linear_equations,
    "quadratic equations": quadratic_equations,
    "polynomial identities": polynomial_identities,
    "greatest common divisor": greatest_common_divisor,
    "least common multiple": least_common_multiple,
    "modular arithmetic": modular_arithmetic,
    "primality": primality,
    "divisibility": divisibility,
    "parity": parity,
    "sum of squares": sum_of_squares,
    "squares are nonnegative": squares_are_nonnegative,
    "linear inequalities": linear_inequalities,
}


def write_item(seed: Seed, rng: np.random.Generator, false: bool) -> Item:
    """An item on `seed`: one part a concept (a pair: parts (a) and (b)).

    A false item has one false part (the other is true).
    """
    broken = int(rng.integers(len(seed.concepts))) if false else -1
    parts = [WRITERS[c.name](rng, i == broken) for i, c in enumerate(seed.concepts)]
    if len(parts) == 1:
        (part,) = parts
        return Item(part.problem, part.solution, part.answer, (part.formal,))
    labels = ("(a)", "(b)")
    return Item(
        " ".join(
            f"{label} {p.problem}" for label, p in zip(labels, parts, strict=True)
        ),
        " ".join(
            f"{label} {p.solution}" for label, p in zip(labels, parts, strict=True)
        ),
        "; ".join(
            f"{label} {p.answer}" for label, p in zip(labels, parts, strict=True)
        ),
        tuple(p.formal for p in parts),
    )


@dataclass
class TemplateWriter:
    """A generator that writes items from templates; `planted` marks false ones."""

    seed: int = 0
    false_rate: float = FALSE_RATE
    planted: list[bool] = field(default_factory=list)
    _calls: int = 0

    def __call__(self, prompts: Sequence[str], *, max_new_tokens: int = 0) -> list[str]:
        texts = []
        for prompt in prompts:
            rng = np.random.default_rng([self.seed, 7, self._calls])
            self._calls += 1
            line = next(
                (
                    ln.removeprefix("Concepts:")
                    for ln in prompt.splitlines()
                    if ln.startswith("Concepts:")
                ),
                "",
            )
            seed = read_concepts(line)
            if seed is None:
                self.planted.append(False)
                texts.append("")  # no concept it knows: an empty (unparsable) item
                continue
            false = bool(rng.random() < self.false_rate)
            self.planted.append(false)
            item = write_item(seed, rng, false)
            # the prompt ends with "Problem:": continue it as a model would
            texts.append(" " + item.text().removeprefix("Problem: "))
        return texts
