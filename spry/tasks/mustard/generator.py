"""What MUSTARD asks its generator, and how the answer is read back.

From a concept seed, the prompt asks for one item in four labelled fields::

    Problem: ...
    Solution: ...            (the informal solution)
    Answer: ...              (the final answer)
    Formal: ...              (one statement a line, in `statements`' language,
                              or Lean 4 source in a ```lean block)

with one worked example and the statement forms the checker reads. The prompt ends
with "Problem:", so a plain causal LM continues straight into the item. `parse_item`
reads the fields back (a missing or empty field is a `FormatError`); a model that
goes on to write a second item is cut at its next "Problem:".

Where the text comes from is `spry.generators.make_generator`: the task's own model
("local": SmolLM2-135M-Instruct offline), an OpenAI-compatible endpoint, or a
"module:function"; plus `templates` (`templates.TemplateWriter`), which writes
well-formed items from the seeds without a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .seeds import Seed

EXAMPLE = (
    "Problem: What is the greatest common divisor of 84 and 36?\n"
    "Solution: 84 = 2^2 * 3 * 7 and 36 = 2^2 * 3^2, so the common part is "
    "2^2 * 3 = 12.\n"
    "Answer: 12\n"
    "Formal: gcd(84, 36) = 12"
)
FORMS = (
    "gcd(84, 36) = 12; 17 % 5 = 2; prime(97); divides(7, 91); factorial(5) = 120; "
    "identity: (x + 1)^2 = x^2 + 2x + 1; "
    "solve x in Real: x^2 - 5x + 6 = 0 -> {2, 3}; "
    "forall x, y in Real: x^2 + y^2 >= 2*x*y; "
    "exists n in Int: n^2 = 49 and n < 0"
)
PROMPT = (
    "Write a new math problem on the given concepts, with its solution, its final "
    "answer and a formal statement that proves the answer. Use exactly this "
    "format.\n\n{example}\n\nFormal statements look like: {forms}.\n\n"
    "Concepts: {concepts}\nProblem:"
)
FIELDS = ("Problem", "Solution", "Answer", "Formal")
_FIELDS = re.compile(
    r"Problem:\s*(?P<problem>.*?)\s*\n\s*Solution:\s*(?P<solution>.*?)\s*\n\s*"
    r"Answer:\s*(?P<answer>.*?)\s*\n\s*Formal:\s*(?P<formal>.*)",
    re.DOTALL,
)
_LEAN_BLOCK = re.compile(r"```lean4?\s*\n(?P<source>.*?)```", re.DOTALL)


class FormatError(ValueError):
    """Generated text that is not a Problem/Solution/Answer/Formal item."""


@dataclass(frozen=True)
class Item:
    """One generated item; `formal` holds its statements, one a line."""

    problem: str
    solution: str
    answer: str
    formal: tuple[str, ...]

    def text(self) -> str:
        formal = "\n".join(self.formal)
        return (
            f"Problem: {self.problem}\nSolution: {self.solution}\n"
            f"Answer: {self.answer}\nFormal: {formal}"
        )


def prompt_for(seed: Seed) -> str:
    """The generator's prompt for one seed (it ends with "Problem:")."""
    return PROMPT.format(example=EXAMPLE, forms=FORMS, concepts=str(seed))


def parse_item(text: str) -> Item:
    """The four fields of a generated item (continuing a prompt or on its own)."""
    text = text.replace("\r\n", "\n").strip()
    if not text.startswith("Problem:"):
        text = "Problem: " + text
    match = _FIELDS.match(text)
    if match is None:
        missing = [f for f in FIELDS if f"{f}:" not in text]
        raise FormatError(f"missing field(s): {', '.join(missing) or 'out of order'}")
    problem, solution, answer = (
        " ".join(match[k].split()) for k in ("problem", "solution", "answer")
    )
    formal_text = match["formal"]
    lean = _LEAN_BLOCK.search(formal_text)
    if lean is not None:
        formal: tuple[str, ...] = (lean["source"].strip(),)
    else:
        lines = []
        for line in formal_text.split("\n"):
            line = line.strip().strip("`").strip()
            if not line:
                if lines:
                    break  # a blank line ends the block
                continue
            if line.startswith(("Problem:", "Concepts:", "Solution:", "Answer:")):
                break  # the model went on to another item
            lines.append(line)
        formal = tuple(lines)
    for name, value in zip(FIELDS, (problem, solution, answer, formal), strict=True):
        if not value:
            raise FormatError(f"empty field: {name}")
    return Item(problem, solution, answer, formal)
