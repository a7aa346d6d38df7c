r"""Verifiable constraints in IFEval's spirit: an instruction line and a checker each.

Conifer's instructions carry several constraints at once; scoring them needs a
programmatic verdict per constraint, as IFEval (Zhou et al., 2023, "Instruction-
Following Evaluation for Large Language Models", arxiv.org/abs/2311.07911) gives.
Each kind here is a small frozen dataclass with `describe()` (the sentence the
instruction shows) and `check(response)` (strict: the response as written), and
names the IFEval instruction id it follows in `IFEVAL_ID`:

| kind | IFEval id | what `check` does |
|---|---|---|
| `words` | length_constraints:number_words | `\w+` tokens (IFEval's count_words) |
| `sentences` | length_constraints:number_sentences | pieces ending in . ! ? |
| `include` | keywords:existence | each keyword found, case-insensitive |
| `exclude` | keywords:forbidden_words | no keyword as a whole word |
| `json` | detectable_format:json_format | json.loads of the whole (```json fence
  allowed), plus: an object with the given keys (an addition of ours) |
| `bullets` | detectable_format:number_bullet_lists | exactly N "* " / "- " lines |
| `title` | detectable_format:title | a <<title>> on one line |
| `lowercase` | change_case:english_lowercase | the response equals its lower() |
| `capitals` | change_case:english_capital | the response equals its upper() |
| `start` | combination:repeat_prompt (its check) | starts with the phrase |
| `end` | startend:end_checker | ends with the phrase |
| `paragraphs` | length_constraints:number_paragraphs | N parts split by *** |

IFEval has no "start with this phrase" instruction; its repeat_prompt checks that
the response starts with a given text (case-insensitive), the check used here.
IFEval's word and sentence bounds are "at least" / "less than"; ours are "at
least" / "at most" (`relation`).

Constraints are stored as plain dicts (`to_dict`, `from_dict`) so that a dataset
row can carry them and a checker can be rebuilt from the row anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

AT_LEAST, AT_MOST = "at least", "at most"
RELATIONS = (AT_LEAST, AT_MOST)
PARAGRAPH_DIVIDER = "***"  # IFEval's markdown divider between paragraphs

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_JSON_FENCE = re.compile(r"^```(?:json|Json|JSON)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.MULTILINE)  # IFEval's patterns
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)
_TITLE = re.compile(r"<<[^\n]+>>")
_PARAGRAPH_SPLIT = re.compile(r"\s?\*\*\*\s?")


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of word characters (IFEval's count_words)."""
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """Pieces ending in . ! or ? and white space (or the end), wordless ones dropped.

    A bullet star or a divider alone is no sentence.
    Simpler than IFEval's splitter (no abbreviation list): the reference writer
    only uses source sentences that this splitter reads as one sentence.
    """
    pieces = _SENTENCE_END.split(text.strip())
    return [p for p in pieces if _WORD.search(p)]


def _relation_holds(relation: str, value: int, bound: int) -> bool:
    return value >= bound if relation == AT_LEAST else value <= bound


def _check_relation(relation: str, bound: int, what: str) -> None:
    if relation not in RELATIONS:
        raise ValueError(
            f"{what}: relation should be one of {RELATIONS}, got {relation!r}"
        )
    if bound < 1:
        raise ValueError(f"{what}: the bound should be at least 1, got {bound}")


def _json_text(response: str) -> str:
    """The response without a ```json fence around it (IFEval strips one)."""
    text = response.strip()
    fenced = _JSON_FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


