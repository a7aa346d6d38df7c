"""The `conifer` task: checkers, the reference and near-miss writers, the curriculum,
process feedback, IFEval strict accuracy, and 2 rounds in Flower's simulation.

Checkers are tested on responses written here by hand; the writers over hundreds
of seeded instructions of every level; the evaluation on a scripted generator
whose answers (reference or near miss) fix every verdict in advance.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import ClassVar

import numpy as np
import pytest

from spry.config import ConfigError, RunConfig, default_values
from spry.data import load_text_dataset
from spry.models.causal_lm import build_causal_lm
from spry.tasks import get
from spry.tasks.base import build_options
from spry.tasks.conifer import ConiferTask
from spry.tasks.conifer.constraints import (
    AT_LEAST,
    AT_MOST,
    KINDS,
    BulletList,
    Capitals,
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
    dumps,
    loads,
)
from spry.tasks.conifer.instructions import ALL_KINDS, LEVELS, compatible
from spry.tasks.conifer.pairs import build_instructions
from spry.tasks.conifer.task import feedback_prompt, level_for_round, strict_accuracies
from spry.tasks.conifer.writer import write_near_miss
from spry.training import make_client_engine, train_slice
from tests.helpers import tiny_llama
from tests.tasks.test_causal_lm_task import WORDS, word_tokenizer

# -- the checkers, on responses written by hand ---------------------------------------

CHECKS = [
    # (constraint, response, verdict)
    (WordCount(AT_LEAST, 5), "One two three four five.", True),
    (WordCount(AT_LEAST, 5), "One two three four.", False),
    (WordCount(AT_MOST, 3), "It's fine.", True),  # it, s, fine: three \w+ runs
    (WordCount(AT_MOST, 3), "Not fine at all.", False),
    (SentenceCount(AT_LEAST, 2), "Good acting. Bad plot!", True),
    (SentenceCount(AT_LEAST, 2), "Good acting, bad plot.", False),
    (SentenceCount(AT_MOST, 2), "One. Two? Three!", False),
    (SentenceCount(AT_MOST, 2), "* One.\n* Two.", True),
    (IncludeKeywords(("pacing", "score")), "The SCORE lifts the Pacing.", True),
    (IncludeKeywords(("pacing", "score")), "The score is lovely.", False),
    (IncludeKeywords(("act",)), "Fine acting.", True),  # IFEval: a substring match
    (ExcludeWords(("film",)), "A filmmaker's debut.", True),  # whole words only
    (ExcludeWords(("film",)), "A fine FILM.", False),
    (JsonFormat(("review", "rating")), '{"review": "Good.", "rating": "4"}', True),
    (JsonFormat(("review",)), '```json\n{"review": "Good."}\n```', True),
    (JsonFormat(("review", "rating")), '{"review": "Good."}', False),
    (JsonFormat(("review",)), 'Here: {"review": "Good."}', False),
    (JsonFormat(("review",)), '["review"]', False),
    (BulletList(2), "* First point.\n- Second point.", True),
    (BulletList(2), "* One.\n* Two.\n* Three.", False),
    (BulletList(1), "***\n* Only one.", True),  # a divider is no bullet
    (Title(), "<<A Quiet Triumph>>\nIt works.", True),
    (Title(), "<<>>\nNo title inside.", False),
    (Title(), "<<Split\ntitle>>", False),
    (Lowercase(), "all small, 100%.", True),
    (Lowercase(), "All small.", False),
    (Capitals(), "ALL CAPS, 100%.", True),
    (Capitals(), "ALL CAPs.", False),
    (StartPhrase("In short,"), "  in short, it is good.", True),
    (StartPhrase("In short,"), "Briefly, it is good.", False),
    (EndPhrase("Enjoy the show!"), "Go see it. ENJOY THE SHOW!\n", True),
    (EndPhrase("Enjoy the show!"), "Enjoy the show! Or not.", False),
    (Paragraphs(2), "First part.\n***\nSecond part.", True),
    (Paragraphs(2), "First.\n***\nSecond.\n***\nThird.", False),
    (Paragraphs(2), "First.\n***\n***\nSecond.", False),  # an empty one inside
    (Paragraphs(1), "Only one.\n***", True),  # an empty end is not counted
]


@pytest.mark.parametrize(("constraint", "response", "verdict"), CHECKS)
def test_each_checker_on_hand_written_responses(constraint, response, verdict):
    assert constraint.check(response) is verdict


def test_every_kind_is_checked_both_ways_and_round_trips():
    passing = {c.kind for c, _, v in CHECKS if v}
    failing = {c.kind for c, _, v in CHECKS if not v}
    assert passing == failing == set(KINDS) == set(ALL_KINDS)
    constraints = [c for c, _, _ in CHECKS]
    assert loads(dumps(constraints)) == tuple(constraints)
    assert all(c.IFEVAL_ID.count(":") == 1 for c in constraints)
    with pytest.raises(ValueError, match="relation"):
        WordCount("exactly", 3)


def test_compatibility_table():
    assert compatible(["json", "words", "include", "lowercase"])
    assert not compatible(["json", "bullets"])
    assert not compatible(["json", "paragraphs"])
    assert not compatible(["bullets", "paragraphs"])
    assert not compatible(["capitals", "lowercase"])
    assert not compatible(["json", "title"])
    assert not compatible(["json", "capitals"])
    assert not compatible(["words", "words"])
    assert compatible(["bullets", "title", "start", "end", "capitals"])


# -- the writers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def source():
    data = load_text_dataset("rotten-tomatoes")
    names = data.label_names
    return list(data.train["text"]), [names[label] for label in data.train["label"]]


@pytest.fixture(scope="module")
def made(source):
    """300 instructions (60 a level) from two data seeds."""
    texts, polarities = source
    return [
        pair
        for seed in (0, 7)
        for pair in build_instructions(texts, polarities, per_level=30, seed=seed)
    ]


def test_references_pass_their_own_checkers_at_every_level(made):
    levels = [instruction.level for instruction, _ in made]
    assert [levels.count(lv) for lv in LEVELS] == [60] * 5
    assert levels[:5] == list(LEVELS)  # interleaved: a prefix keeps every level
    kinds_seen = set()
    for instruction, reference in made:
        assert compatible(instruction.kinds)
        assert all(c.check(reference) for c in instruction.constraints), (
            instruction.text(),
            reference,
        )
        kinds_seen.update(instruction.kinds)
        text = instruction.text()
        assert text.startswith(f"Write a short {instruction.polarity} review")
        assert all(c.describe() in text for c in instruction.constraints)
    assert kinds_seen == set(ALL_KINDS)


def test_instructions_are_a_function_of_the_seed(source):
    texts, polarities = source
    first = build_instructions(texts, polarities, per_level=3, seed=3)
    again = build_instructions(texts, polarities, per_level=3, seed=3)
    other = build_instructions(texts, polarities, per_level=3, seed=4)
    assert first == again and first != other


def test_near_misses_fail_exactly_the_constraints_they_broke(made):
    two_broken = 0
    for index, (instruction, reference) in enumerate(made):
        for breaks in (1, 2):
            rng = np.random.default_rng(index)
            attempt, broken = write_near_miss(instruction, breaks, rng)
            failed = tuple(
                i for i, c in enumerate(instruction.constraints) if not c.check(attempt)
            )
            assert failed == broken and 1 <= len(broken) <= breaks
            assert attempt != reference
            two_broken += breaks == 2 == len(broken)
    # Two of a level >= 2 instruction's constraints break together almost always
    # (238 of these 240; the rest: two bounds the pool cannot both miss)
    assert two_broken >= 0.95 * sum(i.level >= 2 for i, _ in made)


# -- the task on a tiny random Llama --------------------------------------------------


class TinyConifer(ConiferTask):
    """The task on a random 2-layer Llama with a word-level tokenizer."""

    name: ClassVar[str] = "tiny-conifer"

    def build_model(self, device: str):
        config = tiny_llama(len(WORDS) + 3)
        trainable = build_causal_lm(
            random_weights=config, seed=self.run.runtime.seed, device=device
        )
        return dataclasses.replace(trainable, tokenizer=word_tokenizer())


def make_conifer(values=None, cls=TinyConifer, **options):
    small = {"num-clients": 2, "clients-per-round": 2, "max-length": 128}
    run = RunConfig.from_run_config(
        {**default_values(), **cls.run_defaults, **small, **(values or {})}
    )
    sizes = {"train-per-level": 8, "test-per-level": 2}
    return cls(run, build_options(cls, {**sizes, **options}))


def test_options_are_checked_and_the_task_is_registered():
    assert get("conifer") is ConiferTask
    for bad in (
        {"order": "random"},
        {"feedback-source": "oracle"},
        {"template": "no slot"},
        {"test-per-level": 0},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_options(ConiferTask, bad)


def test_the_curriculum_walks_the_levels_over_the_rounds():
    assert [level_for_round(r, 5) for r in range(1, 6)] == [1, 2, 3, 4, 5]
    assert [level_for_round(r, 10) for r in range(1, 11)] == [
        1, 1, 2, 2, 3, 3, 4, 4, 5, 5,
    ]  # fmt: skip
    assert [level_for_round(r, 2) for r in (1, 2)] == [1, 3]
    assert [level_for_round(r, 3) for r in (1, 2, 3)] == [1, 2, 4]


def test_curriculum_picks_the_rounds_level_and_shuffled_mixes_the_same_count():
    curriculum = make_conifer({"num-server-rounds": 5})
    shuffled = make_conifer({"num-server-rounds": 5}, order="shuffled")
    rows = curriculum.partition(0).train
    assert len(rows) == 20  # 40 instructions, IID over two clients, none held out
    levels = np.asarray(rows["level"])
    mixed = set()
    for server_round in range(1, 6):
        picked = curriculum.round_rows(rows, 0, server_round)
        assert set(levels[picked]) == {server_round}
        assert len(picked) == int((levels == server_round).sum())
        drawn = shuffled.round_rows(rows, 0, server_round)
        assert len(drawn) == len(picked) and len(set(drawn)) == len(drawn)
        mixed.update(levels[drawn].tolist())
        assert drawn == shuffled.round_rows(rows, 0, server_round)  # seeded
    assert len(mixed) >= 4


def test_the_feedback_example_text():
    constraints = (WordCount(AT_MOST, 30), Lowercase())
    text = feedback_prompt(
        "Write a short positive review of a movie.",
        " Great Fun. ",
        constraints,
        [True, False],
    )
    assert text == (
        "Write a short positive review of a movie.\n"
        "A previous response:\n"
        "Great Fun.\n"
        "Checks of that response:\n"
        "- Answer with at most 30 words. Met.\n"
        "- Your entire response should be in lowercase letters, no capitals. "
        "NOT met.\n"
        "Write a response that meets every constraint."
    )


def test_a_long_attempt_is_shortened_so_the_task_and_the_checks_stay_in_view():
    task = make_conifer({"max-length": 64})
    tokenizer = word_tokenizer()

    def size(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    constraints, passed = (WordCount(AT_MOST, 30), Lowercase()), [False, True]
    asked = "Write a short positive review of a movie."
    answer = " great fun"

    # fits as it is: unchanged
    short = task.fitted_feedback(
        tokenizer, asked, "Great Fun.", constraints, passed, answer
    )
    assert short == task.prompt(
        feedback_prompt(asked, "Great Fun.", constraints, passed)
    )

    # too long: the attempt is cut (marked), never the task or the verdicts
    attempt = " ".join(["fun"] * 80)
    fitted = task.fitted_feedback(
        tokenizer, asked, attempt, constraints, passed, answer
    )
    assert size(fitted) + size(answer) + 1 <= 64
    assert fitted.startswith(asked) and "[...]" in fitted and "NOT met." in fitted
    assert size(task.prompt(feedback_prompt(asked, attempt, constraints, passed))) > 64

    # no room even without an attempt: no example
    long_answer = " " + " ".join(["fun"] * 60)
    assert (
        task.fitted_feedback(
            tokenizer, asked, attempt, constraints, passed, long_answer
        )
        is None
    )


def test_a_round_trains_on_instructions_then_their_feedback_examples():
    task = make_conifer({"num-server-rounds": 5, "batch-size": 3})
    rows = task.partition(1).train
    picked = task.round_rows(rows, 1, 2)
    pairs = task.round_pairs(task.model(), 1, 2, "cpu")
    assert len(pairs) == 2 * len(picked)  # every near miss fails: one feedback each
    direct, feedback = pairs[: len(picked)], pairs[len(picked) :]
    for index, (prompt, answer), (fb_prompt, fb_answer) in zip(
        picked, direct, feedback, strict=True
    ):
        row = rows[index]
        assert prompt == row["prompt"] + "\nResponse:"
        assert answer == fb_answer == " " + row["response"]
        assert fb_prompt.startswith(row["task"] + "\nA previous response:\n")
        assert row["prompt"].startswith(row["task"] + " ")
        # the attempt, or its first words when the example would not fit
        shown = fb_prompt.split("\nA previous response:\n")[1]
        shown = shown.split("\nChecks of that response:")[0]
        whole = " ".join(row["attempt"].split())
        assert shown == row["attempt"].strip() or (
            shown.endswith(" [...]") and whole.startswith(shown.removesuffix(" [...]"))
        )
        assert fb_prompt.count("NOT met.") == len(json.loads(row["broken"]))
    without = make_conifer({"num-server-rounds": 5}, feedback=False)
    assert len(without.round_pairs(without.model(), 1, 2, "cpu")) == len(picked)
    trainable = task.model()
    batches = list(task.train_batches(trainable, 1, 2, 0))
    assert sum(len(b["input_ids"]) for b in batches) == len(pairs)
    assert len(batches) == math.ceil(len(pairs) / 3)


def generated_by_the_model_itself(prompt: str) -> str:
    """A scripted 'generator' that fails every constraint it can: one capital."""
    return "A"


def test_generated_feedback_keeps_only_failed_attempts():
    task = make_conifer(
        {"num-server-rounds": 5},
        **{
            "feedback-source": "generator",
            "generator": f"{__name__}:generated_by_the_model_itself",
        },
    )
    rows = task.partition(0).train
    picked = task.round_rows(rows, 0, 1)
    pairs = task.round_pairs(task.model(), 0, 1, "cpu")
    expected = sum(  # "A" meets some one-constraint instructions (capitals, ...)
        not all(c.check("A") for c in loads(rows[i]["constraints"])) for i in picked
    )
    assert len(pairs) == len(picked) + expected
    assert all("A previous response:\nA\n" in p for p, _ in pairs[len(picked) :])


# -- evaluation: IFEval strict accuracy on known answers -------------------------------

SCRIPTED: dict[str, str] = {}


def scripted_answer(prompt: str) -> str:
    """The test's fixed answer to each test prompt (set by the test)."""
    return SCRIPTED[prompt]


