"""The offline SFT default: questions on shipped movie reviews, with checkable answers.

Every answer follows from the review by a rule, so exact match has a right answer
and a test can recompute it:

- `sentiment`: "Is this review positive or negative?" -> the review's polarity
  label (Rotten Tomatoes: fresh = positive, rotten = negative);
- `word-count`: "How many words does this review have?" -> the number of words,
  a word being a run of letters or digits, with an apostrophe suffix kept
  (`words`: "We're drawn in -- twice." has 4);
- `word-choice`: "Which of these words appears in the review: X, Y or Z?" -> the
  one that does (lower case), the other two drawn from the split's vocabulary of
  words the review does not contain.

Reviews come from the fixed Rotten Tomatoes train/test split (`spry.data`), only
those of at most `MAX_WORDS` words (short prompts, countable answers). Each review
gets one question, the kinds in turn, the word-choice options from a fixed seed:
the data is the same for every run.
"""

from __future__ import annotations

import re

import datasets
import numpy as np

from ..data import load_text_dataset
from ..data.pairs import PairDataset
from ..data.sources import SPLIT_SEED

NAMES = ("rotten-tomatoes", "sft-reviews")  # the run's default dataset means this
KINDS = ("sentiment", "word-count", "word-choice")
MAX_WORDS = 20  # longer reviews are left out (about 6,100 train reviews stay)
CHOICE_LENGTH = 4  # words of the word-choice question have at least these letters
QUESTIONS = {
    "sentiment": "Is this review positive or negative?",
    "word-count": "How many words does this review have?",
    "word-choice": "Which of these words appears in the review: {0}, {1} or {2}?",
}
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def words(text: str) -> list[str]:
    """The review's words: runs of letters or digits (an apostrophe suffix kept)."""
    return _WORD.findall(text)


def choice_words(text: str) -> list[str]:
    """Lower-case alphabetic words of `CHOICE_LENGTH` letters or more, in order."""
    return [w.lower() for w in words(text) if w.isalpha() and len(w) >= CHOICE_LENGTH]


def _questions(
    sentences: datasets.Dataset, label_names: tuple[str, ...], seed: int
) -> datasets.Dataset:
    texts = list(sentences["text"])
    labels = list(sentences["label"])
    keep = [i for i, t in enumerate(texts) if 0 < len(words(t)) <= MAX_WORDS]
    vocabulary = sorted({w for i in keep for w in choice_words(texts[i])})
    rng = np.random.default_rng([SPLIT_SEED, seed])
    rows: dict[str, list[str]] = {"prompt": [], "response": [], "kind": []}
    for n, i in enumerate(keep):
        text = texts[i]
        kind = KINDS[n % len(KINDS)]
        present = sorted(set(choice_words(text)))
        if kind == "word-choice" and not present:
            kind = "sentiment"  # no word long enough to ask about
        if kind == "sentiment":
            answer, question = label_names[labels[i]], QUESTIONS[kind]
        elif kind == "word-count":
            answer, question = str(len(words(text))), QUESTIONS[kind]
        else:
            answer = present[int(rng.integers(len(present)))]
            lowered = {w.lower() for w in words(text)}
            others: list[str] = []
            while len(others) < 2:
                other = vocabulary[int(rng.integers(len(vocabulary)))]
                if other not in lowered and other not in others:
                    others.append(other)
            options = [answer, *others]
            rng.shuffle(options)
            question = QUESTIONS[kind].format(*options)
        rows["prompt"].append(f"Review: {text}\n{question}")
        rows["response"].append(answer)
        rows["kind"].append(kind)
    return datasets.Dataset.from_dict(rows)


def review_questions(test_fraction: float = 0.1) -> PairDataset:
    """Questions on the fixed Rotten Tomatoes split (train: its train part)."""
    source = load_text_dataset("rotten-tomatoes", test_fraction)
    return PairDataset(
        train=_questions(source.train, source.label_names, seed=0),
        test=_questions(source.test, source.label_names, seed=1),
    )
