"""The `mustard` task: the checker, the item parser, the template writer, diversity,
the word problems, and the task on a tiny random Llama (2 rounds in the simulation).

The checker is tested on hand-written true and false statements of every class it
claims and on near misses of true ones (off by one, a flipped inequality, a missing
solution, a wrong gcd, one wrong coefficient): a false statement must never be
accepted. Word-problem answers are recomputed from the question text by rules
written here, independently of the task's templates.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from spry.answers import finder_prompt
from spry.config import ConfigError, RunConfig, default_values
from spry.generators import ScriptedGenerator, make_generator
from spry.models.causal_lm import build_causal_lm
from spry.tasks import get
from spry.tasks.base import build_options
from spry.tasks.mustard import MustardTask
from spry.tasks.mustard.checker import check
from spry.tasks.mustard.generator import FormatError, Item, parse_item, prompt_for
from spry.tasks.mustard.pipeline import (
    check_item,
    distinct_ngrams,
    diversity,
    mark_planted,
    summarize,
    synthesize,
)
from spry.tasks.mustard.seeds import CONCEPTS, Seed, read_concepts, sample_seeds
from spry.tasks.mustard.templates import WRITERS, TemplateWriter
from spry.tasks.mustard.word_problems import (
    FORMS,
    extract_answers,
    last_number_answer,
    load_extractor,
    same_number,
    word_problems,
)
from spry.trained import load_trained
from spry.training import make_client_engine, train_slice
from tests.helpers import tiny_llama

ROOT = Path(__file__).resolve().parents[2]

# -- the checker: (true statement, its near miss), by class ---------------------------

NEAR_MISSES = {
    "closed": [
        ("3 + 4*5 = 23", "3 + 4*5 = 24"),  # off by one
        ("3 + 4*5 = 23", "3 + 4*5 = 35"),  # the wrong order of operations
        ("2/3 + 1/4 = 11/12", "2/3 + 1/4 = 3/7"),  # the mediant
        ("0.5 + 0.25 = 3/4", "0.5 + 0.25 = 0.7"),
        ("gcd(84, 36) = 12", "gcd(84, 36) = 6"),  # a common divisor, not the gcd
        ("gcd(12, 18) = 6", "gcd(12, 18) = 4"),
        ("lcm(4, 6) = 12", "lcm(4, 6) = 24"),  # the product
        ("17 % 5 = 2", "17 % 5 = 3"),
        ("mod(100, 7) = 2", "mod(100, 7) = 1"),
        ("prime(97)", "prime(91)"),  # 91 = 7 * 13
        ("not prime(91)", "not prime(89)"),
        ("divides(7, 91)", "divides(7, 92)"),
        ("factorial(5) = 120", "factorial(5) = 24"),
        ("2^10 = 1024", "2^10 = 1023"),
        ("0 < 3 < 5", "0 < 5 < 5"),
        ("7*8 > 55", "7*8 < 55"),  # flipped
        ("6*9 >= 54", "6*9 > 54"),  # strict at equality
        ("10 != 11", "10 != 10"),
        ("1 < 2 and 3 < 4", "1 < 2 and 4 < 3"),
        ("1 > 2 or 3 < 4", "1 > 2 or 4 < 3"),
        ("1 > 2 => 5 = 6", "1 < 2 => 5 = 6"),
        ("sqrt(16) = 4", "sqrt(16) = 3"),
    ],
    "identity": [
        ("identity: (x + 1)^2 = x^2 + 2x + 1", "identity: (x + 1)^2 = x^2 + 3x + 1"),
        (
            "identity: (a + b)*(a - b) = a^2 - b^2",
            "identity: (a + b)*(a - b) = a^2 + b^2",
        ),
        (
            "identity: (x - 2)^3 = x^3 - 6x^2 + 12x - 8",
            "identity: (x - 2)^3 = x^3 - 6x^2 + 12x + 8",
        ),
        (
            "identity: 1/(x-1) - 1/(x+1) = 2/(x^2 - 1)",
            "identity: 1/(x-1) - 1/(x+1) = 2/(x^2 + 1)",
        ),
    ],
    "solution-set": [
        (
            "solve x in Real: x^2 - 5x + 6 = 0 -> {2, 3}",
            "solve x in Real: x^2 - 5x + 6 = 0 -> {2}",
        ),
        ("solve x in Real: 2x + 3 = 11 -> {4}", "solve x in Real: 2x + 3 = 11 -> {5}"),
        ("solve x in Int: x^2 = 4 -> {-2, 2}", "solve x in Int: x^2 = 4 -> {2}"),
        ("solve x in Nat: x^2 = 4 -> {2}", "solve x in Nat: x^2 = 4 -> {-2, 2}"),
        (
            "solve x in Real: x^2 = 2 -> {sqrt(2), -sqrt(2)}",
            "solve x in Real: x^2 = 2 -> {}",
        ),
        ("solve x in Int: x^2 = 2 -> {}", "solve x in Real: x^2 = 2 -> {}"),
        ("solve x in Real: x^2 + 1 = 0 -> {}", "solve x in Real: x^2 + 1 = 0 -> {1}"),
        (
            "solve x in Real: x^2 - 5x + 6 = 0 -> {2, 3}",
            "solve x in Real: x^2 - 5x + 6 = 0 -> {2, 3, 4}",
        ),
    ],
    "quantified": [
        (
            "forall x, y in Real: x^2 + y^2 >= 2*x*y",
            "forall x, y in Real: x^2 + y^2 <= 2*x*y",
        ),
        (
            "forall x, y in Real: x^2 + y^2 >= 2*x*y",
            "forall x, y in Real: x^2 + y^2 > 2*x*y",
        ),
        ("forall x in Real: (x - 3)^2 >= 0", "forall x in Real: (x - 3)^2 > 0"),
        ("forall n in Int: (n^2 + n) % 2 = 0", "forall n in Int: (n^2 + 1) % 2 = 0"),
        (
            "forall x in Real: x > 3 => 2x + 1 > 7",
            "forall x in Real: x > 3 => 2x + 1 > 8",
        ),
        ("forall n in Int: n > 4 => n >= 5", "forall x in Real: x > 4 => x >= 5"),
        ("forall n in Nat: n^3 >= n", "forall n in Int: n^3 >= n"),
        ("exists n in Int: n^2 = 49 and n < 0", "exists n in Nat: n^2 = 49 and n < 0"),
        ("exists x in Real: x^2 = 2", "exists x in Real: x^2 = -2"),
        ("exists n in Int: 3 < n < 5", "exists n in Int: 3 < n < 4"),
        (
            "forall x in Int: exists y in Int: y > x",
            "exists x in Int: forall y in Int: y < x",
        ),
        (
            "forall a, b in Real: a < b => a < (a + b)/2",
            "forall a, b in Real: a < b => a > (a + b)/2",
        ),
        (
            "forall n in Int: divides(2, n*(n + 1))",
            "forall n in Int: divides(3, n*(n + 1))",
        ),
    ],
}
CASES = [
    pytest.param(kind, true, false, id=f"{kind}-{i}")
    for kind, pairs in NEAR_MISSES.items()
    for i, (true, false) in enumerate(pairs)
]


@pytest.mark.parametrize(("kind", "true", "near_miss"), CASES)
def test_true_statements_are_accepted_and_their_near_misses_are_not(
    kind, true, near_miss
):
    accepted = check(true)
    assert accepted.reason == "accepted", (true, accepted)
    assert accepted.statement_class == kind
    rejected = check(near_miss)
    assert not rejected.accepted, (near_miss, rejected)
    assert rejected.reason == "false", (near_miss, rejected)
    assert rejected.statement_class == kind


def test_a_false_verdict_carries_the_counterexample():
    refuted = check("forall x, y in Real: x^2 + y^2 > 2*x*y")
    x, y = (Fraction(refuted.counterexample[v]) for v in ("x", "y"))
    assert x**2 + y**2 == 2 * x * y  # the strict inequality fails exactly there
    missing = check("solve x in Real: x^2 - 5x + 6 = 0 -> {2}")
    assert missing.counterexample == {"missing": "3"}
    extra = check("solve x in Real: x^2 - 5x + 6 = 0 -> {2, 3, 4}")
    assert extra.counterexample == {"not a solution": "4"}
    identity = check("identity: (x + 1)^2 = x^2 + 3x + 1")
    assert identity.counterexample and "-x" in identity.detail
    point = Fraction(identity.counterexample["x"])
    assert (point + 1) ** 2 != point**2 + 3 * point + 1
    witness = check("exists n in Int: n^2 = 49 and n < 0")
    assert witness.counterexample == {"n": "-7"}
    assert "6" in check("gcd(84, 36) = 6").detail  # says what the gcd is: 12
    assert "12" in check("gcd(84, 36) = 6").detail


@pytest.mark.parametrize(
    "text",
    [
        "",
        "gcd(12, 18 = 6",
        "2^^3 = 8",
        "9^9^9 = 1",  # a power tower
        "2^x = 8",  # a symbolic exponent
        "__import__('os').system('true') = 0",
        "x.real = 1",
        "lambda: 1 = 1",
        "gcd(12, 18)",  # not a comparison
        "forall x in Complex: x = x",
        "solve x in Real: x^2 = y -> {1}",  # a free variable
        "prime(7, 11)",
        "1" * 20 + " = 1",  # a number too long
        "forall x in Real x > 0",
    ],
)
def test_what_is_not_a_statement_is_a_parse_error(text):
    verdict = check(text)
    assert verdict.reason == "parse-error", (text, verdict)


@pytest.mark.parametrize(
    "text",
    [
        "x + 1 > x",  # a free variable: bind it
        "forall x, y in Real: y != 0 => x*y/y = x",  # a variable denominator
        "forall x in Real: sqrt(x^2) = abs(x)",
        "forall n in Int: prime(n) => n > 1",
        "identity: gcd(x, 4) = gcd(4, x)",
        "factorial(1000) > 1",
        "(((((2^64)^64)^64)^64)^64) = 1",  # too large to evaluate
        "forall x in Real: x % 1 < 1",  # mod of a real
        "identity: (a + b + c + d + e + f + g + h)^64 = 1",  # too large to expand
        "solve x in Real: x^6 = 1 -> {1, -1}",  # degree above 4
        "solve x in Real: abs(x) = 1 -> {1, -1}",
    ],
)
def test_what_the_checker_cannot_decide_is_unsupported_not_accepted(text):
    verdict = check(text)
    assert verdict.reason == "unsupported", (text, verdict)


def test_a_small_point_settles_what_z3_gives_up_on():
    # n(n + 1) is not always a multiple of 3 (n = 1): nonlinear integer arithmetic
    # on which z3 times out, refuted by an exactly checked small point instead
    verdict = check("forall n in Int: divides(3, n*(n + 1))", timeout_ms=50)
    assert verdict.reason == "false" and verdict.counterexample == {"n": "1"}
    witness = check("exists a, b in Int: a*b = 6 and a + b = 5", timeout_ms=50)
    a, b = (int(witness.counterexample[v]) for v in ("a", "b"))
    assert witness.accepted and a * b == 6 and a + b == 5


def test_unknown_and_timeouts_are_rejections():
    # True (n^3 - n = (n-1)n(n+1)), but nonlinear integer arithmetic: z3 gives up
    verdict = check("forall n in Int: divides(6, n^3 - n)", timeout_ms=50)
    assert verdict.reason == "unknown" and not verdict.accepted
    undefined = check("1/0 = 5")
    assert undefined.reason == "false" and "division by zero" in undefined.detail


def test_lean_without_lean_on_path_is_unsupported(monkeypatch):
    monkeypatch.setenv("PATH", "")
    verdict = check("theorem two : 2 + 2 = 4 := by decide")
    assert verdict.reason == "unsupported" and verdict.statement_class == "lean"
    assert "not on PATH" in verdict.detail


@pytest.mark.skipif(shutil.which("lean") is None, reason="lean is not on PATH")
def test_lean_checks_statements_written_in_lean():
    assert check("theorem two : 2 + 2 = 4 := by decide").accepted
    assert not check("theorem two : 2 + 2 = 5 := by decide").accepted
    assert not check("theorem two : 2 + 2 = 5 := by sorry").accepted


# -- the generated item's format -------------------------------------------------------

WELL_FORMED = (
    " What is 17 mod 5?\nSolution: 17 = 3 * 5 + 2.\nAnswer: 2\n"
    "Formal: 17 % 5 = 2\n\nProblem: another one the model went on to"
)


def test_a_well_formed_item_is_read_back():
    item = parse_item(WELL_FORMED)  # continuing a prompt that ends with "Problem:"
    assert item == Item("What is 17 mod 5?", "17 = 3 * 5 + 2.", "2", ("17 % 5 = 2",))
    again = parse_item(item.text())
    assert again == item
    two = parse_item(
        "Problem: (a) x (b) y\nSolution: s\nAnswer: (a) 1; (b) 2\n"
        "Formal: ```\n1 = 1\n2 = 2\n```\nConcepts: more"
    )
    assert two.formal == ("1 = 1", "2 = 2")
    lean = parse_item(
        "Problem: p\nSolution: s\nAnswer: 4\nFormal:\n```lean\n"
        "theorem t : 2 + 2 = 4 := by\n  decide\n```\n"
    )
    assert lean.formal == ("theorem t : 2 + 2 = 4 := by\n  decide",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing field"),
        ("Problem: p\nSolution: s\nAnswer: 3", "Formal"),
        ("Problem: p\nAnswer: 3\nFormal: 1 = 1", "Solution"),
        ("Problem: p\nFormal: 1 = 1\nSolution: s\nAnswer: 3", "out of order"),
        ("Problem: p\nSolution: s\nAnswer: 3\nFormal:", "empty field: Formal"),
        ("Problem: p\nSolution: s\nAnswer:\nFormal: 1 = 1", "empty field: Answer"),
        ("Problem:\nSolution: s\nAnswer: 3\nFormal: 1 = 1", "empty field: Problem"),
    ],
)
def test_a_broken_item_is_a_format_error(text, message):
    with pytest.raises(FormatError, match=message):
        parse_item(text)


def test_the_prompt_names_the_seed_and_ends_where_the_item_starts():
    seed = Seed((CONCEPTS[0], CONCEPTS[-1]))
    prompt = prompt_for(seed)
    assert prompt.endswith("Problem:") and f"Concepts: {seed}\n" in prompt
    line = next(ln for ln in prompt.splitlines() if ln.startswith("Concepts:"))
    assert read_concepts(line.removeprefix("Concepts:")) == seed
    assert check(prompt.split("Formal: ")[1].split("\n")[0]).accepted  # the example


def test_an_answer_that_is_in_no_formal_statement_is_a_mismatch():
    item = Item("What is 3 + 4?", "3 + 4 = 7.", "8", ("3 + 4 = 7",))
    assert check_item(item).reason == "answer-mismatch"
    assert check_item(dataclasses.replace(item, answer="7")).accepted
    two = Item("p", "s", "(a) 11/12; (b) -3", ("2/3 + 1/4 = 11/12", "1 - 4 = -3"))
    assert check_item(two).accepted
    assert check_item(dataclasses.replace(two, formal=("1 = 1",))).reason == (
        "answer-mismatch"
    )


# -- seeds and the template writer -------------------------------------------------


def test_seeds_cover_four_areas_and_pairs_of_distinct_concepts():
    assert {c.area for c in CONCEPTS} == {
        "arithmetic", "algebra", "number theory", "inequalities",
    }  # fmt: skip
    assert set(WRITERS) == {c.name for c in CONCEPTS}  # a template for each
    seeds = sample_seeds(400, seed=3, pair_share=0.5)
    pairs = [s for s in seeds if len(s.concepts) == 2]
    assert 150 < len(pairs) < 250
    assert all(a != b for a, b in (s.concepts for s in pairs))
    assert sample_seeds(400, seed=3) == seeds  # fixed by the seed
    assert sample_seeds(20, seed=3, pair_share=0.0)[0].concepts[0] in CONCEPTS
    assert all(len(s.concepts) == 1 for s in sample_seeds(50, seed=1, pair_share=0))


def test_the_template_writers_false_items_are_all_rejected_and_true_ones_accepted():
    writer = TemplateWriter(seed=5)  # false_rate 0.25
    records = synthesize(writer, sample_seeds(320, seed=5), max_new_tokens=0)
    mark_planted(records, writer.planted)
    false = [r for r in records if r["planted-false"]]
    true = [r for r in records if not r["planted-false"]]
    assert 0.18 < len(false) / len(records) < 0.32
    assert all(not r["kept"] and r["reason"] == "false" for r in false)
    assert all(r["reason"] in ("accepted", "duplicate") for r in true)
    classes = {r["statement_class"] for r in records}
    assert classes == {"closed", "identity", "solution-set", "quantified"}
    summary = summarize(records)
    assert summary["planted"] == {
        "false": len(false), "false-rejected": len(false),
        "true": len(true), "true-accepted": len(true),
    }  # fmt: skip
    assert sum(summary["reasons"].values()) == 320
    assert math.isclose(sum(summary["reason-shares"].values()), 1.0)


def test_every_concepts_near_miss_is_false_and_its_true_item_holds():
    rng_seeds = range(12)
    for name, write in WRITERS.items():
        for k in rng_seeds:
            import numpy as np

            true = write(np.random.default_rng(k), False)
            false = write(np.random.default_rng(k), True)
            assert check(true.formal).accepted, (name, true)
            assert check(false.formal).reason == "false", (name, false)


# -- diversity ---------------------------------------------------------------------


def test_distinct_ngrams_and_concept_pairs_on_a_hand_made_set():
    texts = ["a b a b", "a b c"]
    # 1-grams: a b a b a b c -> 3 distinct of 7; 2-grams: ab ba ab ab bc -> 3 of 5
    assert distinct_ngrams(texts, 1) == pytest.approx(3 / 7)
    assert distinct_ngrams(texts, 2) == pytest.approx(3 / 5)
    assert distinct_ngrams([], 2) == 0.0 and distinct_ngrams(["one"], 2) == 0.0
    records = [
        {"problem": "a b a b", "kept": True, "pair": "x + y", "concepts": ["x", "y"]},
        {"problem": "a b c", "kept": True, "pair": "x", "concepts": ["x"]},
        {"problem": "d e", "kept": True, "pair": "x + y", "concepts": ["y", "x"]},
        {"problem": "z z z", "kept": False, "pair": "w", "concepts": ["w"]},
    ]
    found = diversity(records)
    assert found["kept"] == 3
    assert found["distinct-1"] == pytest.approx(5 / 9)  # a b c d e of 9
    assert found["distinct-2"] == pytest.approx(4 / 6)  # ab ba bc de of 6
    assert found["distinct-concept-pairs"] == 1 and found["distinct-seeds"] == 2
    assert found["distinct-concepts"] == 2


# -- word problems and answer extraction ---------------------------------------------


def recompute(question: str) -> int:
    """The answer from the question's own numbers, by a rule per wording."""
    n = [int(v) for v in re.findall(r"\d+", question)]
    q = question.lower()
    if "dollars each" in q or "costs" in q and "total cost" in q:
        return n[0] * n[1]
    if "gives away" in q or "took" in q:
        return n[0] - n[1]
    if "share" in q and "equally" in q:
        return n[1] // n[0]
    if "equal piles" in q:
        return n[0] // n[1]
    if "area" in q:
        return n[0] * n[1]
    if "perimeter" in q:
        return 2 * (n[0] + n[1])
    if "km per hour" in q:
        speed = n[0] if "train" in q else n[1]
        hours = n[1] if "train" in q else n[0]
        return speed * hours
    if "years" in q:
        return sum(n)
    if "percent" in q:
        return n[0] - n[0] * n[1] // 100
    if "boxes" in q:
        return n[0] * n[1] + n[2]
    if "bags" in q:
        return n[0] * n[1] + n[2]
    raise AssertionError(f"no rule for {question!r}")


