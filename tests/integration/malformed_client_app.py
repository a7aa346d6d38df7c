"""The real ClientApp, except that some clients send malformed training replies.

For the end-to-end test of the server's reply validation: partition p in round r
sends kind number (r - 1) * LIARS + p of tests/malformed.py's twenty, while that
number is below twenty and p < LIARS; every other client is the real one. The
malformed reply is built from the slice the client was sent (no training), so
three rounds of eight clients carry all twenty kinds through Flower's engine.
Everything else (describe, feature statistics, evaluation, reports) is the real
app's own handler.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import client_app as real
from spry import protocol
from tests.malformed import KINDS, Kind

LIARS = 7  # partitions 0..6 may lie; partition 7 (and up) is always honest


def kind_for(server_round: int, partition: int) -> Kind | None:
    """The kind partition `partition` sends in `server_round` (None: honest)."""
    slot = (server_round - 1) * LIARS + partition
    return KINDS[slot] if partition < LIARS and slot < len(KINDS) else None


def _malform(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    partition = int(context.node_config[protocol.PARTITION_ID])
    fields = msg.content[protocol.CONFIG]
    kind = kind_for(int(fields[protocol.SERVER_ROUND]), partition)
    if kind is None:
        return call_next(msg, context)
    sent = {name: a.numpy() for name, a in msg.content[protocol.ARRAYS].items()}
    honest = {
        protocol.NUM_EXAMPLES: 4,
        protocol.TRAIN_LOSS: 0.5,
        protocol.TRAIN_SECONDS: 0.01,
        protocol.PARTITION_ID: partition,
    }
    return Message(kind.corrupt(sent, honest), reply_to=msg)


app = ClientApp()
app.train(mods=[_malform])(real.train)
app.evaluate()(real.evaluate)
app.query(protocol.DESCRIBE)(real.describe)
app.query(protocol.FEATURE_STATS)(real.feature_stats)
app.query(protocol.TASK_REPORT)(real.task_report)
