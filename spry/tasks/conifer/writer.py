"""The reference writer (every constraint met) and the near-miss writer (some broken).

The reference response is built, not generated, from the instruction's pool of
source sentences, so the training data is right by construction:

1. content: sentences holding each keyword to include come first (a keyword no
   pool sentence has gets a sentence of its own), sentences with a forbidden word
   are left out; the rest follow, shortest first under a word ceiling, longest
   first under a word floor;
2. counts: the fewest sentences (at least one per bullet or paragraph) whose
   rendering meets the word and sentence bounds; sentences are added one at a
   time until the bounds hold, or the instruction is `Unsatisfiable`;
3. layout: the body as JSON, bullets or paragraphs, a <<title>> line above it,
   the start phrase before everything and the end phrase after;
4. case last: lower or upper case over the whole text.

`write_reference` then runs every checker on the result and raises `WriterError`
if one fails: a wrong reference is a bug here, never a training example.

The near-miss writer (`write_near_miss`) makes a failed attempt for process
feedback without generating: it swaps one or two constraints for their opposite
(a word floor for a ceiling below it, bullets N for N + 1, a keyword for its
absence, a forbidden word for its presence; a format, title, case or phrase is
left out), writes the reference for that, and keeps it only if the original
checkers reject exactly the swapped constraints.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .constraints import (
    AT_LEAST,
    AT_MOST,
    BulletList,
    Capitals,
    Constraint,
    EndPhrase,
    ExcludeWords,
    IncludeKeywords,
    JsonFormat,
    Lowercase,
    Paragraphs,
    SentenceCount,
    StartPhrase,
    Title,
    WordCount,
)
from .instructions import Instruction, Unsatisfiable

JSON_VALUES = {
    "verdict": {"positive": "worth seeing", "negative": "not worth seeing"},
    "rating": {"positive": "4 out of 5", "negative": "2 out of 5"},
    "mood": {"positive": "upbeat", "negative": "downbeat"},
}
KEYWORD_SENTENCE = "One word for it: {0}."


class WriterError(AssertionError):
    """A written reference fails one of its own checkers (a bug in the writer)."""


@dataclass(frozen=True)
class Absent(Constraint):
    """No keyword anywhere, even inside a word: what breaks `IncludeKeywords`.

    Used only by the near-miss writer; instructions never ask for it.
    """

    words: tuple[str, ...]
    kind: ClassVar[str] = "absent"
    IFEVAL_ID: ClassVar[str] = ""

    def describe(self) -> str:
        return f"Do not mention {', '.join(self.words)}."

    def check(self, response: str) -> bool:
        return not any(w.lower() in response.lower() for w in self.words)


def _first(
    constraints: Sequence[Constraint], cls: type[Constraint]
) -> Constraint | None:
    return next((c for c in constraints if isinstance(c, cls)), None)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def _content(
    constraints: Sequence[Constraint], pool: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(sentences that must be used, the others in the order to add them)."""
    include = _first(constraints, IncludeKeywords)
    exclude = _first(constraints, ExcludeWords)
    absent = _first(constraints, Absent)
    banned = exclude.words if isinstance(exclude, ExcludeWords) else ()
    missing = absent.words if isinstance(absent, Absent) else ()
    allowed = [
        s
        for s in pool
        if not any(_has_word(s, w) for w in banned)
        and not any(w.lower() in s.lower() for w in missing)
    ]
    needed: list[str] = []
    for word in include.words if isinstance(include, IncludeKeywords) else ():
        if any(_has_word(s, word) for s in needed):
            continue
        holder = next((s for s in allowed if _has_word(s, word)), None)
        needed.append(holder or KEYWORD_SENTENCE.format(word))
    others = [s for s in allowed if s not in needed]
    words = _first(constraints, WordCount)
    if isinstance(words, WordCount):
        others.sort(key=len, reverse=words.relation == AT_LEAST)  # stable sort
    return needed, others


def _chunks(items: Sequence[str], parts: int) -> list[str]:
    """`items` in `parts` consecutive groups as even as can be, each joined."""
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [" ".join(items[a:b]) for a, b in itertools.pairwise(bounds)]


