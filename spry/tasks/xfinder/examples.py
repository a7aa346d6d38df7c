r"""The key-answer-finder set: questions with known answers, outputs in many styles.

xFinder's KAF data pairs a question (with its options) and an LLM's output with the
key answer the output gives. Here the task builds such a set itself, deterministic
from a seed, so every label is right by construction and a test can recompute it:

- four answer kinds (`KINDS`), two question templates each:
  * "arithmetic": "What is 37 * 12?" and "Ann has 250 boxes with 24 eggs in each.
    How many eggs are there in all?" (numbers up to about 100,000);
  * "multiple-choice": options A-D over a Rotten Tomatoes review (which of four
    words appears in it; its sentiment among positive/negative/neutral/mixed);
  * "yes-no": is the review positive; is one number greater than another;
  * "short-text": where does a person live; what colour is their thing (a span of
    the question);
- outputs written in many styles (`STYLES`), each row labelled with its style, and
  the key answer the output gives: the option letter for multiple choice (even when
  the output names the option's text), the number as plain digits, "Yes"/"No", the
  span, or `NO_ANSWER` for a refusal;
- outputs of a language model itself (style "local-model", opt-in): a generator
  (`spry.generators`: the local model, an endpoint, a script) is told the right
  answer and asked to state it; an output is kept when it does (a check of the
  answer's surface forms), labelled with that answer.

Training and held-out rows come from different questions (multiple-choice and
review questions from the fixed Rotten Tomatoes train and test splits, the rest
from separate random streams, no question text in both), and the held-out set also
has styles never seen in training (`HELD_OUT_STYLES`: LaTeX `\boxed{}` and an
answer corrected mid-output, plus "local-model" when it is on).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import numpy as np

from ...answers import KINDS, LETTERS, NO_ANSWER
from ...data import load_text_dataset

MAX_REVIEW_WORDS = 20  # short reviews keep prompts short
SENTIMENTS = ("positive", "negative", "neutral", "mixed")
NAMES = ("Ann", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade")
CITIES = ("Oslo", "Lima", "Paris", "Cairo", "Delhi", "Quito", "Perth", "Turin")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
THINGS = ("kite", "ball", "bike", "hat", "scarf", "lamp", "mug", "boat")
UNITS = ("eggs", "apples", "pencils", "stamps", "bottles", "tiles")

TRAIN_STYLES = (
    "answer-is",
    "answer-colon",
    "bare",
    "parenthesised",
    "option-text",
    "units-separators",
    "chain-of-thought",
    "refusal",
    "markdown-bold",
)
HELD_OUT_STYLES = ("latex-boxed", "correction")
MODEL_STYLE = "local-model"
STYLES = (*TRAIN_STYLES, *HELD_OUT_STYLES, MODEL_STYLE)
# The answer kinds each style is written for (the others: every kind)
STYLE_KINDS = {
    "parenthesised": ("multiple-choice",),
    "option-text": ("multiple-choice",),
    "units-separators": ("arithmetic",),
}


@dataclass(frozen=True)
class Question:
    """A question with its key answer and a wrong answer of the same form."""

    kind: str
    text: str
    answer: str  # the key answer: a letter, plain digits, Yes/No or a span
    wrong: str  # a plausible wrong answer, for corrections and reasoning
    options: tuple[str, ...] = ()
    unit: str = ""  # what an arithmetic answer counts ("" for a bare number)

    def option_text(self, letter: str) -> str:
        return self.options[LETTERS.index(letter)]


def styles_for(kind: str, styles: Sequence[str]) -> list[str]:
    """The `styles` written for questions of `kind`."""
    return [s for s in styles if kind in STYLE_KINDS.get(s, KINDS)]


# -- questions -------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+(?:'[^\W_]+)?", text)


def _arithmetic(rng: np.random.Generator) -> Question:
    if rng.random() < 0.5:
        op = str(rng.choice(["+", "-", "*"]))
        a = int(rng.integers(10, 1000))
        b = int(rng.integers(2, 100)) if op == "*" else int(rng.integers(10, 1000))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        text, unit = f"What is {a} {op} {b}?", ""
    else:
        name, unit = str(rng.choice(NAMES)), str(rng.choice(UNITS))
        a, b = int(rng.integers(20, 1000)), int(rng.integers(6, 100))
        value = a * b
        text = (
            f"{name} has {a} boxes with {b} {unit} in each. "
            f"How many {unit} are there in all?"
        )
    wrong = value + int(rng.choice([-1, 1])) * int(rng.integers(1, 20))
    return Question("arithmetic", text, str(value), str(wrong), unit=unit)


def _choosable(word: str) -> bool:
    """A word a which-word question may offer: alphabetic, 4 letters or more."""
    return len(word) >= 4 and word.isalpha()


def _multiple_choice(
    rng: np.random.Generator, review: str, label: str, vocabulary: Sequence[str]
) -> Question:
    present = sorted({w.lower() for w in _words(review) if _choosable(w)})
    if present and rng.random() < 0.5:
        answer_text = present[int(rng.integers(len(present)))]
        lowered = {w.lower() for w in _words(review)}
        others: list[str] = []
        while len(others) < 3:
            other = vocabulary[int(rng.integers(len(vocabulary)))]
            if other not in lowered and other not in others:
                others.append(other)
        options = [answer_text, *others]
        question = "Which of these words appears in the review?"
    else:
        answer_text, options = label, list(SENTIMENTS)
        question = "What is the sentiment of the review?"
    rng.shuffle(options)
    answer = LETTERS[options.index(answer_text)]
    wrong = str(rng.choice([x for x in LETTERS if x != answer]))
    text = f'Review: "{review}"\n{question}'
    return Question("multiple-choice", text, answer, wrong, options=tuple(options))


def _yes_no(rng: np.random.Generator, review: str, label: str) -> Question:
    if rng.random() < 0.5:
        text = f'Review: "{review}"\nIs this review positive?'
        answer = "Yes" if label == "positive" else "No"
    else:
        a, b = (int(x) for x in rng.choice(np.arange(100, 1000), 2, replace=False))
        text = f"Is {a} greater than {b}?"
        answer = "Yes" if a > b else "No"
    return Question("yes-no", text, answer, "No" if answer == "Yes" else "Yes")


def _short_text(rng: np.random.Generator) -> Question:
    first, second = (str(n) for n in rng.choice(NAMES, 2, replace=False))
    if rng.random() < 0.5:
        here, there = (str(c) for c in rng.choice(CITIES, 2, replace=False))
        text = (
            f"{first} lives in {here} and {second} lives in {there}. "
            f"Where does {second} live?"
        )
    else:
        here, there = (str(c) for c in rng.choice(COLOURS, 2, replace=False))
        mine, theirs = (str(t) for t in rng.choice(THINGS, 2, replace=False))
        text = (
            f"{first} has a {here} {mine} and {second} has a {there} {theirs}. "
            f"What colour is {second}'s {theirs}?"
        )
    return Question("short-text", text, there, here)


def make_questions(
    count: int, reviews: datasets.Dataset, label_names: Sequence[str], seed: int
) -> list[Question]:
    """`count` questions, the kinds in turn; reviews of `reviews` in a seeded order."""
    rng = np.random.default_rng(seed)
    texts, labels = list(reviews["text"]), list(reviews["label"])
    short = [i for i, t in enumerate(texts) if 0 < len(_words(t)) <= MAX_REVIEW_WORDS]
    order = [short[int(i)] for i in rng.permutation(len(short))]
    vocabulary = sorted(
        {w.lower() for i in short for w in _words(texts[i]) if _choosable(w)}
    )
    questions: list[Question] = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        review_index = order[n % len(order)]
        review, label = texts[review_index], label_names[labels[review_index]]
        if kind == "arithmetic":
            questions.append(_arithmetic(rng))
        elif kind == "multiple-choice":
            questions.append(_multiple_choice(rng, review, label, vocabulary))
        elif kind == "yes-no":
            questions.append(_yes_no(rng, review, label))
        else:
            questions.append(_short_text(rng))
    return questions


# -- outputs in styles ---------------------------------------------------------------


def _pick(rng: np.random.Generator, forms: Sequence[str]) -> str:
    return forms[int(rng.integers(len(forms)))]


def _answer_is(q: Question, rng: np.random.Generator) -> str:
    x = q.answer
    return _pick(
        rng,
        [
            f"The answer is {x}.",
            f"So the answer is {x}.",
            f"I think the answer is {x}.",
        ],
    )


def _answer_colon(q: Question, rng: np.random.Generator) -> str:
    x = q.answer
    return _pick(rng, [f"Answer: {x}", f"Final answer: {x}", f"ANSWER: {x}"])


def _bare(q: Question, rng: np.random.Generator) -> str:
    return q.answer


def _parenthesised(q: Question, rng: np.random.Generator) -> str:
    return _pick(
        rng,
        [
            f"({q.answer})",
            f"I choose ({q.answer}).",
            f"({q.answer}) {q.option_text(q.answer)}",
        ],
    )


def _option_text(q: Question, rng: np.random.Generator) -> str:
    text = q.option_text(q.answer)
    if text in SENTIMENTS:
        return _pick(
            rng,
            [
                f"The review is {text}.",
                f"{text.capitalize()}.",
                f"It reads as {text} to me.",
            ],
        )
    return _pick(
        rng,
        [
            f'The word "{text}" appears in the review.',
            f"{text}",
            f"It uses the word {text}.",
        ],
    )


def _units_separators(q: Question, rng: np.random.Generator) -> str:
    value = int(q.answer)
    number = f"{value:,}"
    if q.unit:
        return _pick(
            rng,
            [
                f"There are {number} {q.unit} in all.",
                f"{number} {q.unit}",
                f"That makes {number} {q.unit} altogether.",
            ],
        )
    return _pick(
        rng,
        [
            f"The result is {number}.",
            f"{number} units",
            f"It comes to {value:,.1f} exactly.",
        ],
    )


def _chain_of_thought(q: Question, rng: np.random.Generator) -> str:
    if q.kind == "arithmetic":
        numbers = [int(x) for x in re.findall(r"\d+", q.text)]
        a, b = numbers[0], numbers[1]
        return (
            f"Let me work it out step by step. Using {a} and {b} gives {q.answer}, "
            f"so the answer is {q.answer}. To check, I redo the step with {b} "
            f"and {a} and get the same {q.answer}, which I compare with {a}."
        )
    if q.kind == "multiple-choice":
        return (
            f"Let me go through the options. Option {q.answer}, "
            f'"{q.option_text(q.answer)}", fits the review, so {q.answer} is '
            f"correct. Option {q.wrong} does not fit, and neither do the others."
        )
    if q.kind == "yes-no":
        return (
            f"Thinking it through, the answer is {q.answer.lower()}. "
            f"I also considered {q.wrong.lower()}, but it does not fit the facts."
        )
    return (
        f"The question mentions both {q.wrong} and {q.answer}. Reading carefully, "
        f"the one asked about is {q.answer}, not {q.wrong}."
    )


def _refusal(q: Question, rng: np.random.Generator) -> str:
    return _pick(
        rng,
        [
            "I'm sorry, but I cannot answer that question.",
            "As an AI language model, I cannot determine this with certainty.",
            "The question does not give enough information to decide.",
            "I don't know.",
            f"Let me think about this: {q.text.splitlines()[-1]} Hmm.",
        ],
    )


def _markdown_bold(q: Question, rng: np.random.Generator) -> str:
    x = q.answer
    return _pick(rng, [f"**{x}**", f"The answer is **{x}**.", f"**Answer:** {x}"])


def _latex_boxed(q: Question, rng: np.random.Generator) -> str:
    x = q.answer
    return _pick(
        rng, [f"Therefore, the final answer is $\\boxed{{{x}}}$.", f"$\\boxed{{{x}}}$"]
    )


def _correction(q: Question, rng: np.random.Generator) -> str:
    x, y = q.wrong, q.answer
    return _pick(
        rng,
        [
            f"The answer is {x}... no wait, it is {y}.",
            f"Answer: {x}. Actually, I made a mistake: the correct answer is {y}.",
            f"{x}. Sorry, let me correct that: {y}.",
        ],
    )


WRITERS: dict[str, Callable[[Question, np.random.Generator], str]] = {
    "answer-is": _answer_is,
    "answer-colon": _answer_colon,
    "bare": _bare,
    "parenthesised": _parenthesised,
    "option-text": _option_text,
    "units-separators": _units_separators,
    "chain-of-thought": _chain_of_thought,
    "refusal": _refusal,
    "markdown-bold": _markdown_bold,
    "latex-boxed": _latex_boxed,
    "correction": _correction,
}


def key_of(q: Question, style: str) -> str:
    """The key answer an output of `style` gives to `q`."""
    return NO_ANSWER if style == "refusal" else q.answer


# -- rows ------------------------------------------------------------------------------


def _row(q: Question, style: str, output: str, key: str) -> dict[str, object]:
    return {
        "question": q.text,
        "options": list(q.options),
        "kind": q.kind,
        "style": style,
        "output": output,
        "key": key,
    }


def _empty() -> datasets.Dataset:
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "options": datasets.Sequence(datasets.Value("string")),
            "kind": datasets.Value("string"),
            "style": datasets.Value("string"),
            "output": datasets.Value("string"),
            "key": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict({k: [] for k in features}, features=features)


def to_dataset(rows: Sequence[dict[str, object]]) -> datasets.Dataset:
    """Rows as a `datasets.Dataset` with fixed columns (empty rows allowed)."""
    empty = _empty()
    if not rows:
        return empty
    columns = {k: [r[k] for r in rows] for k in empty.column_names}
    return datasets.Dataset.from_dict(columns, features=empty.features)


def styled_rows(
    questions: Sequence[Question],
    styles: Sequence[str],
    seed: int,
    per_question: int = 0,
) -> list[dict[str, object]]:
    """Each question written in `per_question` of its styles (0: every one)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for q in questions:
        mine = styles_for(q.kind, [s for s in styles if s in WRITERS])
        if per_question:
            chosen = rng.choice(len(mine), min(per_question, len(mine)), replace=False)
            mine = [mine[int(i)] for i in sorted(chosen)]
        for style in mine:
            rows.append(_row(q, style, WRITERS[style](q, rng), key_of(q, style)))
    return rows