def test_strict_accuracies_by_hand():
    judged = [(1, [True]), (1, [False]), (2, [True, True]), (2, [True, False])]
    scores = strict_accuracies(judged)
    assert scores["prompt-strict"] == 2 / 4
    assert scores["instruction-strict"] == 4 / 6
    assert scores["prompt-strict-level-1"] == 1 / 2
    assert scores["instruction-strict-level-1"] == 1 / 2
    assert scores["prompt-strict-level-2"] == 1 / 2
    assert scores["instruction-strict-level-2"] == 3 / 4


def test_evaluate_scores_a_scripted_generator_with_known_answers(tmp_path):
    task = make_conifer(generator=f"{__name__}:scripted_answer")
    rows = task.test_data()
    assert list(rows["level"]) == [1, 2, 3, 4, 5] * 2
    # The first of each level answers with its reference (every constraint met),
    # the second with its near miss (exactly the `broken` constraints fail).
    SCRIPTED.clear()
    for i, row in enumerate(rows):
        answer = row["response"] if i < 5 else row["attempt"]
        SCRIPTED[task.prompt(row["prompt"])] = " " + answer
    scores = task.evaluate(task.model(), rows)
    misses = rows.select(range(5, 10))
    broken = {row["level"]: len(json.loads(row["broken"])) for row in misses}
    assert scores["prompt-strict"] == scores["accuracy"] == 0.5
    assert scores["instruction-strict"] == pytest.approx(
        (30 - sum(broken.values())) / 30
    )
    for level in LEVELS:
        assert scores[f"prompt-strict-level-{level}"] == 0.5
        assert scores[f"instruction-strict-level-{level}"] == pytest.approx(
            (2 * level - broken[level]) / (2 * level)
        )
    assert scores["num-examples"] == 10 and scores["loss"] > 0
    summary = task.finish(task.model(), tmp_path)
    written = [json.loads(line) for line in open(tmp_path / "responses.jsonl")]
    expected = [*rows["response"][:5], *rows["attempt"][5:]]
    assert [w["response"] for w in written] == [" " + e for e in expected]
    assert [all(w["met"]) for w in written] == [True] * 5 + [False] * 5
    assert summary["conifer-scores"]["prompt-strict"] == 0.5
    assert summary["conifer-evaluations"] == [summary["conifer-scores"]]
    assert "accuracy" not in summary["conifer-scores"]


