"""Held-out math word problems with known numeric answers, and answer extraction.

MUSTARD measures what fine-tuning on the kept items does to math word problems.
These are written by the task from templates (nine forms: buying, what is left,
sharing, area, perimeter, distance, ages, discounts, groups; each with two
phrasings and a rotating cast), with numbers from a seed of their own, so they
never coincide with the training items. A model's output is scored by the exact
numeric match of its extracted final answer (`accuracy`).

The extraction (`extract_answers`, the task's `extractor` option) is one of:

- "last-number", the default: the number after the last "Answer:" if there is
  one, else the last number in the output (`last_number_answer`);
- "regex": OpenCompass's gsm8k extractor (`spry.answers.regex`), as a real
  evaluation framework scores;
- "model": an xFinder-style extractor, a causal LM reading `finder_prompt` (the
  evaluated model itself, an endpoint, or the model an xFinder run trained);
- "module:function": any callable `(question, output) -> str | None`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from fractions import Fraction

import datasets
import numpy as np

from ...answers import extract_many
from ...generators import Generator

Extractor = Callable[[str, str], "str | None"]
LAST_NUMBER, REGEX, MODEL = "last-number", "regex", "model"
FORMS: tuple[str, ...] = (
    "buy",
    "left",
    "share",
    "area",
    "perimeter",
    "distance",
    "age",
    "discount",
    "groups",
)
PEOPLE = ("Ann", "Bo", "Carl", "Dina", "Emil", "Fern", "Gus", "Hana")
THINGS = ("pencils", "apples", "stickers", "marbles", "cards", "books")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_ANSWER = re.compile(
    r"answer\s*(?:is|:)?\s*[:=]?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)", re.I
)


def _problem(form: str, rng: np.random.Generator, variant: int) -> tuple[str, int]:
    def n(low: int, high: int) -> int:
        return int(rng.integers(low, high + 1))

    who = PEOPLE[int(rng.integers(len(PEOPLE)))]
    thing = THINGS[int(rng.integers(len(THINGS)))]
    if form == "buy":
        q, p = n(2, 12), n(2, 15)
        text = (
            f"{who} buys {q} {thing} at {p} dollars each. How many dollars does "
            f"{who} spend?",
            f"Each of the {q} {thing} {who} buys costs {p} dollars. What is the "
            "total cost in dollars?",
        )[variant]
        return text, q * p
    if form == "left":
        a, b = n(20, 90), n(2, 19)
        text = (
            f"{who} has {a} {thing} and gives away {b}. How many {thing} are left?",
            f"There were {a} {thing}. {who} took {b} of them. How many {thing} remain?",
        )[variant]
        return text, a - b
    if form == "share":
        k, m = n(2, 9), n(2, 12)
        text = (
            f"{k} friends share {k * m} {thing} equally. How many {thing} does "
            "each friend get?",
            f"{who} splits {k * m} {thing} into {k} equal piles. How many {thing} "
            "are in each pile?",
        )[variant]
        return text, m
    if form in ("area", "perimeter"):
        w, length = n(2, 15), n(2, 20)
        shape = (
            f"A rectangle is {w} meters wide and {length} meters long.",
            f"{who}'s garden is a rectangle {length} meters long and {w} meters wide.",
        )[variant]
        if form == "area":
            return f"{shape} What is its area in square meters?", w * length
        return f"{shape} What is its perimeter in meters?", 2 * (w + length)
    if form == "distance":
        s, t = n(20, 90), n(2, 6)
        text = (
            f"A train travels at {s} km per hour for {t} hours. How many km "
            "does it travel?",
            f"{who} drives for {t} hours at {s} km per hour. How far does "
            f"{who} go in km?",
        )[variant]
        return text, s * t
    if form == "age":
        a, d, y = n(5, 30), n(1, 10), n(1, 10)
        text = (
            f"{who} is {a} years old. Her brother is {d} years older. How old "
            f"will her brother be in {y} years?",
            f"In {y} years, how old will someone be who is {d} years older than "
            f"{who}, who is {a} now?",
        )[variant]
        return text, a + d + y
    if form == "discount":
        p, r = 20 * n(1, 10), 5 * n(1, 18)
        text = (
            f"A coat costs {p} dollars and is {r} percent off. What is the sale "
            "price in dollars?",
            f"{who} pays for a {p} dollar coat with a {r} percent discount. How "
            "many dollars does she pay?",
        )[variant]
        return text, p * (100 - r) // 100
    if form == "groups":
        g, k, e = n(2, 9), n(2, 12), n(1, 9)
        text = (
            f"There are {g} boxes with {k} {thing} each and {e} more {thing} "
            f"outside the boxes. How many {thing} are there in all?",
            f"{who} packs {k} {thing} in each of {g} bags and keeps {e} {thing} "
            f"loose. How many {thing} does {who} have?",
        )[variant]
        return text, g * k + e
    raise ValueError(f"unknown form {form!r}")


def word_problems(count: int, *, seed: int) -> datasets.Dataset:
    """`count` problems, the forms in turn: `prompt`, `answer` (a number), `kind`."""
    rng = np.random.default_rng([seed, 4242])
    rows: dict[str, list[str]] = {"prompt": [], "answer": [], "kind": []}
    for i in range(count):
        form = FORMS[i % len(FORMS)]
        text, answer = _problem(form, rng, int(rng.integers(2)))
        rows["prompt"].append(text)
        rows["answer"].append(str(answer))
        rows["kind"].append(form)
    return datasets.Dataset.from_dict(rows)


# -- answers ---------------------------------------------------------------------------


def as_number(text: str | None) -> Fraction | None:
    """`text` as an exact number ("1,200" and "3/4" too); None if it is not one."""
    if text is None:
        return None
    text = text.strip().replace(",", "").rstrip(".")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def last_number_answer(question: str, output: str) -> str | None:
    """The number after the last "Answer:" / "answer is", else the last number."""
    stated = _ANSWER.findall(output)
    if stated:
        return stated[-1]
    found = _NUMBER.findall(output)
    return found[-1] if found else None


def same_number(extracted: str | None, answer: str) -> bool:
    """Exact numeric match (3 == 3.0 == 6/2); False when nothing was extracted."""
    value = as_number(extracted)
    return value is not None and value == as_number(answer)


def regex_answer(question: str, output: str) -> str | None:
    """OpenCompass's gsm8k extraction: the last number before any "Question:"."""
    found = extract_many([(question, output, "arithmetic", ())], method="regex")
    return found[0]


def load_extractor(spec: str) -> Extractor:
    """The text extractor `spec` names: "last-number", "regex" or module:function."""
    spec = spec.strip()
    if spec in ("", LAST_NUMBER):
        return last_number_answer
    if spec == REGEX:
        return regex_answer
    module, colon, name = spec.partition(":")
    if not (colon and module and name):
        raise ValueError(
            f"extractor {spec!r}: expected {LAST_NUMBER!r}, {REGEX!r}, {MODEL!r} "
            "or 'module:function'"
        )
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as error:
        raise ValueError(f"extractor {spec!r}: {error}") from None


def extract_answers(
    spec: str,
    questions: list[str],
    outputs: list[str],
    generator: Generator | None = None,
) -> list[str | None]:
    """Each output's final answer, by the extractor `spec` names.

    "model" reads every (question, output) with `generator` in one batched call
    (xFinder's prompt; "[No valid answer]" is None); the others go row by row.
    """
    if spec.strip() == MODEL:
        items = [
            (q, o, "arithmetic", ()) for q, o in zip(questions, outputs, strict=True)
        ]
        return extract_many(items, method="model", generator=generator)
    extract = load_extractor(spec)
    return [extract(q, o) for q, o in zip(questions, outputs, strict=True)]