# -- outputs of a language model -----------------------------------------------------


def states(output: str, q: Question) -> bool:
    """Whether `output` states `q`'s right answer and not its wrong one.

    Forms: the option text (a letter alone is too common to check), the number with
    or without separators, the word; each as a whole word.
    """

    def said(answer: str) -> bool:
        forms = [answer]
        if q.kind == "multiple-choice":
            forms.append(q.option_text(answer))
        if q.kind == "arithmetic":
            forms.append(f"{int(answer):,}")
        return any(
            re.search(rf"(?<![\w,]){re.escape(f)}(?![\w,])", output, re.IGNORECASE)
            for f in forms
        )

    if q.kind == "multiple-choice":  # a letter alone is too common to check
        return bool(re.search(rf"\b{re.escape(q.option_text(q.answer))}\b", output))
    return said(q.answer) and not said(q.wrong)


def model_prompt(q: Question) -> str:
    """What a writer model is asked: answer `q`, whose right answer it is told."""
    options = "".join(
        f"\n{letter}) {text}" for letter, text in zip(LETTERS, q.options, strict=False)
    )
    answer = q.answer
    if q.kind == "multiple-choice":
        answer = f"{q.answer}) {q.option_text(q.answer)}"
    return (
        f"{q.text}{options}\nThe correct answer is {answer}. Answer the question "
        "in one short sentence that states this answer."
    )