def render(
    constraints: Sequence[Constraint], polarity: str, sentences: Sequence[str]
) -> str:
    """The response made of `sentences` in the layout and case asked for."""
    form = _first(constraints, JsonFormat)
    bullets = _first(constraints, BulletList)
    paragraphs = _first(constraints, Paragraphs)
    if isinstance(form, JsonFormat):
        body = " ".join(sentences)
        value = {k: JSON_VALUES.get(k, {}).get(polarity, body) for k in form.keys}
        value[form.keys[0]] = body
        text = json.dumps(value)
    elif isinstance(bullets, BulletList):
        text = "\n".join(f"* {item}" for item in _chunks(sentences, bullets.count))
    elif isinstance(paragraphs, Paragraphs):
        text = "\n***\n".join(_chunks(sentences, paragraphs.count))
    else:
        text = " ".join(sentences)
    on_lines = isinstance(bullets, BulletList) or _first(constraints, Title) is not None
    if _first(constraints, Title) is not None:
        text = f"<<My {polarity} review>>\n{text}"
    start = _first(constraints, StartPhrase)
    if isinstance(start, StartPhrase):
        text = f"{start.phrase}{chr(10) if on_lines else ' '}{text}"
    end = _first(constraints, EndPhrase)
    if isinstance(end, EndPhrase):
        text = (
            f"{text}{chr(10) if isinstance(bullets, BulletList) else ' '}{end.phrase}"
        )
    if _first(constraints, Lowercase) is not None:
        text = text.lower()
    if _first(constraints, Capitals) is not None:
        text = text.upper()
    return text


def _counts_hold(constraints: Sequence[Constraint], text: str) -> bool:
    return all(
        c.check(text) for c in constraints if isinstance(c, (WordCount, SentenceCount))
    )


def compose(
    constraints: Sequence[Constraint], polarity: str, pool: Sequence[str]
) -> str:
    """The shortest response from `pool` meeting the bounds (others unchecked)."""
    needed, others = _content(constraints, pool)
    fewest = len(needed)
    for layout in (_first(constraints, BulletList), _first(constraints, Paragraphs)):
        if isinstance(layout, (BulletList, Paragraphs)):
            fewest = max(fewest, layout.count)
    for size in range(max(fewest, 1), len(needed) + len(others) + 1):
        chosen = needed + others[: size - len(needed)]
        text = render(constraints, polarity, chosen)
        if _counts_hold(constraints, text):
            return text
    raise Unsatisfiable(
        f"no response from {len(pool)} sentences meets "
        f"{[c.to_dict() for c in constraints]}"
    )


def write_reference(instruction: Instruction) -> str:
    """The response that meets every constraint; checked, or `WriterError`."""
    text = compose(instruction.constraints, instruction.polarity, instruction.pool)
    failed = [c.kind for c in instruction.constraints if not c.check(text)]
    if failed:
        raise WriterError(f"the reference fails {failed}: {text!r}")
    return text


def opposite(constraint: Constraint) -> Constraint | None:
    """What to write instead so that `constraint` fails (None: leave it out)."""
    if isinstance(constraint, (WordCount, SentenceCount)):
        kind = type(constraint)
        if constraint.relation == AT_LEAST:
            return kind(AT_MOST, constraint.bound - 1)
        return kind(AT_LEAST, constraint.bound + 1)
    if isinstance(constraint, IncludeKeywords):
        return Absent(constraint.words)
    if isinstance(constraint, ExcludeWords):
        return IncludeKeywords(constraint.words[:1])
    if isinstance(constraint, BulletList):
        return BulletList(constraint.count + 1)
    if isinstance(constraint, Paragraphs):
        return Paragraphs(constraint.count + 1)
    return None  # JSON, title, case, start and end phrases: simply not done


def write_near_miss(
    instruction: Instruction, breaks: int, rng: np.random.Generator
) -> tuple[str, tuple[int, ...]]:
    """A response that fails exactly `breaks` constraints, or fewer (at least one).

    Returns the response and the indices of the constraints it fails. Subsets
    to break are tried in a random order; one whose writing is unsatisfiable or
    fails another constraint too is skipped; if no subset of `breaks` works
    (two bounds that cannot both be broken from the pool), one fewer is tried.
    """
    constraints = instruction.constraints
    most = max(1, min(breaks, len(constraints)))
    subsets = [
        subset
        for size in range(most, 0, -1)
        for subset in _shuffled(
            list(itertools.combinations(range(len(constraints)), size)), rng
        )
    ]
    for broken in subsets:
        swapped = [opposite(c) if i in broken else c for i, c in enumerate(constraints)]
        kept = [c for c in swapped if c is not None]
        try:
            text = compose(kept, instruction.polarity, instruction.pool)
        except (Unsatisfiable, ValueError):
            continue
        failed = tuple(i for i, c in enumerate(constraints) if not c.check(text))
        if failed == broken:
            return text, broken
    raise Unsatisfiable(f"no near miss breaking {most} of {instruction.kinds}")


def _shuffled(
    items: list[tuple[int, ...]], rng: np.random.Generator
) -> list[tuple[int, ...]]:
    return [items[int(i)] for i in rng.permutation(len(items))]
