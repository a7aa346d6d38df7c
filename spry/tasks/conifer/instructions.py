"""Instructions with 1 to 5 constraints, drawn from a seed and offline review text.

An instruction asks for a short positive or negative movie review and adds
`level` constraints (`constraints`). Its raw material is a pool of Rotten
Tomatoes sentences of that polarity (`spry.data`'s offline copy), from which the
reference writer (`writer`) builds the response; the prompt shows only the task
and the constraints, so a model has to write the review itself.

Only compatible kinds are combined (`compatible`): one format of JSON, bullets and
paragraphs; one case; one word bound and one sentence bound; JSON (a whole-
response object) excludes a title, fixed start and end phrases, capitals (the
keys would change) and a sentence count (sentences inside JSON strings are not
IFEval's). Keywords to include are words of the pool, forbidden words are common
review words the pool does not use. Bounds are drawn from fixed lists; a draw the
writer cannot satisfy from its pool (four bullets under at most three sentences)
is drawn again, so every instruction kept has a reference that passes its checkers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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
    count_words,
    split_sentences,
)

LEVELS = (1, 2, 3, 4, 5)  # constraints per instruction
POOL_SIZE = 8  # source sentences an instruction's reference may use
SENTENCE_WORDS = (4, 16)  # source sentences of this many words (inclusive)
FORBIDDEN = ("movie", "film", "story", "really", "characters", "director", "plot")
START_PHRASES = ("In short,", "My verdict:", "Here is my take:", "To be honest,")
END_PHRASES = (
    "Is there anything else I can help with?",
    "That is my review.",
    "Enjoy the show!",
)
JSON_EXTRA_KEYS = ("verdict", "rating", "mood")
WORD_BOUNDS = {AT_LEAST: (15, 25, 35), AT_MOST: (30, 45, 60)}
SENTENCE_BOUNDS = {AT_LEAST: (2, 3, 4), AT_MOST: (2, 3, 4, 5)}
BULLET_COUNTS = (2, 3, 4)
PARAGRAPH_COUNTS = (2, 3)
KEYWORD_LETTERS = 5  # keywords to include have at least this many letters
MAX_DRAWS = 200  # redraws of one instruction before giving up

# Kinds that exclude each other (one of each group at most)
EXCLUSIVE = (
    frozenset({"json", "bullets", "paragraphs"}),
    frozenset({"lowercase", "capitals"}),
)
EXCLUDED_BY = {"json": frozenset({"title", "start", "end", "capitals", "sentences"})}
ALL_KINDS = (
    "words", "sentences", "include", "exclude", "json", "bullets", "title",
    "lowercase", "capitals", "start", "end", "paragraphs",
)  # fmt: skip
_USABLE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()&%$-]*[a-z0-9)]\.$")


class Unsatisfiable(ValueError):
    """The writer finds no response for these constraints in this pool."""


@dataclass(frozen=True)
class Instruction:
    """A review to write, its constraints, and the sentences to write it from."""

    polarity: str  # "positive" or "negative"
    constraints: tuple[Constraint, ...]
    pool: tuple[str, ...]

    @property
    def level(self) -> int:
        return len(self.constraints)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(c.kind for c in self.constraints)

    @property
    def task(self) -> str:
        """What to write, without the constraints."""
        return f"Write a short {self.polarity} review of a movie."

    def text(self) -> str:
        """The prompt: the task, then one sentence per constraint."""
        return " ".join([self.task, *(c.describe() for c in self.constraints)])


def compatible(kinds: Sequence[str]) -> bool:
    """Whether these constraint kinds can be asked for together."""
    chosen = set(kinds)
    if len(chosen) != len(kinds):
        return False
    if any(len(chosen & group) > 1 for group in EXCLUSIVE):
        return False
    return not any(chosen & EXCLUDED_BY.get(k, frozenset()) for k in chosen)


def usable_sentence(text: str) -> bool:
    """A source sentence the writer can use: plain ASCII, one sentence, 4-16 words.

    No characters that the format checkers read (* < > { } " #), a capital first
    and a full stop last, so it counts as exactly one sentence wherever it goes.
    """
    low, high = SENTENCE_WORDS
    return (
        bool(_USABLE.match(text))
        and len(split_sentences(text)) == 1
        and low <= count_words(text) <= high
    )


def draw_kinds(level: int, rng: np.random.Generator) -> tuple[str, ...]:
    """`level` compatible kinds, in a random order."""
    for _ in range(MAX_DRAWS):
        chosen: list[str] = []
        for index in rng.permutation(len(ALL_KINDS)):
            kind = ALL_KINDS[int(index)]
            if compatible([*chosen, kind]):
                chosen.append(kind)
            if len(chosen) == level:
                return tuple(chosen)
    raise ValueError(f"no {level} compatible constraint kinds")


def _pick(rng: np.random.Generator, options: Sequence[object]) -> object:
    return options[int(rng.integers(len(options)))]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def draw_instruction(
    level: int,
    sentences: Sequence[str],
    polarities: Sequence[str],
    rng: np.random.Generator,
) -> Instruction:
    """One instruction of `level` constraints over usable `sentences`.

    `polarities[i]` is sentence i's polarity; the pool is `POOL_SIZE` sentences
    of one polarity that use no forbidden word and no fixed phrase.
    """
    kinds = draw_kinds(level, rng)
    polarity = str(_pick(rng, ("positive", "negative")))
    forbidden: tuple[str, ...] = ()
    if "exclude" in kinds:
        count = 1 + int(rng.integers(2))
        forbidden = tuple(
            FORBIDDEN[int(i)] for i in rng.choice(len(FORBIDDEN), count, replace=False)
        )
    candidates = [
        i
        for i in rng.permutation(len(sentences))
        if polarities[int(i)] == polarity
        and not any(_has_word(sentences[int(i)], w) for w in forbidden)
    ]
    pool = tuple(sentences[int(i)] for i in candidates[:POOL_SIZE])
    if len(pool) < POOL_SIZE:
        raise Unsatisfiable(f"only {len(pool)} {polarity} sentences to draw from")
    constraints: list[Constraint] = []
    for kind in kinds:
        constraints.append(_draw_constraint(kind, pool, forbidden, rng))
    return Instruction(polarity=polarity, constraints=tuple(constraints), pool=pool)


def _draw_constraint(
    kind: str,
    pool: Sequence[str],
    forbidden: tuple[str, ...],
    rng: np.random.Generator,
) -> Constraint:
    if kind in ("words", "sentences"):
        relation = str(_pick(rng, (AT_LEAST, AT_MOST)))
        bounds = (WORD_BOUNDS if kind == "words" else SENTENCE_BOUNDS)[relation]
        cls = WordCount if kind == "words" else SentenceCount
        return cls(relation, int(_pick(rng, bounds)))  # type: ignore[arg-type]
    if kind == "include":
        words = sorted(
            {
                w.lower()
                for s in pool
                for w in re.findall(r"[A-Za-z]+", s)
                if len(w) >= KEYWORD_LETTERS and w.islower() and w not in forbidden
            }
        )
        count = min(len(words), 1 + int(rng.integers(2)))
        chosen = rng.choice(len(words), count, replace=False)
        return IncludeKeywords(tuple(words[int(i)] for i in sorted(chosen)))
    if kind == "exclude":
        return ExcludeWords(forbidden)
    if kind == "json":
        return JsonFormat(("review", str(_pick(rng, JSON_EXTRA_KEYS))))
    if kind == "bullets":
        return BulletList(int(_pick(rng, BULLET_COUNTS)))
    if kind == "paragraphs":
        return Paragraphs(int(_pick(rng, PARAGRAPH_COUNTS)))
    if kind == "title":
        return Title()
    if kind == "lowercase":
        return Lowercase()
    if kind == "capitals":
        return Capitals()
    if kind == "start":
        return StartPhrase(str(_pick(rng, START_PHRASES)))
    if kind == "end":
        return EndPhrase(str(_pick(rng, END_PHRASES)))
    raise ValueError(f"unknown constraint kind {kind!r}")
