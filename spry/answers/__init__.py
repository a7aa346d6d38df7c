"""The key answer in what a model wrote: extraction other tasks' evaluations call.

A task that scores generated text (xFinder's extractor, MUSTARD's word problems,
any evaluation) first needs the answer in it. `extract` answers that with either
the RegEx of a real evaluation framework (`regex`: OpenCompass's and
lm-evaluation-harness's patterns, with their sources) or an xFinder-style model
extractor (a `spry.generators.Generator` that reads `finder_prompt`); `same_answer`
compares a key answer with the truth. It lives in the core, not in the xfinder
task package, because task packages never import each other.
"""

from .extract import (
    KINDS,
    LETTERS,
    NO_ANSWER,
    extract,
    extract_many,
    finder_prompt,
    parse_key_answer,
    same_answer,
)
from .regex import regex_extract

__all__ = [
    "KINDS",
    "LETTERS",
    "NO_ANSWER",
    "extract",
    "extract_many",
    "finder_prompt",
    "parse_key_answer",
    "regex_extract",
    "same_answer",
]