def model_rows(
    questions: Sequence[Question],
    write: Callable[[list[str]], list[str]],
) -> tuple[list[dict[str, object]], int]:
    """Rows of style "local-model": `write`'s outputs that state the answer.

    Returns the rows and how many outputs were written (the rest were dropped).
    """
    outputs = write([model_prompt(q) for q in questions])
    rows = [
        _row(q, MODEL_STYLE, text.strip(), q.answer)
        for q, text in zip(questions, outputs, strict=True)
        if text.strip() and states(text, q)
    ]
    return rows, len(outputs)


# -- the whole set ---------------------------------------------------------------------


@dataclass(frozen=True)
class FinderSet:
    """Training and held-out rows (different questions) and the questions."""

    train: datasets.Dataset
    test: datasets.Dataset
    train_questions: tuple[Question, ...]
    test_questions: tuple[Question, ...]


def finder_set(
    *,
    train_questions: int,
    test_questions: int,
    styles_per_question: int,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> FinderSet:
    """The key-answer-finder set: a function of its arguments only.

    Training questions use the Rotten Tomatoes train split and the training styles,
    `styles_per_question` of them each; held-out questions use its test split and
    every style (`HELD_OUT_STYLES` included), one row each. A held-out question
    whose text is also a training question's is dropped.
    """
    source = load_text_dataset("rotten-tomatoes", test_fraction)
    names = source.label_names
    train_q = make_questions(train_questions, source.train, names, seed=2 * seed)
    seen = {q.text for q in train_q}
    test_q = [
        q
        for q in make_questions(test_questions, source.test, names, seed=2 * seed + 1)
        if q.text not in seen
    ]
    train = styled_rows(train_q, TRAIN_STYLES, seed, styles_per_question)
    test = styled_rows(test_q, (*TRAIN_STYLES, *HELD_OUT_STYLES), seed + 1)
    return FinderSet(
        train=to_dataset(train),
        test=to_dataset(test),
        train_questions=tuple(train_q),
        test_questions=tuple(test_q),
    )