def test_the_word_problems_answers_are_right():
    problems = word_problems(180, seed=0)
    assert sorted(set(problems["kind"])) == sorted(FORMS)
    assert len(set(problems["prompt"])) > 170  # many distinct wordings and numbers
    for row in problems:
        assert int(row["answer"]) == recompute(row["prompt"]), row
    assert word_problems(20, seed=0)["prompt"] == problems["prompt"][:20]
    assert word_problems(20, seed=1)["prompt"] != problems["prompt"][:20]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (" 3 * 4 = 12.\nAnswer: 12", "12"),
        (" First 5, then 7. The answer is 1,200 dollars.", "1,200"),
        (" 2 + 3 = 5 and 5 + 1 = 6", "6"),
        (" Answer: 3/4\nProblem: 9 more", "3/4"),
        (" no idea", None),
    ],
)
def test_the_default_extraction(output, expected):
    assert last_number_answer("q", output) == expected


def test_regex_extraction_is_opencompass_gsm8k_and_the_model_reads_finder_prompts():
    # OpenCompass's gsm8k pattern: digits only, the last number before "Question:"
    regex = load_extractor("regex")
    assert regex("q", " so 3 + 4 = 7. Question: 9") == "7"
    assert regex("q", " The answer is 1,200 dollars") == "200"  # its known miss
    assert load_extractor("last-number") is last_number_answer

    # the model extractor: one batched call with xFinder's prompt per row; its
    # "[No valid answer]" is no answer
    seen: list[str] = []

    def reader(prompt: str) -> str:
        seen.append(prompt)
        return "[No valid answer]" if "no idea" in prompt else "42\nmore text"

    answers = extract_answers(
        "model",
        ["How many?", "How much?"],
        [" it is 42", " no idea"],
        generator=ScriptedGenerator(reader),
    )
    assert answers == ["42", None]
    assert seen[0] == finder_prompt("How many?", " it is 42")
    with pytest.raises(ValueError, match="generator"):
        extract_answers("model", ["q"], ["o"])