@dataclass(frozen=True)
class Constraint:
    """One verifiable constraint: an instruction sentence and its checker."""

    kind: ClassVar[str]
    IFEVAL_ID: ClassVar[str]

    def describe(self) -> str:
        """The instruction's sentence for this constraint."""
        raise NotImplementedError

    def check(self, response: str) -> bool:
        """Whether `response`, as written, satisfies the constraint (strict)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        values = {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
        }
        return {"kind": self.kind, **values}


@dataclass(frozen=True)
class WordCount(Constraint):
    """A bound on the number of words (`relation` `bound`)."""

    relation: str
    bound: int
    kind: ClassVar[str] = "words"
    IFEVAL_ID: ClassVar[str] = "length_constraints:number_words"

    def __post_init__(self) -> None:
        _check_relation(self.relation, self.bound, self.kind)

    def describe(self) -> str:
        return f"Answer with {self.relation} {self.bound} words."

    def check(self, response: str) -> bool:
        return _relation_holds(self.relation, count_words(response), self.bound)


@dataclass(frozen=True)
class SentenceCount(Constraint):
    """A bound on the number of sentences (`relation` `bound`)."""

    relation: str
    bound: int
    kind: ClassVar[str] = "sentences"
    IFEVAL_ID: ClassVar[str] = "length_constraints:number_sentences"

    def __post_init__(self) -> None:
        _check_relation(self.relation, self.bound, self.kind)

    def describe(self) -> str:
        noun = "sentence" if self.bound == 1 else "sentences"
        return f"Your response should contain {self.relation} {self.bound} {noun}."

    def check(self, response: str) -> bool:
        return _relation_holds(
            self.relation, len(split_sentences(response)), self.bound
        )


@dataclass(frozen=True)
class IncludeKeywords(Constraint):
    """Every keyword somewhere in the response, any case."""

    words: tuple[str, ...]
    kind: ClassVar[str] = "include"
    IFEVAL_ID: ClassVar[str] = "keywords:existence"

    def describe(self) -> str:
        return f"Include the keywords {', '.join(self.words)} in the response."

    def check(self, response: str) -> bool:
        # IFEval: re.search(keyword, value, re.IGNORECASE), a substring match
        return all(
            re.search(re.escape(w), response, flags=re.IGNORECASE) for w in self.words
        )


@dataclass(frozen=True)
class ExcludeWords(Constraint):
    """None of the words as a whole word, any case."""

    words: tuple[str, ...]
    kind: ClassVar[str] = "exclude"
    IFEVAL_ID: ClassVar[str] = "keywords:forbidden_words"

    def describe(self) -> str:
        return f"Do not include the words {', '.join(self.words)} in the response."

    def check(self, response: str) -> bool:
        # IFEval: re.search(r"\b" + word + r"\b", value, re.IGNORECASE)
        return not any(
            re.search(rf"\b{re.escape(w)}\b", response, flags=re.IGNORECASE)
            for w in self.words
        )


@dataclass(frozen=True)
class JsonFormat(Constraint):
    """The whole response a JSON object with these keys."""

    keys: tuple[str, ...]
    kind: ClassVar[str] = "json"
    IFEVAL_ID: ClassVar[str] = "detectable_format:json_format"

    def describe(self) -> str:
        keys = ", ".join(f'"{k}"' for k in self.keys)
        return (
            f"Wrap your entire output in JSON format: an object with the keys {keys}."
        )

    def check(self, response: str) -> bool:
        try:
            value = json.loads(_json_text(response))
        except ValueError:
            return False
        return isinstance(value, dict) and all(k in value for k in self.keys)


@dataclass(frozen=True)
class BulletList(Constraint):
    """Exactly `count` bullet lines."""

    count: int
    kind: ClassVar[str] = "bullets"
    IFEVAL_ID: ClassVar[str] = "detectable_format:number_bullet_lists"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"bullets: count should be at least 1, got {self.count}")

    def describe(self) -> str:
        return (
            f"Your answer must contain exactly {self.count} bullet points, "
            'each a line starting with "* ".'
        )

    def check(self, response: str) -> bool:
        found = len(_STAR_BULLET.findall(response)) + len(
            _DASH_BULLET.findall(response)
        )
        return found == self.count


@dataclass(frozen=True)
class Title(Constraint):
    """A non-empty title in double angular brackets."""

    kind: ClassVar[str] = "title"
    IFEVAL_ID: ClassVar[str] = "detectable_format:title"

    def describe(self) -> str:
        return (
            "Give your answer a title wrapped in double angular brackets, "
            "such as <<my title>>."
        )

    def check(self, response: str) -> bool:
        return any(t.lstrip("<").rstrip(">").strip() for t in _TITLE.findall(response))


@dataclass(frozen=True)
class Lowercase(Constraint):
    """No capital letter anywhere."""

    kind: ClassVar[str] = "lowercase"
    IFEVAL_ID: ClassVar[str] = "change_case:english_lowercase"

    def describe(self) -> str:
        return "Your entire response should be in lowercase letters, no capitals."

    def check(self, response: str) -> bool:
        return response == response.lower()


@dataclass(frozen=True)
class Capitals(Constraint):
    """No small letter anywhere."""

    kind: ClassVar[str] = "capitals"
    IFEVAL_ID: ClassVar[str] = "change_case:english_capital"

    def describe(self) -> str:
        return "Your entire response should be in capital letters."

    def check(self, response: str) -> bool:
        return response == response.upper()


@dataclass(frozen=True)
class StartPhrase(Constraint):
    """The response starts with `phrase` (any case)."""

    phrase: str
    kind: ClassVar[str] = "start"
    IFEVAL_ID: ClassVar[str] = "combination:repeat_prompt"

    def describe(self) -> str:
        return f"Start your response with the exact phrase '{self.phrase}'."

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.phrase.strip().lower())


@dataclass(frozen=True)
class EndPhrase(Constraint):
    """The response ends with `phrase` (any case)."""

    phrase: str
    kind: ClassVar[str] = "end"
    IFEVAL_ID: ClassVar[str] = "startend:end_checker"

    def describe(self) -> str:
        return (
            f"Finish your response with the exact phrase '{self.phrase}', "
            "with no other words after it."
        )

    def check(self, response: str) -> bool:
        return response.strip().lower().endswith(self.phrase.strip().lower())


@dataclass(frozen=True)
class Paragraphs(Constraint):
    """Exactly `count` paragraphs between *** dividers."""

    count: int
    kind: ClassVar[str] = "paragraphs"
    IFEVAL_ID: ClassVar[str] = "length_constraints:number_paragraphs"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(
                f"paragraphs: count should be at least 1, got {self.count}"
            )

    def describe(self) -> str:
        return (
            f"There should be {self.count} paragraphs, separated from each other "
            f"by the markdown divider {PARAGRAPH_DIVIDER}."
        )

    def check(self, response: str) -> bool:
        # IFEval: empty pieces only at the ends; one inside means a doubled divider
        pieces = _PARAGRAPH_SPLIT.split(response)
        found = len(pieces)
        for index, piece in enumerate(pieces):
            if not piece.strip():
                if index in (0, len(pieces) - 1):
                    found -= 1
                else:
                    return False
        return found == self.count


KINDS: dict[str, type[Constraint]] = {
    cls.kind: cls
    for cls in (
        WordCount,
        SentenceCount,
        IncludeKeywords,
        ExcludeWords,
        JsonFormat,
        BulletList,
        Title,
        Lowercase,
        Capitals,
        StartPhrase,
        EndPhrase,
        Paragraphs,
    )
}


def from_dict(values: Mapping[str, Any]) -> Constraint:
    """The constraint `Constraint.to_dict` wrote."""
    kind = values.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown constraint kind {kind!r}; known: {sorted(KINDS)}")
    cls = KINDS[str(kind)]
    names = {f.name for f in fields(cls)}
    args = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in values.items()
        if k in names
    }
    return cls(**args)


def dumps(constraints: Sequence[Constraint]) -> str:
    """Constraints as one JSON string (a dataset cell)."""
    return json.dumps([c.to_dict() for c in constraints])


def loads(text: str) -> tuple[Constraint, ...]:
    return tuple(from_dict(v) for v in json.loads(text))


def verdicts(constraints: Sequence[Constraint], response: str) -> list[bool]:
    """Each constraint's verdict on `response`, in order."""
    return [c.check(response) for c in constraints]
