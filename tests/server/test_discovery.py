"""Partition discovery: the server learns which node holds which partition, or stops.

Node ids are random and partition ids are not, so before the first round the server
asks every node which partition it holds (`discover_partitions`). A federation that
is not the one the config describes (too few or too many nodes, a node that fails,
another partition count, a partition held twice or by nobody) must stop the run
with a line naming the problem, before any training.

The nodes here are the project's real ClientApp, each with its own node config; the
transport between server and nodes is an in-memory stand-in for Flower's Grid (the
real engine's transport is exercised end to end in tests/integration/).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from clients.client_app import app
from server.server_app import DiscoveryError, discover_partitions
from spry import protocol

pytestmark = pytest.mark.usefixtures("server_identity")

NodeConfig = Mapping[str, int]


class InMemoryGrid:
    """What `discover_partitions` uses of Flower's `Grid`, delivered in memory.

    Each message goes to the real ClientApp with its node's `Context`; an exception
    there becomes the error reply Flower's simulation engine sends (vce_api.py).

    Parameters
    ----------
    nodes : Mapping[int, NodeConfig]
        Node id -> its node config (`partition-id`, `num-partitions`).
    arrivals : Sequence[int] (default: all nodes at once)
        How many nodes are connected at each successive `get_node_ids` call (the
        last count holds from then on).
    """

    def __init__(
        self, nodes: Mapping[int, NodeConfig], arrivals: Sequence[int] = ()
    ) -> None:
        self.nodes = dict(nodes)
        self.arrivals = list(arrivals) or [len(nodes)]
        self.polls = 0
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        connected = self.arrivals[min(self.polls, len(self.arrivals) - 1)]
        self.polls += 1
        return list(self.nodes)[:connected]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            context = Context(
                run_id=1,
                node_id=node_id,
                node_config=dict(self.nodes[node_id]),
                state=RecordDict(),
                run_config={},
            )
            try:
                reply = app(message, context)
            except Exception as error:  # noqa: BLE001 (Flower reports any)
                reason = f"{type(error)}:<'{error}'>"
                error_record = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
                reply = Message(error_record, reply_to=message)
            replies.append(reply)
        return replies


def _nodes(*partitions: int, num_partitions: int = 3) -> dict[int, NodeConfig]:
    """Nodes with random-looking ids holding `partitions`, in that order."""
    ids = (9011, 42, 7305, 118, 5)
    return {
        node: {protocol.PARTITION_ID: p, protocol.NUM_PARTITIONS: num_partitions}
        for node, p in zip(ids, partitions, strict=False)
    }


def test_each_node_is_mapped_to_the_partition_it_reports():
    grid = InMemoryGrid(_nodes(2, 0, 1))

    partitions = discover_partitions(grid, 3, timeout=1.0)

    assert partitions == {9011: 2, 42: 0, 7305: 1}
    # One describe query for each node
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [42, 7305, 9011]
    assert {m.metadata.message_type for m in grid.sent} == {
        f"query.{protocol.DESCRIBE}"
    }


def test_the_server_waits_for_nodes_that_connect_late():
    grid = InMemoryGrid(_nodes(0, 1, 2), arrivals=[1, 2, 3])

    partitions = discover_partitions(grid, 3, timeout=30.0)

    assert sorted(partitions.values()) == [0, 1, 2]
    assert grid.polls == 3


def test_too_few_nodes_after_the_timeout_stop_the_run():
    grid = InMemoryGrid(_nodes(0, 1))

    with pytest.raises(DiscoveryError, match=r"only 2 of 3 nodes connected after"):
        discover_partitions(grid, 3, timeout=0.01)
    assert grid.sent == []  # nobody was asked anything


def test_more_nodes_than_the_config_says_stop_the_run():
    grid = InMemoryGrid(_nodes(0, 1, 2, 3, num_partitions=4))

    with pytest.raises(DiscoveryError, match=r"4 nodes connected, config says 3"):
        discover_partitions(grid, 3, timeout=1.0)
    assert grid.sent == []


def test_a_node_that_fails_to_answer_is_named():
    nodes = _nodes(0, 1, 2)
    del nodes[42][protocol.PARTITION_ID]  # a SuperNode started without its partition

    with pytest.raises(DiscoveryError, match=r"node 42: .*KeyError.*partition-id"):
        discover_partitions(InMemoryGrid(nodes), 3, timeout=1.0)


def test_a_node_of_another_partition_count_is_named():
    nodes = _nodes(0, 1, 2)
    nodes[7305] = {protocol.PARTITION_ID: 2, protocol.NUM_PARTITIONS: 5}

    with pytest.raises(
        DiscoveryError, match=r"node 7305 holds one of 5 partitions; config says 3"
    ):
        discover_partitions(InMemoryGrid(nodes), 3, timeout=1.0)


@pytest.mark.parametrize(
    ("held", "listed"),
    [((0, 1, 1), r"\[0, 1, 1\]"), ((0, 1, 5), r"\[0, 1, 5\]")],
    ids=["a partition held twice", "a partition held by nobody"],
)
def test_partitions_must_be_each_held_once(held, listed):
    grid = InMemoryGrid(_nodes(*held))

    with pytest.raises(
        DiscoveryError, match=rf"expected partitions 0..2 once each, got {listed}"
    ):
        discover_partitions(grid, 3, timeout=1.0)