def test_numeric_match_is_exact():
    assert same_number("1,200", "1200") and same_number("6/2", "3")
    assert same_number("3.0", "3") and not same_number("3.5", "3")
    assert not same_number(None, "3") and not same_number("x", "3")


# -- the task ----------------------------------------------------------------------

VOCAB = [
    "[PAD]", "[UNK]", "[EOS]", "problem", "solution", "answer", ":", ".", "?", ",",
    "what", "is", "the", "of", "and", "*", "+", "-", "=", "/", "(", ")", "^",
    *[str(i) for i in range(200)],
]  # fmt: skip


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


class TinyMustard(MustardTask):
    """The task on a random 2-layer Llama with a word-level tokenizer."""

    name: ClassVar[str] = "tiny-mustard"

    def build_model(self, device: str):
        trainable = build_causal_lm(
            random_weights=tiny_llama(len(VOCAB)), seed=self.run.runtime.seed,
            device=device,
        )  # fmt: skip
        return dataclasses.replace(trainable, tokenizer=word_tokenizer())


def make_task(tmp_path, values=(), cls=TinyMustard, **options):
    run = RunConfig.from_run_config(
        {**default_values(), **cls.run_defaults, "task": "mustard",
         "num-clients": 2, "clients-per-round": 1, "eval-clients-per-round": 1,
         "batch-size": 4, **dict(values)}
    )  # fmt: skip
    settings = {"generator": "templates", "items": 24, "test-problems": 9,
                "max-new-tokens": 4, "cache-dir": str(tmp_path), **options}  # fmt: skip
    return cls(run, build_options(cls, settings))


