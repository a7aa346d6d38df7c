"""Rounds that share text, not weights (`server.text_rounds`).

The round loop runs in-process against the real ClientApp: a loopback grid hands
each message to `clients.client_app.app` on the node it is addressed to, as the
simulation engine would, and returns the replies. The toy task pools the words
each client knows (tests/tasks/toy_text_task.py), so the shared text after a
round is known exactly: the union of what the sampled clients hold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)

from clients.client_app import app
from server.text_rounds import run_text_rounds, weighted_means
from spry import protocol
from spry.tasks import TextReply, load_task, register
from strategies import Spry
from strategies.replies import MAX_TEXT_CHARS, InvalidReply, checked_text_reply
from tests.helpers import SMALL_RUN_NODES as PARTITIONS
from tests.helpers import _metadata, answer, small_run
from tests.tasks.toy_text_task import client_words

pytestmark = pytest.mark.usefixtures("server_identity")


class LoopbackGrid:
    """Delivers each message to the real ClientApp of its node; `tamper` edits."""

    def __init__(self, tamper=None) -> None:
        self.tamper = tamper
        self.sent: list[Message] = []

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            self.sent.append(message)
            reply = answer(app, message, PARTITIONS, len(PARTITIONS))
            replies.append(self.tamper(reply) if self.tamper else reply)
        return replies


def _facts_run(rounds: int = 2, **settings):
    register("toy-facts", "tests.tasks.toy_text_task:FactsTask")
    return small_run(task="toy-facts", num_server_rounds=rounds, **settings)


def test_weighted_means_follow_the_formula():
    replies = [
        TextReply({"num-examples": 1.0, "score": 0.0, "only-a": 5.0}, {}),
        TextReply({"num-examples": 3.0, "score": 1.0}, {}),
    ]
    means = weighted_means(replies)
    assert means == {"num-examples": 4.0, "score": 0.75, "only-a": 5.0}
    # no examples anywhere: plain means
    assert weighted_means([TextReply({"num-examples": 0.0, "s": 2.0}, {})]) == {
        "num-examples": 0.0,
        "s": 2.0,
    }


def test_rounds_pool_the_sampled_clients_text_and_evaluate_each_round(monkeypatch):
    cfg = _facts_run(rounds=2)
    task = load_task(cfg)
    strategy = Spry.from_run(cfg, PARTITIONS, [])
    grid = LoopbackGrid()
    scores: dict[int, float] = {}

    def evaluate(server_round: int) -> None:
        scores[server_round] = task.evaluate(task.model(), task.test_data())["accuracy"]

    run_text_rounds(grid, cfg, task, strategy, evaluate)

    expected: set[str] = set()
    for server_round in (1, 2):
        entry = strategy.round_log[server_round]
        sampled = entry["sampled-partitions"]
        assert len(sampled) == 2 and entry["train"]["clients"] == 2
        for partition in sampled:
            expected.update(client_words(partition, 3))
        assert entry["shared-text-lines"] == {"facts": len(expected)}
        # each round's message carried the text merged so far, nothing else
        sent = grid.sent[2 * (server_round - 1)].content
        assert not sent.array_records
        assert len(sent[protocol.TEXT]["facts"]) == (
            0
            if server_round == 1
            else strategy.round_log[1]["shared-text-lines"]["facts"]
        )
    assert task.shared_text == {"facts": sorted(expected)}
    assert scores[0] == 0.0 and scores[1] == 0.5
    assert scores[2] == len(expected) / 12
    # round 1 knew nothing: every client's words were new
    assert strategy.round_log[1]["train"]["known-share"] == 0.0


def test_a_bad_reply_is_dropped_and_the_round_goes_on():
    cfg = _facts_run(rounds=1)
    task = load_task(cfg)
    strategy = Spry.from_run(cfg, PARTITIONS, [])
    calls = {"n": 0}

    def poison_first(reply: Message) -> Message:
        calls["n"] += 1
        if calls["n"] == 1:
            reply.content[protocol.TEXT]["facts"] = [str(i) for i in range(3)] + [
                "x" * MAX_TEXT_CHARS
            ]
        return reply

    run_text_rounds(LoopbackGrid(poison_first), cfg, task, strategy, lambda r: None)
    entry = strategy.round_log[1]
    assert entry["train"]["clients"] == 1 and entry["dropped"] == 1
    (reason,) = entry["rejected"].values()
    assert "characters of text" in reason
    assert len(task.shared_text["facts"]) == 3  # only the honest client's words


def _text_reply(metrics, text, arrays=False) -> Message:
    content = RecordDict(
        {protocol.METRICS: MetricRecord(metrics), protocol.TEXT: ConfigRecord(text)}
    )
    if arrays:
        content["arrays"] = ArrayRecord({"w": Array(np.zeros(2))})
    return Message(content=content, metadata=_metadata(10, "query.text_round"))


@pytest.mark.parametrize(
    ("metrics", "text", "arrays", "match"),
    [
        ({"score": 1.0}, {}, False, "num-examples"),
        ({"num-examples": -1}, {}, False, "num-examples"),
        ({"num-examples": 1, "s": math.inf}, {}, False, "is inf"),
        ({"num-examples": 1}, {"tips": [1, 2]}, False, "list of strings"),
        ({"num-examples": 1}, {}, True, "nothing else"),
        ({"num-examples": 1, "partition-id": 3}, {}, False, "partition"),
    ],
)
def test_text_replies_are_checked(metrics, text, arrays, match):
    with pytest.raises(InvalidReply, match=match):
        checked_text_reply(_text_reply(metrics, text, arrays), partition=0)


def test_an_honest_text_reply_passes_without_its_partition_claim():
    reply = _text_reply({"num-examples": 2, "partition-id": 0}, {"tips": ["a", "b"]})
    checked = checked_text_reply(reply, partition=0)
    assert checked == TextReply({"num-examples": 2.0}, {"tips": ["a", "b"]})
