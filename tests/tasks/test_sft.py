"""The `sft` task: pairs from files, offline review questions, exact match, training.

File loaders read JSONL, CSV and Parquet files written here; the offline default's
answers are recomputed from the reviews by rules written independently of the
task's; a short forward-mode step on a tiny random Llama changes LoRA tensors only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from spry.config import ConfigError, RunConfig, default_values
from spry.data import DataError, load_text_dataset
from spry.data.pairs import load_pairs, read_pairs
from spry.models.causal_lm import build_causal_lm
from spry.tasks import get
from spry.tasks.base import build_options
from spry.tasks.sft import SFTTask, normalise
from spry.tasks.sft_reviews import KINDS, MAX_WORDS, review_questions
from spry.training import make_client_engine, train_slice
from tests.helpers import tiny_llama
from tests.tasks.test_causal_lm_task import WORDS, word_tokenizer

PAIRS = [
    {"instruction": f"what is {a} plus {b}", "output": c, "kind": k}
    for a, b, c, k in [
        ("two", "three", "five", "sum"),
        ("one", "three", "four", "sum"),
        ("two", "two", "four", "sum"),
        ("one", "one", "two", "small"),
        ("one", "two", "three", "small"),
        ("three", "one", "four", "sum"),
        ("two", "one", "three", "small"),
        ("one", "four", "five", "sum"),
        ("four", "one", "five", "sum"),
        ("three", "two", "five", "sum"),
    ]
]


def write(tmp_path, kind: str, rows=PAIRS):
    frame = pd.DataFrame(rows)
    path = tmp_path / f"pairs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return str(path)


# -- file loaders -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_files_load_as_prompt_response_pairs(tmp_path, kind):
    pairs = read_pairs(write(tmp_path, kind))
    assert pairs.column_names == ["prompt", "response", "kind"]
    assert pairs["prompt"] == [r["instruction"] for r in PAIRS]
    assert pairs["response"] == [r["output"] for r in PAIRS]
    split = load_pairs(write(tmp_path, kind), 0.2)
    assert (len(split.train), len(split.test)) == (8, 2)
    again = load_pairs.__wrapped__(write(tmp_path, kind), 0.2)  # not the cache
    assert split.test["prompt"] == again.test["prompt"]  # a fixed split


def test_named_columns_numbers_and_a_folder(tmp_path):
    rows = [{"q": f"count {i}", "a": i, "id": i} for i in range(4)]
    (tmp_path / "data").mkdir()
    write(tmp_path / "data", "jsonl", rows)
    pairs = read_pairs(str(tmp_path / "data"), "q", "a")
    assert pairs.column_names == ["prompt", "response"]
    assert pairs["response"] == ["0", "1", "2", "3"]  # numbers become text


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_missing_column_fails_in_one_line_naming_the_columns(tmp_path, kind):
    path = write(tmp_path, kind, [{"instruction": "x", "result": "y"}] * 3)
    with pytest.raises(DataError) as error:
        read_pairs(path)
    message = str(error.value)
    assert "\n" not in message
    assert "['instruction', 'result']" in message and "response column" in message
    with pytest.raises(DataError, match=r"'reply'.*\['instruction', 'result'\]"):
        read_pairs(path, response_column="reply")


# -- the offline default ------------------------------------------------------------


def count_words(text: str) -> int:
    """Words as pieces between anything but letters, digits and apostrophes."""
    pieces = re.sub(r"[^\w']|_", " ", text).split()
    return sum(any(c.isalnum() for c in p) for p in pieces)


@pytest.fixture(scope="module")
def reviews():
    return review_questions()


def test_the_offline_answers_are_right(reviews):
    source = load_text_dataset("rotten-tomatoes")
    polarity = {}
    for part in (source.train, source.test):
        for text, label in zip(part["text"], part["label"], strict=True):
            polarity[text] = source.label_names[label]
    checked = dict.fromkeys(KINDS, 0)
    for row in reviews.test:
        review, question = row["prompt"].removeprefix("Review: ").rsplit("\n", 1)
        assert count_words(review) <= MAX_WORDS
        if row["kind"] == "sentiment":
            assert row["response"] == polarity[review]
        elif row["kind"] == "word-count":
            assert row["response"] == str(count_words(review))
        else:
            options = re.fullmatch(
                r"Which of these words appears in the review: (\w+), (\w+) or (\w+)\?",
                question,
            ).groups()
            present = set(re.findall(r"\w+", review.lower()))
            assert [o in present for o in options].count(True) == 1
            assert row["response"] in options and row["response"] in present
        checked[row["kind"]] += 1
    assert min(checked.values()) > 200  # about a third each of 733


def test_the_offline_default_is_fixed_and_partitioned_by_kind(reviews):
    again = review_questions()
    assert again.test["prompt"] == reviews.test["prompt"]
    assert again.train["response"][:50] == reviews.train["response"][:50]
    task = make_sft(
        {"num-clients": 4, "max-train-examples": 300, "max-test-examples": 64}
    )
    assert len(task.test_data()) == 60  # the `test-examples` default caps it
    parts = [task.partition(i) for i in range(4)]
    assert sum(len(p.train) + len(p.held_out) for p in parts) == 300
    shares = [np.mean([k == "sentiment" for k in p.train["kind"]]) for p in parts]
    assert max(shares) - min(shares) > 0.1  # Dirichlet(1) over `kind`: skewed
    prompt, answer = task.example(task.test_data(), 0)
    assert prompt.startswith("Review: ") and prompt.endswith("?\nAnswer:")
    assert answer == " " + task.test_data()[0]["response"]


def test_exact_match_normalisation():
    assert normalise("  Positive.  ") == normalise("positive")
    assert normalise("positive!\nReview: the next one") == "positive"
    assert normalise("\n 12\n") == "12"
    assert normalise("Word  Choice?!") == "word choice"
    assert normalise("negative") != normalise("positive")
    assert normalise("") == ""


def test_options_are_checked():
    with pytest.raises(ConfigError, match="max-new-tokens"):
        build_options(SFTTask, {"max-new-tokens": 0})
    with pytest.raises(ConfigError, match="template"):
        build_options(SFTTask, {"template": "no prompt here"})
    assert get("sft") is SFTTask


# -- on a tiny random Llama ----------------------------------------------------------


class TinySFT(SFTTask):
    """The task on a random 2-layer Llama with a word-level tokenizer."""

    name: ClassVar[str] = "tiny-sft"

    def build_model(self, device: str):
        config = tiny_llama(len(WORDS) + 3)
        trainable = build_causal_lm(
            random_weights=config, seed=self.run.runtime.seed, device=device
        )
        return dataclasses.replace(trainable, tokenizer=word_tokenizer())


def make_sft(values, cls=SFTTask, **options):
    small = {"clients-per-round": 1, "eval-clients-per-round": 1}
    run = RunConfig.from_run_config(
        {**default_values(), **cls.run_defaults, **small, **values, "task": "sft"}
    )
    return cls(run, build_options(cls, {**options}))


def test_a_forward_step_changes_only_lora_tensors_and_evaluation_scores(tmp_path):
    task = make_sft(
        {"dataset": write(tmp_path, "csv"), "num-clients": 1, "batch-size": 4},
        TinySFT,
        template="{prompt} the answer is",
        **{"max-new-tokens": 3},
    )
    trainable = task.model()
    before = {k: v.clone() for k, v in trainable.model.state_dict().items()}
    lora = {trainable.own_name(n) for n in trainable.names}
    assert lora and all("lora_" in name for name in lora)
    report = train_slice(
        trainable,
        list(trainable.names),
        lambda epoch: task.train_batches(trainable, 0, 1, epoch),
        loss=task.loss,
        engine=make_client_engine(task.run.client),  # forward mode, K = 1
        cfg=task.run.client,
        seed=0,
        server_round=1,
        partition_id=0,
    )
    assert report.steps == 2 and math.isfinite(report.mean_loss)
    after = trainable.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= lora
    assert any("lora_B" in k for k in changed)
    scores = task.evaluate(trainable, task.test_data())
    assert scores["num-examples"] == 1 and scores["accuracy"] == scores["exact-match"]
    assert scores["loss"] > 0 and scores["answer-tokens"] == 2
    kinds = {k for k in scores if k.startswith("exact-match-")}
    assert kinds == {f"exact-match-{task.test_data()[0]['kind']}"}


def test_own_pairs_without_a_kind_are_split_iid(tmp_path):
    rows = [{"question": f"q {i}", "answer": f"a {i}"} for i in range(40)]
    task = make_sft({"dataset": write(tmp_path, "jsonl", rows), "num-clients": 2})
    assert len(task.test_data()) == 4  # test-fraction 0.1
    parts = [task.partition(i) for i in range(2)]
    assert [len(p.train) + len(p.held_out) for p in parts] == [18, 18]  # IID
    seen = {r["prompt"] for p in parts for r in (*p.train, *p.held_out)}
    assert len(seen) == 36 and not seen & set(task.test_data()["prompt"])