SCRIPTED = [
    " What is 3 + 4?\nSolution: 3 + 4 = 7.\nAnswer: 7\nFormal: 3 + 4 = 7",
    " What is 3 + 4?\nSolution: 3 + 4 = 8.\nAnswer: 8\nFormal: 3 + 4 = 8",
    " What is 3 + 4? It is 7.",
    " Is 91 prime?\nSolution: no.\nAnswer: no\nFormal: not prime(91)",
]


def scripted_writer(prompt: str) -> str:
    """A generator for tests: the items above in turn, keyed by the concept line."""
    return SCRIPTED[sum(map(ord, prompt)) % len(SCRIPTED)]


def test_a_scripted_generator_goes_through_spry_generators(tmp_path):
    task = make_task(
        tmp_path, generator="tests.tasks.test_mustard:scripted_writer", items=40
    )
    records = task.records
    assert len(records) == 40
    reasons = {r["text"]: r["reason"] for r in records}
    assert reasons[SCRIPTED[1]] == "false" and reasons[SCRIPTED[2]] == "format-error"
    assert {reasons[SCRIPTED[0]], reasons[SCRIPTED[3]]} <= {"accepted", "duplicate"}
    assert len(task.kept) == 2  # each true item kept once


def test_options_are_checked():
    assert get("mustard") is MustardTask
    for key, value, message in [
        ("items", 0, "items"),
        ("pair-share", 1.5, "pair-share"),
        ("false-rate", -0.1, "false-rate"),
        ("generator", "nonsense", "generator"),
        ("extractor", "no-colon", "extractor"),
        ("checker-timeout-ms", 0, "checker-timeout-ms"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_options(MustardTask, {key: value})


def test_the_kept_set_is_built_once_cached_and_dealt_to_clients(tmp_path):
    task = make_task(tmp_path)
    records = task.records
    assert len(records) == 24 and task.cache_path().exists()
    kept = task.kept
    assert len(kept) == sum(r["kept"] for r in records) >= 12
    parts = [task.partition(i) for i in range(2)]
    assert sum(len(p.train) + len(p.held_out) for p in parts) == len(kept)
    prompt, answer = task.example(kept, 0)
    assert prompt.startswith("Problem: ") and prompt.endswith("\nSolution:")
    assert answer.endswith(f"\nAnswer: {kept[0]['answer']}")
    again = make_task(tmp_path)
    again.build_records = None  # the cache is read, nothing is generated again
    assert again.records == records
    other = make_task(tmp_path, items=30)  # other settings: another file
    assert other.cache_path() != task.cache_path()
    with pytest.raises(ConfigError, match="kept 0 of"):
        _ = make_task(tmp_path, {"num-clients": 3}, **{"false-rate": 1.0}).kept


def test_a_forward_step_and_the_word_problem_evaluation(tmp_path):
    task = make_task(tmp_path)
    trainable = task.model()
    before = {k: v.clone() for k, v in trainable.model.state_dict().items()}
    report = train_slice(
        trainable,
        list(trainable.names),
        lambda epoch: task.train_batches(trainable, 0, 1, epoch),
        loss=task.loss,
        engine=make_client_engine(task.run.client),
        cfg=task.run.client,
        seed=0,
        server_round=1,
        partition_id=0,
    )
    assert report.steps >= 1 and math.isfinite(report.mean_loss)
    after = trainable.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    scores = task.evaluate(trainable, task.test_data())
    assert scores["num-examples"] == 9 and 0 <= scores["accuracy"] <= 1
    assert scores["loss"] > 0 and {f"accuracy-{f}" for f in FORMS} <= set(scores)
    held = task.evaluate(trainable, task.partition(0).held_out)
    assert 0 <= held["accuracy"] <= 1
    out = task.finish(trainable, tmp_path / "results")
    written = json.loads((tmp_path / "results" / "mustard.json").read_text())
    assert written["generated"] == 24 == out["mustard"]["generated"]
    assert written["planted"]["false-rejected"] == written["planted"]["false"]
    lines = (tmp_path / "results" / "mustard-items.jsonl").read_text().splitlines()
    assert len(lines) == 24
    answers = (tmp_path / "results" / "mustard-answers.jsonl").read_text()
    assert len(answers.splitlines()) == 9


# -- two rounds in Flower's simulation engine ----------------------------------------


@pytest.mark.slow  # a simulation (Ray) on the tiny model: about a minute
def test_two_rounds_in_the_simulation_engine(tmp_path, monkeypatch):
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "SPRY_TASKS": "tiny-mustard=tests.tasks.test_mustard:TinyMustard",
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--task", "tiny-mustard",
         "--rounds", "2", "--clients", "2", "--per-round", "2",
         "--set", "eval-clients-per-round=2", "--set", "batch-size=4",
         "--set", "tiny-mustard.generator=templates",
         "--set", "tiny-mustard.items=24", "--set", "tiny-mustard.test-problems=9",
         "--set", "tiny-mustard.max-new-tokens=4",
         "--set", f"tiny-mustard.cache-dir={tmp_path / 'cache'}",
         "--results-dir", str(results)],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = results.iterdir()
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(0 <= float(r["test-accuracy"]) <= 1 for r in rows)
    assert rows[2]["test-loss"] != rows[0]["test-loss"]  # the model trained
    summary = json.loads((run_dir / "summary.json").read_text())
    report = summary["mustard"]
    assert report["generated"] == 24 and report["accepted"] >= 12
    assert report["planted"]["false-rejected"] == report["planted"]["false"]
    assert (run_dir / "mustard.json").exists()

    # the folder is enough to use what the run trained: the task's model with its
    # final weights, and a generator of it (MUSTARD's `extractor-generator` takes one)
    monkeypatch.setenv("SPRY_TASKS", env["SPRY_TASKS"])
    task, trainable = load_trained(run_dir)
    assert isinstance(task, TinyMustard)
    final = np.load(run_dir / "final-weights.npz")
    state = trainable.state()
    assert set(state) == set(final.files)
    assert all(np.array_equal(state[k], final[k]) for k in final.files)
    written = make_generator(str(run_dir))(
        ["problem : what is 3 + 4 ?"], max_new_tokens=3
    )
    assert len(written) == 1 and isinstance(written[0], str)
    # asked for again (a task asks every round), the folder's model is not reloaded
    assert make_generator(str(run_dir)).model is make_generator(str(run_dir)).model


# -- the benchmark's table -----------------------------------------------------------


def test_the_benchmark_table_reports_shares_diversity_and_accuracy_change():
    from benchmarks.tasks import VARIANTS, mustard_table

    assert {m for _, m, _ in VARIANTS["mustard"]} == {"spry", "fedavg", "fedmezo"}
    records = [
        {"problem": "a b", "kept": True, "pair": "p", "concepts": ["p"],
         "reason": "accepted", "statement_class": "closed", "planted-false": False},
        {"problem": "c", "kept": False, "pair": "q", "concepts": ["q"],
         "reason": "false", "statement_class": "closed", "planted-false": True},
    ]  # fmt: skip
    kept = summarize(records)
    rows = [
        {"round": 0.0, "test-accuracy": 0.1, "test-loss": 2.0},
        {"round": 2.0, "test-accuracy": 0.25, "test-loss": 1.5},
    ]
    runs = {"spry": ({"mustard": kept, "wall-seconds": 12.0}, rows)}
    local = {**summarize([{**records[1], "reason": "format-error"}]), "seconds": 3.0}
    text = "\n".join(mustard_table(runs, local))
    assert "2 items generated, 1 kept (50.0%)" in text
    assert "accepted 50.0%, false 50.0%" in text
    assert "Planted false: 1 of 1 rejected; true: 1 of 1 accepted" in text
    assert "| spry | 10.0% | 25.0% | +15.0 | 2.000 -> 1.500 | 12 s |" in text
    assert "1 items, 0 kept (0.0%)" in text and "format-error 100.0%" in text
    assert "asked in plain text" in text and "chat template" not in text
    assert "- in its chat template: 1 items" in "\n".join(
        mustard_table(runs, local, local)
    )
    read = {"spry": {"last-number": 0.1, "regex": 0.05, "model": 0.2}}
    text = "\n".join(mustard_table(runs, local, extraction=read))
    assert "| method | last-number | regex | model |" in text
    assert "| spry | 10.0% | 5.0% | 20.0% |" in text
