"""The `xfinder` task: its generated set, the RegEx baseline, extraction, evaluation.

The set's answers are recomputed here from the question text by rules written
independently of the task's; the RegEx baseline is checked on hand-written outputs
whose answers are known (what it gets right and what it is known to get wrong);
extraction and evaluation run on a scripted extractor whose answers are fixed, so
every score is counted by hand.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from typing import ClassVar

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from spry.answers.extract import as_number, extract_many, finder_prompt
from spry.answers.regex import (
    first_option_postprocess,
    general_postprocess,
    gsm8k_postprocess,
    lm_eval_flexible_extract,
    lm_eval_strict_match,
    regex_extract,
)
from spry.config import ConfigError, RunConfig, default_values
from spry.data import load_text_dataset
from spry.generators import ScriptedGenerator
from spry.models.causal_lm import build_causal_lm
from spry.tasks import get
from spry.tasks.base import build_options
from spry.tasks.xfinder import XFinderTask, extract, same_answer
from spry.tasks.xfinder.examples import (
    HELD_OUT_STYLES,
    KINDS,
    MODEL_STYLE,
    NO_ANSWER,
    STYLE_KINDS,
    TRAIN_STYLES,
    finder_set,
    model_rows,
    to_dataset,
)
from tests.helpers import tiny_llama

SMALL = {"train_questions": 80, "test_questions": 24, "styles_per_question": 3}


@pytest.fixture(scope="module")
def finder():
    return finder_set(**SMALL, seed=0)


# -- the generated set ---------------------------------------------------------------


def _review_of(question: str) -> str:
    return re.match(r'Review: "(.*)"\n', question, re.DOTALL).group(1)


def _recomputed(row, polarity) -> str:
    """The key answer of a row, from its question text alone."""
    q, options = row["question"], row["options"]
    if m := re.fullmatch(r"What is (-?\d+) ([-+*]) (\d+)\?", q):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if m := re.search(r"has (\d+) boxes with (\d+) (\w+) in each", q):
        return str(int(m[1]) * int(m[2]))
    if m := re.fullmatch(r"Is (\d+) greater than (\d+)\?", q):
        return "Yes" if int(m[1]) > int(m[2]) else "No"
    if q.endswith("Is this review positive?"):
        return "Yes" if polarity[_review_of(q)] == "positive" else "No"
    if q.endswith("Which of these words appears in the review?"):
        said = set(re.findall(r"[^\W_]+", _review_of(q).lower()))
        hits = [i for i, word in enumerate(options) if word in said]
        assert len(hits) == 1, (q, options)
        return "ABCD"[hits[0]]
    if q.endswith("What is the sentiment of the review?"):
        return "ABCD"[options.index(polarity[_review_of(q)])]
    lives = r"\w+ lives in (\w+) and (\w+) lives in (\w+)\. Where does (\w+) live\?"
    if m := re.fullmatch(lives, q):
        assert m[2] == m[4]
        return m[3]
    m = re.fullmatch(
        r"\w+ has a (\w+) (\w+) and (\w+) has a (\w+) (\w+)\. "
        r"What colou?r is (\w+)'s (\w+)\?",
        q,
    )
    assert m and (m[3], m[5]) == (m[6], m[7]), q
    return m[4]


def test_the_generated_key_answers_are_right(finder):
    source = load_text_dataset("rotten-tomatoes")
    polarity = {}
    for part in (source.train, source.test):
        for text, label in zip(part["text"], part["label"], strict=True):
            polarity[text] = source.label_names[label]
    for rows in (finder.train, finder.test):
        for row in rows:
            truth = _recomputed(row, polarity)
            expected = NO_ANSWER if row["style"] == "refusal" else truth
            assert row["key"] == expected, row
            if row["style"] in ("bare", "answer-is", "markdown-bold", "latex-boxed"):
                assert truth in row["output"]
            if row["style"] == "units-separators":
                written = re.search(r"-?[\d,]+(\.\d)?", row["output"])[0]
                assert float(written.replace(",", "")) == int(truth)
            if row["style"] == "option-text":  # the option's text, not its letter
                assert row["options"]["ABCD".index(truth)] in row["output"].lower()
            if row["style"] == "correction":  # the right answer comes last
                assert row["output"].rstrip(".").endswith(truth)
    assert set(finder.test["kind"]) == set(finder.train["kind"]) == set(KINDS)


def test_every_style_appears_and_held_out_styles_never_train(finder):
    train_styles, test_styles = set(finder.train["style"]), set(finder.test["style"])
    assert train_styles == set(TRAIN_STYLES)
    assert test_styles == set(TRAIN_STYLES) | set(HELD_OUT_STYLES)
    assert not train_styles & set(HELD_OUT_STYLES)
    for row in (*finder.train, *finder.test):  # styles only for kinds they fit
        assert row["kind"] in STYLE_KINDS.get(row["style"], KINDS)
    # split by question: no question is in both
    assert not set(finder.train["question"]) & set(finder.test["question"])
    # every held-out question is written in every style that fits its kind
    per_question = Counter(finder.test["question"])
    assert set(per_question.values()) <= {8, 9, 10}  # 8 general + 1-2 of its kind
    # training: `styles-per-question` styles a question
    assert set(Counter(finder.train["question"]).values()) == {3}


def test_the_set_is_a_function_of_its_seed(finder):
    again = finder_set(**SMALL, seed=0)
    assert again.train["output"] == finder.train["output"]
    assert again.test["key"] == finder.test["key"]
    other = finder_set(**SMALL, seed=1)
    assert other.train["question"] != finder.train["question"]


# -- the RegEx baseline --------------------------------------------------------------

# (output, kind, what OpenCompass's RegEx extracts, the key answer)
REGEX_CASES = [
    # what it gets right
    ("The answer is B.", "multiple-choice", "B", "B"),
    ("(C)", "multiple-choice", "C", "C"),
    ("**Answer:** D", "multiple-choice", "D", "D"),
    ("Therefore, the final answer is $\\boxed{B}$.", "multiple-choice", "B", "B"),
    ("The answer is A... no wait, it is C.", "multiple-choice", "C", "C"),
    ("The answer is 1234.", "arithmetic", "1234", "1234"),
    ("$\\boxed{56}$", "arithmetic", "56", "56"),
    ("It comes to -462.0 exactly.", "arithmetic", "-462.0", "-462"),
    ("Yes, it is.", "yes-no", "Yes", "Yes"),
    ("**No**", "yes-no", "No", "No"),
    ("Oslo.", "short-text", "Oslo", "Oslo"),
    (
        "I'm sorry, but I cannot answer that question.",
        "multiple-choice",
        None,
        NO_ANSWER,
    ),  # fmt: skip
    # what it is known to get wrong
    (
        "As an AI language model, I cannot determine this.",
        "multiple-choice",
        "A",
        NO_ANSWER,
    ),  # fmt: skip
    ("The review is negative.", "multiple-choice", None, "B"),  # option text
    (
        "Option C is right; 1 reason: B and D are absent.",
        "multiple-choice",
        "B",
        "C",
    ),  # fmt: skip
    ("Only one option fits: D, not A", "multiple-choice", "A", "D"),
    ("There are 30,000 eggs in all.", "arithmetic", "000", "30000"),
    (
        "Using 12 and 4 gives 48, so the answer is 48. To check, 48 / 4 = 12.",
        "arithmetic",
        "12",
        "48",
    ),  # fmt: skip
    ("The answer is yes.", "yes-no", "answer is yes", "Yes"),
    ("No. Sorry, let me correct that: Yes.", "yes-no", "No", "Yes"),
    ("Leo lives in Oslo.", "short-text", "Leo lives in Oslo", "Oslo"),
    ("I don't know.", "short-text", "I dont know", NO_ANSWER),
]


@pytest.mark.parametrize(("output", "kind", "found", "key"), REGEX_CASES)
def test_the_regex_baseline_on_known_outputs(output, kind, found, key):
    options = ("positive", "negative", "neutral", "mixed")
    assert regex_extract(output, kind, options) == found
    right = REGEX_CASES.index((output, kind, found, key)) < 12
    assert same_answer(found, key, kind) is right


def test_the_frameworks_functions_as_written():
    # OpenCompass: the first option of "ABCD" found by the first matching pattern
    assert first_option_postprocess("B or maybe A", "ABCD") == "A"  # a last letter
    # "1" and any character, then the first of A-D anywhere after: B, not D
    assert first_option_postprocess("1) D, then B follows", "ABCD") == "B"
    assert first_option_postprocess("nothing here", "ABCD") == ""
    # a lower-case answer: the cushion pattern finds the A of "Answer"
    assert first_option_postprocess("Answer: c", "ABC") == "A"
    assert general_postprocess("The Oslo, of course") == "Oslo"
    assert gsm8k_postprocess("7 apples\nQuestion: 99 pears?") == "7"
    assert gsm8k_postprocess("no digits") == "NULL"
    # lm-evaluation-harness gsm8k (v3.0)
    assert lm_eval_strict_match("5 + 7 = 12\n#### 1,234") == "1,234"
    assert lm_eval_strict_match("The answer is 1,234.") == "[invalid]"
    assert lm_eval_flexible_extract("5 + 7 = 12, so 1,234.") == "1,234."
    assert lm_eval_flexible_extract("I don't know") == "[invalid]"
    assert same_answer(lm_eval_flexible_extract("It is 1,234."), "1234", "arithmetic")


# -- answers compared, extraction called ---------------------------------------------


def test_same_answer_compares_by_kind():
    assert same_answer("1,234", "1234.0", "arithmetic")
    assert same_answer("$1,234", "1234", "arithmetic")
    assert same_answer("30,000 eggs", "30000", "arithmetic")
    assert not same_answer("1,235", "1234", "arithmetic")
    assert not same_answer("000", "30000", "arithmetic")
    assert same_answer("(b).", "B", "multiple-choice")
    assert not same_answer("C", "B", "multiple-choice")
    assert same_answer("The Oslo.", "oslo", "short-text")
    assert same_answer(None, NO_ANSWER, "yes-no")
    assert same_answer("[no valid answer]", None, "short-text")
    assert not same_answer(None, "Yes", "yes-no")
    assert not same_answer("Yes", NO_ANSWER, "yes-no")
    assert as_number("12 eggs") == 12.0 and as_number("twelve") is None


KEYS = {  # output -> what the scripted extractor writes
    "The review is negative.": " B",
    "I'm sorry, I can't say.": " [No valid answer]",
    "There are 30,000 eggs in all.": " 30000\nQuestion: next",
    "Leo lives in Oslo.": " Lima",  # a wrong extraction
}


def scripted_extractor(prompt: str) -> str:
    """Reads the output from the finder prompt and answers from `KEYS`."""
    output = re.search(r"^Output: (.*)$", prompt, re.MULTILINE)[1]
    return KEYS[output]


def test_extract_calls_regex_or_a_model():
    model = ScriptedGenerator(scripted_extractor)
    options = ("positive", "negative", "neutral", "mixed")
    q = 'Review: "Dull."\nWhat is the sentiment of the review?'
    out = "The review is negative."
    assert extract(q, out, "multiple-choice", options) is None  # the RegEx: nothing
    got = extract(q, out, "multiple-choice", options, method="model", generator=model)
    assert got == "B"
    items = [
        ("Q?", "I'm sorry, I can't say.", "yes-no", ()),
        ("Q?", "There are 30,000 eggs in all.", "arithmetic", ()),
        ("Where?", "Leo lives in Oslo.", "short-text", ()),
    ]
    found = extract_many(items, method="model", generator=model)
    assert found == [None, "30000", "Lima"]
    assert extract_many(items) == ["Im sorry", "000", "Leo lives in Oslo"]
    prompt = finder_prompt(q, out, options)
    assert "Options: A) positive; B) negative; C) neutral; D) mixed" in prompt
    assert prompt.endswith(f"Output: {out}\nKey answer:")
    with pytest.raises(ValueError, match="needs a generator"):
        extract(q, out, "multiple-choice", method="model")
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract(q, out, "essay")


# -- the task on a tiny random Llama ---------------------------------------------------


def word_tokenizer(texts) -> PreTrainedTokenizerFast:
    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(t)})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


TINY_WORDS = ["Extract the key answer from output", "Question Options Output Key"]


class TinyXFinder(XFinderTask):
    """The task on a random 2-layer Llama; the extractor scored is `KEYS`."""

    name: ClassVar[str] = "tiny-xfinder"

    def build_model(self, device: str):
        tokenizer = word_tokenizer([*TINY_WORDS, *KEYS, *KEYS.values()])
        trainable = build_causal_lm(
            random_weights=tiny_llama(len(tokenizer)),
            seed=self.run.runtime.seed,
            device=device,
        )
        return dataclasses.replace(trainable, tokenizer=tokenizer)

    def extractor(self, trainable, device="cpu"):
        return ScriptedGenerator(scripted_extractor)


def make_task(values=None, cls=XFinderTask, **options):
    run = RunConfig.from_run_config(
        {**default_values(), **cls.run_defaults, **(values or {}), "task": "xfinder"}
    )
    return cls(run, build_options(cls, {**options}))


def hand_rows():
    base = {"question": "Q?", "options": []}
    return to_dataset(
        [
            {
                **base,
                "kind": "multiple-choice",
                "style": "option-text",
                "output": "The review is negative.",
                "key": "B",
                "options": ["positive", "negative", "neutral", "mixed"],
            },  # fmt: skip
            {
                **base,
                "kind": "yes-no",
                "style": "refusal",
                "output": "I'm sorry, I can't say.",
                "key": NO_ANSWER,
            },  # fmt: skip
            {
                **base,
                "kind": "arithmetic",
                "style": "units-separators",
                "output": "There are 30,000 eggs in all.",
                "key": "30000",
            },  # fmt: skip
            {
                **base,
                "kind": "short-text",
                "style": "answer-is",
                "output": "Leo lives in Oslo.",
                "key": "Oslo",
            },  # fmt: skip
        ]
    )


def test_evaluate_scores_equal_hand_counts():
    task = make_task({"eval-batch-size": 2}, TinyXFinder)
    trainable = task.model()
    rows = hand_rows()
    scores = task.evaluate(trainable, rows)
    # the scripted extractor: right on rows 1-3, wrong on row 4 (Lima, not Oslo)
    assert scores["accuracy"] == 0.75 and scores["num-examples"] == 4
    assert scores["accuracy-option-text"] == 1.0
    assert scores["accuracy-refusal"] == 1.0
    assert scores["accuracy-units-separators"] == 1.0
    assert scores["accuracy-answer-is"] == 0.0
    assert scores["accuracy-short-text"] == 0.0 and scores["accuracy-arithmetic"] == 1
    # OpenCompass: nothing (B), "I cant say" (not none), "000", a sentence: 0 of 4
    assert scores["regex-accuracy"] == 0.0
    assert scores["loss"] > 0 and scores["answer-tokens"] > 4
    assert task.regex_hits(rows) == [False, False, False, False]


def test_finish_reports_extractor_and_regex_by_style_on_the_test_set():
    task = make_task(
        {"eval-batch-size": 64},
        TinyXFinder,
        **{"train-questions": 8, "test-questions": 4, "styles-per-question": 1},
    )
    trainable = task.model()
    test = task.test_data()
    assert set(test["style"]) >= set(HELD_OUT_STYLES)
    # the scripted extractor knows none of these outputs: answer nothing
    task.extractor = lambda *_: ScriptedGenerator(lambda p: " [No valid answer]")
    scores = task.evaluate(trainable, test)
    refusals = test["style"].count("refusal")
    assert scores["accuracy"] == pytest.approx(refusals / len(test))
    report = task.finish(trainable, None)["xfinder"]
    assert report["extractor"]["refusal"] == 1.0 and report["extractor"]["bare"] == 0
    assert report["held-out-only-styles"] == list(HELD_OUT_STYLES)
    assert sum(report["rows"].values()) == len(test)
    regex = task.regex_hits(test)
    assert report["regex-accuracy"] == pytest.approx(np.mean(regex))
    assert report["regex"]["bare"] == 1.0  # a bare answer: every framework gets it
    assert report["regex"]["chain-of-thought"] < 1.0
    # a second evaluation (a later round) is the last; the first one is kept
    task.extractor = lambda *_: ScriptedGenerator(lambda p: " Yes")
    again = task.evaluate(trainable, test)
    report = task.finish(trainable, None)["xfinder"]
    assert report["accuracy"] == again["accuracy"] != scores["accuracy"]
    assert report["first"]["accuracy"] == scores["accuracy"]
    assert report["first"]["extractor"]["refusal"] == 1.0
    assert report["extractor"]["refusal"] == 0.0


def writes_half(prompt: str) -> str:
    """A scripted writer: states the answer it is told for numbers, not otherwise."""
    told = re.search(r"The correct answer is (.*?)\. Answer the question", prompt)[1]
    return f"It is {told}." if told.lstrip("-").isdigit() else "I am not sure."


def test_model_written_outputs_are_kept_when_they_state_the_answer(finder):
    questions = finder.test_questions[:8]
    rows, written = model_rows(questions, lambda ps: [writes_half(p) for p in ps])
    assert written == 8
    arithmetic = [q for q in questions if q.kind == "arithmetic"]
    assert len(rows) == len(arithmetic) == 2
    assert all(r["style"] == MODEL_STYLE for r in rows)
    assert [r["key"] for r in rows] == [q.answer for q in arithmetic]
    task = make_task(
        {},
        XFinderTask,
        **{
            "train-questions": 8,
            "test-questions": 8,
            "model-outputs": 8,
            "generator": "tests.tasks.test_xfinder:writes_half",
        },
    )
    test = task.test_data()
    assert test["style"].count(MODEL_STYLE) == 2
    assert task.finish(None, None) == {}  # nothing evaluated yet


def test_partitions_cover_the_training_rows():
    task = make_task(
        {"num-clients": 3, "clients-per-round": 1, "eval-clients-per-round": 1},
        **{"train-questions": 40, "styles-per-question": 2},
    )
    parts = [task.partition(i) for i in range(3)]
    assert sum(len(p.train) + len(p.held_out) for p in parts) == 80
    prompt, answer = task.example(parts[0].train, 0)
    assert prompt.startswith("Extract the key answer") and answer.startswith(" ")


def test_options_are_checked_and_the_task_is_registered():
    assert get("xfinder") is XFinderTask
    with pytest.raises(ConfigError, match="train-questions"):
        build_options(XFinderTask, {"train-questions": 0})
    with pytest.raises(ConfigError, match="model-outputs"):
        build_options(XFinderTask, {"model-outputs": -1})
    with pytest.raises(ConfigError, match="generator"):
        build_options(XFinderTask, {"generator": "nonsense"})
    with pytest.raises(ConfigError, match="max-new-tokens"):
        build_options(XFinderTask, {"max-new-tokens": 0})


def test_each_method_gets_its_own_rates():
    from cli.main import build_parser, overrides_from_args

    def overrides(*argv: str) -> dict:
        return overrides_from_args(build_parser().parse_args(["run", *argv]))

    mezo = overrides("--task", "xfinder", "--method", "fedmezo")
    assert mezo["lr"] == 0.005 and mezo["client-optimizer"] == "sgd"
    assert overrides("--task", "xfinder", "--method", "fedavg")["lr"] == 0.01
    spry = overrides("--task", "xfinder")
    assert spry["lr"] == 3.0 and spry["max-length"] == 192
    assert overrides("--task", "xfinder", "--set", "lr=0.5")["lr"] == "0.5"


# -- in Flower's simulation engine ---------------------------------------------------


@pytest.mark.slow  # two rounds of the real simulation on a tiny saved Llama
def test_two_rounds_in_the_simulation_engine(tmp_path):
    from tests.integration.runs import run_spry

    sizes = {"train_questions": 16, "test_questions": 4, "styles_per_question": 1}
    small = finder_set(**sizes)
    texts = [*TINY_WORDS, NO_ANSWER]
    for row in (*small.train, *small.test):
        texts += [row["question"], row["output"], row["key"], *row["options"]]
    tokenizer = word_tokenizer(texts)
    model = build_causal_lm(random_weights=tiny_llama(len(tokenizer))).model
    folder = tmp_path / "tiny-llama"
    model.merge_and_unload().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run_dir = run_spry(
        tmp_path / "results", "--task", "xfinder", "--rounds", "2",
        "--clients", "2", "--per-round", "2", "--model", str(folder),
        "--set", "eval-clients-per-round=0", "--set", "batch-size=4",
        "--set", "xfinder.train-questions=16", "--set", "xfinder.test-questions=4",
        "--set", "xfinder.styles-per-question=1",
    )  # fmt: skip
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4  # a header, rounds 0, 1 and 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    report = summary["xfinder"]
    assert set(report["extractor"]) == set(small.test["style"])
    assert 0 <= report["accuracy"] <= 1 and report["regex-accuracy"] > 0.3


def test_the_benchmark_table_lines_up_methods_by_style():
    from benchmarks.tasks import SETTINGS, VARIANTS, xfinder_table

    assert [m for _, m, _ in VARIANTS["xfinder"]] == ["spry", "fedavg", "fedmezo"]
    assert "xfinder.test-questions=12" in SETTINGS["xfinder"]

    def summary(bare: float, boxed: float) -> dict:
        return {
            "xfinder": {
                "extractor": {"bare": bare, "latex-boxed": boxed},
                "regex": {"bare": 1.0, "latex-boxed": 0.5},
                "rows": {"bare": 2.0, "latex-boxed": 2.0},
                "accuracy": (bare + boxed) / 2,
                "regex-accuracy": 0.75,
                "first": {
                    "extractor": {"bare": 0.0, "latex-boxed": 0.5},
                    "accuracy": 0.25,
                },
                "held-out-only-styles": ["latex-boxed"],
            }
        }

    rows = [{"round": 0.0}, {"round": 3.0}]
    runs = {"spry": (summary(0.5, 0.0), rows), "fedavg": (summary(1.0, 0.5), rows)}
    lines = xfinder_table(runs)
    assert lines[0].endswith("| extractor, spry | extractor, fedavg |")
    assert lines[2] == "| bare | 2 | 100.0% | 0.0% | 50.0% | 100.0% |"
    assert (
        lines[3] == "| latex-boxed (held-out only) | 2 | 50.0% | 50.0% | 0.0% | 50.0% |"
    )
    assert lines[4] == "| **all** | 4 | 75.0% | 25.0% | 25.0% | 75.0% |"
    assert "after 3 rounds" in lines[6]