def test_a_forward_step_trains_on_the_rounds_pairs():
    task = make_conifer({"num-server-rounds": 5, "batch-size": 4})
    trainable = task.model()
    report = train_slice(
        trainable,
        list(trainable.names),
        lambda epoch: task.train_batches(trainable, 0, 3, epoch),
        loss=task.loss,
        engine=make_client_engine(task.run.client),
        cfg=task.run.client,
        seed=0,
        server_round=3,
        partition_id=0,
    )
    pairs = task.round_pairs(trainable, 0, 3, "cpu")
    assert report.steps == math.ceil(len(pairs) / 4) and math.isfinite(report.mean_loss)


# -- end to end in Flower's simulation engine -----------------------------------------


@pytest.mark.slow  # a simulation (Ray) on a tiny saved Llama: 140 s on busy cores
def test_two_rounds_through_the_simulation_engine(tmp_path):
    import csv

    from transformers import AutoModelForCausalLM

    from tests.integration.runs import run_spry

    model_dir = tmp_path / "tiny-llama"
    AutoModelForCausalLM.from_config(tiny_llama(len(WORDS) + 3)).save_pretrained(
        model_dir
    )
    word_tokenizer().save_pretrained(model_dir)
    run_dir = run_spry(
        tmp_path / "results", "--task", "conifer", "--rounds", "2",
        "--clients", "2", "--per-round", "2", "--set", f"model={model_dir}",
        "--set", "conifer.train-per-level=4", "--set", "conifer.test-per-level=1",
        "--set", "conifer.max-new-tokens=8", "--set", "conifer.order=shuffled",
    )  # fmt: skip
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert float(rows[2]["train-loss"]) > 0 and rows[2]["clients"] == "2"
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluations = summary["conifer-evaluations"]  # rounds 0, 1 and 2
    assert len(evaluations) == 3 and evaluations[-1] == summary["conifer-scores"]
    for row, scores in zip(rows, evaluations, strict=True):
        assert float(row["test-accuracy"]) == pytest.approx(scores["prompt-strict"])
        assert float(row["test-loss"]) == pytest.approx(scores["loss"])
        for level in LEVELS:
            for kind in ("prompt", "instruction"):
                assert 0 <= scores[f"{kind}-strict-level-{level}"] <= 1
