"""Key-answer extraction that other tasks' evaluations can call, and answer equality.

An evaluation that scores what a model wrote first needs the answer in it. Two
methods answer the same call, `extract(question, output, kind, options)`:

- "regex": the RegEx of a real evaluation framework (OpenCompass's, `regex`);
- "model": an xFinder-style extractor, a causal LM that reads the question, its
  options and the output and writes the key answer (`finder_prompt`), given as a
  `spry.generators.Generator`: the fine-tuned local model of this task, an
  OpenAI-compatible endpoint, or a scripted function in tests.

Both return the key answer as text (an option letter, a number, "Yes"/"No", a
span) or None when the output gives no valid answer. `same_answer` compares a key
answer with the truth as the answer's kind asks: numbers as numbers ("1,234" ==
"1234.0"), letters without brackets or case, text without case, punctuation and
articles.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Literal

from ..generators import Generator
from .regex import regex_extract

KINDS = ("arithmetic", "multiple-choice", "yes-no", "short-text")
NO_ANSWER = "[No valid answer]"
LETTERS = "ABCD"

Method = Literal["regex", "model"]
MAX_NEW_TOKENS = 12  # a key answer is a letter, a number, a word or [No valid answer]
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def finder_prompt(question: str, output: str, options: Sequence[str] = ()) -> str:
    """What the extractor reads: the question, its options, the output to read."""
    lines = ["Extract the key answer from the output.", f"Question: {question}"]
    if options:
        listed = "; ".join(
            f"{L}) {text}" for L, text in zip(LETTERS, options, strict=False)
        )
        lines.append(f"Options: {listed}")
    lines += [f"Output: {output}", "Key answer:"]
    return "\n".join(lines)


def parse_key_answer(text: str) -> str | None:
    """The extractor's written answer: its first line, stripped; None for none."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if not first or first.casefold() == NO_ANSWER.casefold():
        return None
    return first


def extract(
    question: str,
    output: str,
    kind: str,
    options: Sequence[str] = (),
    *,
    method: Method = "regex",
    generator: Generator | None = None,
) -> str | None:
    """The key answer `output` gives to `question`, or None when it gives none.

    Parameters
    ----------
    question : str
        The question the output answers.
    output : str
        What a model wrote.
    kind : str
        "arithmetic", "multiple-choice", "yes-no" or "short-text".
    options : Sequence[str] (default: ())
        The option texts of a multiple-choice question, A first.
    method : "regex" | "model" (default: "regex")
        OpenCompass's RegEx, or the extractor `generator` (required then).
    generator : Generator | None (default: None)
        Writes the key answer after `finder_prompt` (greedy, a few tokens).
    """
    return extract_many(
        [(question, output, kind, tuple(options))], method=method, generator=generator
    )[0]


def extract_many(
    items: Sequence[tuple[str, str, str, Sequence[str]]],
    *,
    method: Method = "regex",
    generator: Generator | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str | None]:
    """`extract` over (question, output, kind, options) items, one generator call."""
    for _, _, kind, _ in items:
        if kind not in KINDS:
            raise ValueError(f"unknown answer kind {kind!r}; expected one of {KINDS}")
    if method == "regex":
        return [regex_extract(out, kind, opts) for _, out, kind, opts in items]
    if method != "model":
        raise ValueError(f"method should be 'regex' or 'model', got {method!r}")
    if generator is None:
        raise ValueError("method='model' needs a generator (the extractor)")
    prompts = [finder_prompt(q, out, opts) for q, out, _, opts in items]
    written = generator(prompts, max_new_tokens=max_new_tokens)
    return [parse_key_answer(text) for text in written]


# -- equality ------------------------------------------------------------------------


def as_number(text: str) -> float | None:
    """The number `text` states: "1,234", "$1234.0", "1,234 eggs"; else None."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    match = re.fullmatch(rf"({_NUMBER.pattern})\s*[^\W\d_]*", cleaned)
    return float(match.group(1)) if match else None


def as_letter(text: str) -> str:
    """An option letter without brackets, bold or a trailing period: "(b)." -> "B"."""
    return text.strip().strip("()*.[] ").upper()


def as_text(text: str) -> str:
    """Case-folded, without punctuation and articles, spaces single."""
    text = text.casefold().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def same_answer(key: str | None, truth: str | None, kind: str) -> bool:
    """Whether key answer `key` is `truth` for an answer of `kind`.

    None and "[No valid answer]" are the same (no answer); numbers are compared as
    numbers (relative 1e-9), option letters without brackets or case, other text
    by `as_text`.
    """
    if key is None or key.strip().casefold() == NO_ANSWER.casefold():
        key = None
    if truth is None or truth.strip().casefold() == NO_ANSWER.casefold():
        truth = None
    if key is None or truth is None:
        return key is None and truth is None
    if kind == "arithmetic":
        a, b = as_number(key), as_number(truth)
        if a is not None and b is not None:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        return as_text(key) == as_text(truth)
    if kind == "multiple-choice":
        return as_letter(key) == as_letter(truth)
    return as_text(key) == as_text(truth)
