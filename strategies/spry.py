"""Spry [Panchal et al., 2024]: forward-mode federated fine-tuning, weights split.

Paper: arxiv.org/abs/2405.15551

Each round the server samples M clients, cuts the trainable tensors into groups and
deals them round-robin, so each client estimates a forward gradient over a small
slice (a much better estimate than one over all weights). Replies are averaged per
tensor over the clients that trained it, weighted by examples, and the server takes
a FedYogi step (FedAdam / plain averaging selectable) on the pseudo-gradient.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from spry import protocol
from spry.aggregation import (
    OptimizerState,
    ServerOptimizer,
    merge_into,
    weighted_mean_per_tensor,
)
from spry.config import ClientConfig, RunConfig
from spry.devices import Fleet
from spry.faults import CRASH, STRAGGLE, TIMEOUT, FaultPlan, InjectedFault
from spry.splitting import (
    assign_groups,
    assign_within_budgets,
    coverage,
    group_tensors,
    sample_clients,
)
from spry.training import replay_local_training, step_generator

from .replies import (
    EVALUATE_METRICS,
    InvalidReply,
    checked_feature_sum,
    checked_metrics,
    checked_report,
    checked_scalars,
    checked_update,
    log_dropped,
    slice_arrays,
)
from .waves import WaveResult

_EVALUATE_STREAM_OFFSET = 1_000_000  # keeps evaluation sampling apart from training
_STATISTICS_STREAM_OFFSET = 2_000_000  # the clients asked for feature statistics
_REASSIGN_STREAM_OFFSET = 3_000_000  # second-wave clients of a round


class RoundFailedError(RuntimeError):
    """Every client of a round failed; the run cannot make progress."""


class Spry(FedAvg):
    """Spry strategy (message API).

    Parameters
    ----------
    partitions : Mapping[int, int]
        Node id -> the data partition it holds (found by asking each node once), so
        sampling depends on the seed and partition ids, never on random node ids.
    clients_per_round : int (default: 10)
        M, clients sampled for training each round.
    eval_clients_per_round : int (default: 10)
        Clients sampled for federated evaluation (0 turns it off).
    split : bool (default: True)
        Deal groups of tensors to clients (Spry). False: every client trains every
        trainable tensor (FedFGD with the forward engine; FedAvg/FedYogi with
        backprop), the same code path with one group.
    group_size : int (default: 2)
        Consecutive trainable tensors per group (2: one LoRA A/B pair).
    shared_names : Sequence[str] (default: ())
        Tensors every client trains in addition to its groups (e.g. the head).
    send_context : bool (default: True)
        Also send the other trainable tensors, read-only, so each client's forward
        pass is the global model's (as in the authors' code). Uploads carry only the
        slice either way.
    optimizer : ServerOptimizer (default: FedYogi, eta 1e-2, b1 0.9, b2 0.99, tau 1e-3)
        The server step on the pseudo-gradient.
    seed : int (default: 0)
        Root seed for client sampling (and the clients' direction seeds).
    upload_scalars : bool (default: False)
        Clients send each local step's K scalars instead of their slice; the server
        rebuilds the slice by replaying `client_cfg`'s optimizer (exact to fp32).
    client_cfg : ClientConfig (default: ClientConfig())
        The clients' local optimizer settings, for that replay.
    run_config : Mapping[str, Any] (default: {})
        Sent to every client in each message's ConfigRecord.
    eval_every : int (default: 1)
        Federated evaluation every this many rounds, and in the last one.
    num_rounds : int (default: 0)
        Rounds in the run (0: unknown), for the last-round evaluation and schedules.
    fleet : Fleet | None (default: None)
        Each partition's device and the clients' memory model: budgeted devices
        are dealt only what fits, and device time is measured time / speed.
    faults : FaultPlan (default: FaultPlan(), none)
        Shares of each wave's clients that crash, time out or straggle.
    deadline : float (default: inf)
        Device-seconds the server waits for a wave; later replies are dropped.
    reassign_orphans : bool (default: True)
        Deal groups whose clients all failed to fresh clients in a second wave.
    wave_timeout : float | None (default: None)
        Wall-clock timeout of a second wave's messages.
    """

    reassigns: bool = True  # whether the strategy can take a second wave

    def __init__(
        self,
        *,
        partitions: Mapping[int, int],
        clients_per_round: int = 10,
        eval_clients_per_round: int = 10,
        split: bool = True,
        group_size: int = 2,
        shared_names: Sequence[str] = (),
        send_context: bool = True,
        optimizer: ServerOptimizer | None = None,
        seed: int = 0,
        upload_scalars: bool = False,
        client_cfg: ClientConfig | None = None,
        run_config: Mapping[str, Any] | None = None,
        eval_every: int = 1,
        num_rounds: int = 0,
        fleet: Fleet | None = None,
        faults: FaultPlan | None = None,
        deadline: float = float("inf"),
        reassign_orphans: bool = True,
        wave_timeout: float | None = None,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0 if eval_clients_per_round else 0.0,
            min_available_nodes=len(partitions),
            weighted_by_key=protocol.NUM_EXAMPLES,
            arrayrecord_key=protocol.ARRAYS,
            configrecord_key=protocol.CONFIG,
        )
        if clients_per_round > len(partitions):
            raise ValueError(
                f"clients_per_round ({clients_per_round}) exceeds the "
                f"{len(partitions)} connected nodes"
            )
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.eval_clients_per_round = min(eval_clients_per_round, len(partitions))
        self.split = split
        self.group_size = group_size
        self.shared_names = tuple(shared_names)
        self.send_context = send_context
        self.optimizer = optimizer or ServerOptimizer()
        self.seed = seed
        self.upload_scalars = upload_scalars
        self.client_cfg = client_cfg or ClientConfig()
        self.eval_every = eval_every
        self.num_rounds = num_rounds
        self.run_config = dict(run_config or {})
        self.fleet = fleet
        self.faults = faults or FaultPlan()
        self.deadline = deadline
        self.reassign_orphans = reassign_orphans and self.reassigns
        self.wave_timeout = wave_timeout
        self.optimizer_state: OptimizerState | None = None
        self.current: dict[str, np.ndarray] = {}
        self.assignment: dict[int, list[str]] = {}  # node id -> its slice this round
        self.round_log: dict[int, dict[str, Any]] = {}
        # This round's groups, names, config, grid, what each node was sent
        # (node -> its injected fault or ""), and the faults by partition.
        self._groups: list[tuple[str, ...]] = []
        self._names: list[str] = []
        self._cfg_record = ConfigRecord()
        self._grid: Grid | None = None
        self._sent: dict[int, str] = {}
        self._faults: dict[int, str] = {}
        self._eligible_nodes: list[int] | None = None
        self._round_started = 0.0
        # The mean pooled feature every client's head subtracts (set before round
        # 1 by the server app when the run centres features).
        self.feature_center: list[float] | None = None
        # Rounds before this one are in the checkpoint a resumed run started from
        self._first_round = 1

    @classmethod
    def from_run(
        cls,
        cfg: RunConfig,
        partitions: Mapping[int, int],
        head: Sequence[str],
        fleet: Fleet | None = None,
    ) -> Spry:
        """The strategy `cfg` describes (`head`: the task head's tensor names)."""
        return cls(**cls._options(cfg, partitions, head), fleet=fleet)

    @classmethod
    def _options(
        cls, cfg: RunConfig, partitions: Mapping[int, int], head: Sequence[str]
    ) -> dict[str, Any]:
        s, sim = cfg.strategy, cfg.simulation
        return {
            "faults": sim.faults(),
            "deadline": sim.round_deadline or cfg.runtime.round_timeout,
            "reassign_orphans": sim.orphan_slices == "reassign",
            "wave_timeout": cfg.runtime.round_timeout,
            "partitions": partitions,
            "clients_per_round": s.clients_per_round,
            "eval_clients_per_round": s.eval_clients_per_round,
            "split": s.split,
            "group_size": s.group_size,
            "shared_names": head if s.share_head else (),
            "send_context": s.send_context,
            "optimizer": ServerOptimizer(
                kind=s.server_optimizer,
                eta=s.eta,
                beta_1=s.beta_1,
                beta_2=s.beta_2,
                tau=s.tau,
            ),
            "seed": cfg.runtime.seed,
            "upload_scalars": s.upload_scalars,
            "client_cfg": cfg.client,
            "run_config": cfg.to_mapping(),
            "eval_every": cfg.runtime.eval_every,
            "num_rounds": cfg.runtime.num_server_rounds,
        }

    # ------------------------------------------------------------------ helpers
    def _sample(
        self,
        server_round: int,
        count: int,
        stream: int,
        population: Sequence[int] | None = None,
    ) -> list[int]:
        """`count` node ids drawn from (seed, round); draw order is deal order.

        `population` (default: every node) must be in partition order.
        """
        nodes = self._by_partition() if population is None else list(population)
        picks = sample_clients(self.seed, stream + server_round, count, len(nodes))
        return [nodes[i] for i in picks]

    def _by_partition(self) -> list[int]:
        return [n for n, _ in sorted(self.partitions.items(), key=lambda kv: kv[1])]

    def _eligible(self) -> list[int]:
        """Nodes whose device can hold the shared tensors and the cheapest group.

        The rest are never sampled for training (they could do no work).
        """
        if self._eligible_nodes is None:
            nodes = self._by_partition()
            if self.fleet is not None and self.fleet.budgeted:
                shared = self._params(self.shared_names)
                cheapest = min(
                    (self.fleet.cost(self._params(g)) for g in self._groups),
                    default=0.0,
                )
                nodes = [
                    n
                    for n in nodes
                    if self.fleet.room(self.partitions[n], shared) >= cheapest
                ]
                log(
                    INFO,
                    "device budgets: %d of %d clients can train a slice",
                    len(nodes),
                    len(self.partitions),
                )
            self._eligible_nodes = nodes
        return self._eligible_nodes

    def _training_nodes(self, server_round: int) -> list[int]:
        """The nodes that train this round, in deal order (eligible ones only)."""
        eligible = self._eligible()
        count = min(self.clients_per_round, len(eligible))
        if not count:
            raise RoundFailedError("no client's device can hold a slice")
        return self._sample(server_round, count, stream=0, population=eligible)

    def _in_partition_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies sorted by partition: float sums must not depend on arrival order."""
        return sorted(
            replies, key=lambda r: self.partitions.get(r.metadata.src_node_id, -1)
        )

    def _config(self, config: ConfigRecord, server_round: int) -> ConfigRecord:
        merged = ConfigRecord({**self.run_config, **dict(config)})
        merged[protocol.SERVER_ROUND] = server_round
        if self.feature_center is not None:
            merged[protocol.FEATURE_CENTER] = self.feature_center
        return merged

    def summary(self) -> None:
        """Log the strategy's settings."""
        log(INFO, "\t├──> %s settings:", type(self).__name__)
        log(
            INFO,
            "\t│\t├── clients per round %d of %d | split %s (groups of %d) | shared %s",
            self.clients_per_round,
            len(self.partitions),
            self.split,
            self.group_size,
            list(self.shared_names) or "none",
        )
        log(
            INFO,
            "\t│\t└── server optimizer %s (eta %g, b1 %g, b2 %g, tau %g)",
            self.optimizer.kind,
            self.optimizer.eta,
            self.optimizer.beta_1,
            self.optimizer.beta_2,
            self.optimizer.tau,
        )

    # ---------------------------------------------------------------- checkpoints
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop; a resumed run skips the rounds before `first_round`.

        Flower's `Strategy.start` has no first round, and a resumed run must keep
        the round numbers (sampling and seeds are functions of them). So the loop
        is Flower's own, unchanged, and for the restored rounds this strategy sends
        nothing and `evaluate_fn` is not called: `initial_arrays` are then the
        checkpoint's weights and round `first_round` is the first that trains.
        """
        self._first_round = first_round
        return super().start(
            grid,
            initial_arrays,
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            _from_round(first_round, evaluate_fn),
        )

    def _restored(self, server_round: int) -> bool:
        """Whether `server_round` ran before the checkpoint this run resumed from."""
        return server_round < self._first_round

    def checkpoint_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What a resumed run needs besides the weights: (arrays, JSON-able state).

        The server optimizer's moments, the feature center and the round log (so
        rounds.json and the summary of a resumed run cover every round). Anything
        else is rebuilt each round from the weights, the seed and the round number.
        """
        arrays: dict[str, np.ndarray] = {}
        if self.optimizer_state is not None:
            for moment, values in self.optimizer_state._asdict().items():
                arrays.update({f"optimizer/{moment}/{k}": v for k, v in values.items()})
        state = {
            "optimizer": self.optimizer_state is not None,
            "feature-center": self.feature_center,
            "round-log": {str(r): entry for r, entry in self.round_log.items()},
        }
        return arrays, state

    def load_checkpoint_state(
        self, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]
    ) -> None:
        """Restore what `checkpoint_state` returned (JSON turned int keys to str)."""
        if state["optimizer"]:
            moments: dict[str, dict[str, np.ndarray]] = {
                m: {} for m in OptimizerState._fields
            }
            for key, value in arrays.items():
                group, _, rest = key.partition("/")
                if group == "optimizer":
                    moment, _, name = rest.partition("/")
                    moments[moment][name] = value
            self.optimizer_state = OptimizerState(**moments)
        self.feature_center = state["feature-center"]
        self.round_log = {}
        for r, entry in state["round-log"].items():
            if "faults" in entry:
                entry = {
                    **entry,
                    "faults": {int(p): k for p, k in entry["faults"].items()},
                }
            self.round_log[int(r)] = entry

    # ------------------------------------------------------------------ training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients, split the trainable tensors, send each node its slice.

        With device budgets a client is dealt only the groups its device can hold;
        with fault injection some sampled clients are told to crash, and the
        messages of those that time out are never delivered.
        """
        if self._restored(server_round):
            log(INFO, "configure_train: round %d is in the checkpoint", server_round)
            return []
        self._round_started = time.perf_counter()
        self.current = {name: array.numpy() for name, array in arrays.items()}
        if self.optimizer_state is None:
            self.optimizer_state = self.optimizer.init(self.current)
        names = list(arrays.keys())
        unknown_shared = sorted(set(self.shared_names) - set(names))
        if unknown_shared:
            raise ValueError(f"shared tensors not in the model: {unknown_shared}")
        self._groups = group_tensors(
            names, self.shared_names, self.group_size, self.split
        )
        self._grid, self._names = grid, names
        self._cfg_record = self._config(config, server_round)
        nodes = self._training_nodes(server_round)
        self.assignment = self._assign(self._groups, nodes)
        messages = self._wave_messages(server_round, 0, self.assignment)
        over_budget = [self.partitions[n] for n in nodes if n not in self.assignment]
        self.round_log[server_round] = {
            "sampled-partitions": [self.partitions[n] for n in nodes],
            "coverage-assigned": coverage(self.assignment, names),
            "over-budget": len(over_budget),
            "faults": dict(sorted(self._faults.items())),
        }
        log(
            INFO,
            "configure_train: %d clients (partitions %s), %d tensors in %d groups%s",
            len(nodes),
            self.round_log[server_round]["sampled-partitions"],
            len(names),
            len(self._groups),
            f"; over budget, not sent work: {over_budget}" if over_budget else "",
        )
        return messages

    def _params(self, names: Iterable[str]) -> int:
        """Parameters in the tensors `names`."""
        return sum(int(np.asarray(self.current[n]).size) for n in names)

    def _assign(
        self, groups: list[tuple[str, ...]], nodes: list[int]
    ) -> dict[int, list[str]]:
        """Deal `groups` to `nodes`, within their devices' memory when budgeted."""
        if self.fleet is None or not self.fleet.budgeted:
            return assign_groups(groups, nodes, shared=self.shared_names)
        shared = self._params(self.shared_names)
        room = {n: self.fleet.room(self.partitions[n], shared) for n in nodes}
        cost = [self.fleet.cost(self._params(g)) for g in groups]
        return assign_within_budgets(
            groups, nodes, room=room, cost=cost, shared=self.shared_names
        )

    def _wave_messages(
        self, server_round: int, wave: int, assignment: dict[int, list[str]]
    ) -> list[Message]:
        """Messages for one wave; draws its faults (timeouts are not sent)."""
        partitions = [self.partitions[n] for n in assignment]
        faults = self.faults.draw(self.seed, server_round, wave, partitions)
        by_node = {
            n: faults[self.partitions[n]]
            for n in assignment
            if self.partitions[n] in faults
        }
        self._sent = dict.fromkeys(assignment, "") | by_node
        self._faults = faults if wave == 0 else {**self._faults, **faults}
        messages = []
        for node_id, owned in assignment.items():
            if by_node.get(node_id) == TIMEOUT:
                continue  # lost on the way: the server hears nothing back
            content = self._train_content(
                server_round, node_id, owned, self._names, self._cfg_record
            )
            if by_node.get(node_id) == CRASH:
                content[protocol.CONFIG][protocol.FAULT] = CRASH
            messages.append(
                Message(
                    content=content,
                    message_type=MessageType.TRAIN,
                    dst_node_id=node_id,
                    group_id=str(server_round),  # as Flower's FedAvg; replies copy it
                )
            )
        return messages

    def _train_content(
        self,
        server_round: int,
        node_id: int,
        owned: list[str],
        names: list[str],
        cfg: ConfigRecord,
    ) -> RecordDict:
        """What a node is sent to train: its slice, the config, the read-only rest."""
        content = RecordDict(
            {
                protocol.ARRAYS: slice_arrays(self.current, owned),
                protocol.CONFIG: ConfigRecord(
                    {**dict(cfg), protocol.TRAINABLE_NAMES: owned}
                ),
            }
        )
        if self.send_context:
            rest = [n for n in names if n not in set(owned)]
            content[protocol.CONTEXT] = slice_arrays(self.current, rest)
        return content

    def _contribution(
        self, server_round: int, node_id: int, reply: Message
    ) -> tuple[dict[str, np.ndarray], float, MetricRecord, int]:
        """(trained slice, weight, metrics, bytes uploaded) of a valid reply.

        With scalar uploads the slice is rebuilt by replaying the client's local
        optimizer on the gradients its seeds and scalars define.
        """
        owned = self.assignment[node_id]
        partition = self.partitions[node_id]
        if not self.upload_scalars:
            tensors, weight, metrics = checked_update(
                reply, expected_names=owned, current=self.current, partition=partition
            )
            return tensors, weight, metrics, sum(t.nbytes for t in tensors.values())
        scalars, weight, metrics = checked_scalars(
            reply, num_tangents=self.client_cfg.num_tangents, partition=partition
        )
        generators = (
            step_generator(self.seed, server_round, partition, step)
            for step in range(len(scalars))
        )
        tensors = replay_local_training(
            {n: self.current[n] for n in owned}, scalars, generators, self.client_cfg
        )
        return tensors, weight, metrics, scalars.nbytes

    def _step(
        self,
        server_round: int,
        contributions: list[tuple[dict[str, np.ndarray], float]],
    ) -> dict[str, np.ndarray]:
        """Per-tensor weighted mean of the trained slices, then the server step."""
        aggregate = weighted_mean_per_tensor(contributions)
        assert self.optimizer_state is not None
        new, self.optimizer_state = self.optimizer.update(
            self.current, merge_into(self.current, aggregate), self.optimizer_state
        )
        return new

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per-tensor weighted mean over valid replies, then the server step.

        Groups left untrained because every client holding them failed are dealt
        again, in a second wave, to clients not sampled this round (when
        `reassign_orphans`), or skipped; either way the round log says which.
        """
        if self._restored(server_round):
            return None, None
        result = self._collect(server_round, replies)
        entry = self.round_log.setdefault(server_round, {})
        orphans = self._orphans(result)
        entry["orphan-groups"] = len(orphans)
        entry["reassigned-groups"] = 0
        if orphans and self.reassign_orphans:
            second = self._reassign(
                server_round, orphans, len(result.dropped), set(self.assignment)
            )
            if second is not None:
                result = result.merge(second)
                entry["reassigned-groups"] = len(orphans) - len(self._orphans(result))
        if orphans:
            log(
                INFO,
                "aggregate_train: %d group(s) lost every client; %s",
                len(orphans),
                f"reassigned {entry['reassigned-groups']} in a second wave"
                if self.reassign_orphans
                else "skipped this round",
            )
        drops = result.drop_counts()
        entry["dropped"] = len(result.dropped)
        entry.update({f"dropped-{kind}": count for kind, count in drops.items()})
        who = {n: f"partition {p}" for n, p in self.partitions.items()}
        entry["rejected"] = {
            who.get(n, f"node {n}"): why for n, why in result.rejected.items()
        }
        entry["device-seconds"] = result.device_seconds
        entry["peaks"] = [(self.partitions[n], *rest) for n, *rest in result.peaks]
        if result.errors and len(result.errors) == len(self.assignment):
            # Every client crashed: a bug or a broken setup, not bad luck. Stop the
            # run with the first traceback instead of silently training nothing.
            raise RoundFailedError(
                f"round {server_round}: all {len(result.errors)} clients failed; "
                f"first error: {result.errors[0]}"
            )
        if not result.contributions:
            entry["coverage-trained"] = 0.0
            log(INFO, "aggregate_train: no valid replies; the model is unchanged")
            return None, None
        trained = {name for tensors, _ in result.contributions for name in tensors}
        entry["coverage-trained"] = len(trained) / len(self.current)
        new = self._step(server_round, result.contributions)
        metrics = _train_metrics(result.accepted)
        metrics["upload-bytes-mean"] = sum(result.uploaded) / len(result.uploaded)
        entry["train"] = dict(metrics)
        # Sending, the clients' work, receiving and aggregating: the wall time a
        # round's training takes in whatever runs the clients.
        entry["train-wall-seconds"] = time.perf_counter() - self._round_started
        return ArrayRecord({k: Array(v) for k, v in new.items()}), metrics

    def _collect(self, server_round: int, replies: Iterable[Message]) -> WaveResult:
        """Classify one wave's replies against what `_sent` says was sent."""
        result = WaveResult()
        replies = self._in_partition_order(replies)
        counts = Counter(reply.metadata.src_node_id for reply in replies)
        answered: set[int] = set()
        slowest, waited = 0.0, False
        for reply in replies:
            node_id = reply.metadata.src_node_id
            answered.add(node_id)
            partition = self.partitions.get(node_id)
            fault = self._sent.get(node_id, "")
            if reply.has_error():
                reason = reply.error.reason
                kind = CRASH if InjectedFault.MARKER in reason else "error"
                if kind == "error":
                    result.errors.append(reason)
                result.dropped[node_id] = kind
                log_dropped(node_id, partition, f"client error: {_gist(reason)}")
                continue
            try:
                self._check_sender(server_round, reply, counts[node_id])
                tensors, weight, metrics, nbytes = self._contribution(
                    server_round, node_id, reply
                )
            except InvalidReply as reason:
                result.dropped[node_id] = "invalid"
                result.rejected[node_id] = str(reason)
                log_dropped(
                    node_id, partition, f"invalid reply: {reason}", server_round
                )
                continue
            seconds = self._device_seconds(node_id, metrics, fault)
            if seconds > self.deadline:
                result.dropped[node_id] = "late"
                waited = True
                log_dropped(
                    node_id,
                    partition,
                    f"late: {seconds:.1f} device-s > deadline {self.deadline:g} s",
                )
                continue
            slowest = max(slowest, seconds)
            result.contributions.append((tensors, weight))
            result.accepted.append(RecordDict({protocol.METRICS: metrics}))
            result.uploaded.append(nbytes)
            result.peaks.append(
                (
                    node_id,
                    len(self.assignment.get(node_id, [])),
                    int(metrics.get(protocol.PEAK_MEM_BYTES, 0)),
                    int(metrics.get(protocol.PEAK_MEM_TOTAL_BYTES, 0)),
                    self._predicted_bytes(node_id),
                )
            )
        for node_id in self._sent:
            if node_id not in answered:
                result.dropped[node_id] = "timeout"
                waited = True
                log_dropped(node_id, self.partitions[node_id], "no reply (timeout)")
        result.device_seconds = self.deadline if waited else slowest
        return result

    def _check_sender(self, server_round: int, reply: Message, replies: int) -> None:
        """Only a node sent a slice this wave may write it, once, for this round.

        Flower's engine already routes replies to their instruction; this holds
        when it does not (hand-built or replayed messages). An empty group id (a
        hand-built reply) is not a round.
        """
        if reply.metadata.src_node_id not in self._sent:
            raise InvalidReply("node was not sent a slice this round")
        if replies > 1:
            raise InvalidReply(f"{replies} replies from one node (one expected)")
        group = reply.metadata.group_id
        if group and group != str(server_round):
            raise InvalidReply(f"reply for round {group}, this is round {server_round}")

    def _predicted_bytes(self, node_id: int) -> float | None:
        """The memory model's peak for the slice `node_id` was sent (None: none)."""
        if self.fleet is None:
            return None
        owned = self.assignment.get(node_id, [])
        return self.fleet.predicted_bytes(self._params(owned))

    def _device_seconds(self, node_id: int, metrics: MetricRecord, fault: str) -> float:
        """How long the client's work would take on its device."""
        seconds = float(metrics.get(protocol.TRAIN_SECONDS, 0.0))
        if self.fleet is not None:
            seconds /= self.fleet.profiles[self.partitions[node_id]].speed
        if fault == STRAGGLE:
            seconds *= self.faults.straggle_factor
        return seconds

    def _orphans(self, result: WaveResult) -> list[tuple[str, ...]]:
        """Groups of this round that no accepted reply trained."""
        trained = {name for tensors, _ in result.contributions for name in tensors}
        assigned = {n for owned in self.assignment.values() for n in owned}
        return [g for g in self._groups if set(g) <= assigned and not set(g) <= trained]

    def _reassign(
        self,
        server_round: int,
        orphans: list[tuple[str, ...]],
        failed: int,
        exclude: set[int],
    ) -> WaveResult | None:
        """Deal `orphans` to as many fresh clients as `failed`, in a second wave.

        None when no eligible client is left to take them.
        """
        spare = [n for n in self._eligible() if n not in exclude]
        count = min(failed, len(spare))
        if not count or self._grid is None:
            return None
        picks = sample_clients(
            self.seed, _REASSIGN_STREAM_OFFSET + server_round, count, len(spare)
        )
        nodes = [spare[i] for i in picks]
        assignment = self._assign(orphans, nodes)
        if not assignment:
            return None
        self.assignment.update(assignment)
        messages = self._wave_messages(server_round, 1, assignment)
        log(
            INFO,
            "reassign: %d orphaned group(s) to partitions %s",
            len(orphans),
            [self.partitions[n] for n in assignment],
        )
        replies = self._grid.send_and_receive(messages, timeout=self.wave_timeout)
        return self._collect(server_round, replies)

    # ---------------------------------------------------------------- statistics
    def estimate_feature_center(
        self, grid: Grid, config: ConfigRecord, timeout: float | None = None
    ) -> int:
        """Set `feature_center` to the mean pooled feature of a seeded client sample.

        Each sampled client returns the sum and count of its training examples'
        pooled features under the initial model; the center is the pooled mean,
        sent with every later message. Returns the number of examples it used.
        """
        nodes = self._sample(
            0, self.clients_per_round, stream=_STATISTICS_STREAM_OFFSET
        )
        content = RecordDict({protocol.CONFIG: self._config(config, 0)})
        kind = f"{MessageType.QUERY}.{protocol.FEATURE_STATS}"
        messages = [
            Message(content=content, message_type=kind, dst_node_id=n) for n in nodes
        ]
        sums: dict[int, tuple[np.ndarray, int]] = {}
        for reply in self._in_partition_order(
            grid.send_and_receive(messages, timeout=timeout)
        ):
            node = reply.metadata.src_node_id
            try:
                sums[node] = checked_feature_sum(reply, self.partitions.get(node))
            except InvalidReply as reason:
                log_dropped(node, self.partitions.get(node), str(reason))
        # The model's width is what most clients agree on; a lone odd one is dropped
        widths = Counter(part.shape for part, _ in sums.values())
        width = widths.most_common(1)[0][0] if widths else None
        total, count = None, 0
        for node, (part, examples) in sums.items():
            if part.shape != width:
                log_dropped(
                    node,
                    self.partitions.get(node),
                    f"feature sum of shape {part.shape}, most clients sent {width}",
                )
                continue
            total = part if total is None else total + part
            count += examples
        if total is None or count == 0:
            raise RuntimeError(
                "no client returned feature statistics; cannot centre the features"
            )
        self.feature_center = (total / count).astype(np.float32).tolist()
        log(INFO, "feature center: mean pooled feature of %d examples", count)
        return count

    def task_reports(
        self, grid: Grid, arrays: ArrayRecord, timeout: float | None = None
    ) -> list[dict[str, float]]:
        """Every client's task report on the final model `arrays`, in partition order.

        What a task shares instead of (or besides) weights: numbers a client computes
        on its private data (`Task.report`). Failed clients are logged and left out.
        """
        content = RecordDict(
            {protocol.ARRAYS: arrays, protocol.CONFIG: self._config(ConfigRecord(), 0)}
        )
        kind = f"{MessageType.QUERY}.{protocol.TASK_REPORT}"
        messages = [
            Message(content=content, message_type=kind, dst_node_id=n)
            for n in self._by_partition()
        ]
        log(INFO, "task report: asking all %d clients", len(messages))
        reports = []
        for reply in self._in_partition_order(
            grid.send_and_receive(messages, timeout=timeout)
        ):
            node = reply.metadata.src_node_id
            try:
                reports.append(checked_report(reply, self.partitions.get(node)))
            except InvalidReply as reason:
                log_dropped(node, self.partitions.get(node), str(reason))
        return reports

    # ---------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the full trainable state to a seeded sample of clients."""
        if self._restored(server_round):
            return []
        last = server_round == self.num_rounds
        if not self.eval_clients_per_round or (
            server_round % self.eval_every and not last
        ):
            return []
        nodes = self._sample(
            server_round, self.eval_clients_per_round, stream=_EVALUATE_STREAM_OFFSET
        )
        content = RecordDict(
            {
                protocol.ARRAYS: arrays,
                protocol.CONFIG: self._config(config, server_round),
            }
        )
        return [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n)
            for n in nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted mean of client metrics (empty held-out sets skip)."""
        usable = []
        for reply in self._in_partition_order(replies):
            if reply.has_error():
                log_dropped(reply.metadata.src_node_id, None, reply.error.reason)
                continue
            metrics = reply.content.metric_records.get(protocol.METRICS)
            if not metrics or metrics.get(protocol.NUM_EXAMPLES) == 0:
                continue  # no held-out examples on this client
            node_id = reply.metadata.src_node_id
            try:
                checked_metrics(
                    metrics, self.partitions.get(node_id), known=EVALUATE_METRICS
                )
            except InvalidReply as reason:
                log_dropped(
                    node_id,
                    self.partitions.get(node_id),
                    f"invalid evaluation reply: {reason}",
                    server_round,
                )
                continue
            usable.append(RecordDict({protocol.METRICS: metrics}))
        if not usable:
            return None
        metrics = aggregate_metricrecords(usable, protocol.NUM_EXAMPLES)
        self.round_log.setdefault(server_round, {})["federated-evaluate"] = dict(
            metrics
        )
        return metrics


def _from_round(
    first_round: int,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
) -> Callable[[int, ArrayRecord], MetricRecord | None] | None:
    """`evaluate_fn`, not called for the rounds before `first_round`."""
    if evaluate_fn is None or first_round <= 1:
        return evaluate_fn
    evaluate = evaluate_fn

    def resumed(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        return None if server_round < first_round else evaluate(server_round, arrays)

    return resumed


def _gist(reason: str) -> str:
    """The line of a client's error that says what went wrong (not the stack)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Message:" in line:
            return line.split("Message:", 1)[1].strip()[:300]
    return lines[-1][:300] if lines else "(no reason given)"


def _train_metrics(records: list[RecordDict]) -> MetricRecord:
    """Weighted mean of losses and times; max of peak memory; total examples."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    # The loss's weighted mean over the replies that report one (all keys were
    # checked: numbers, finite, known; a reply may leave optional ones out).
    losses = [
        (float(m[protocol.TRAIN_LOSS]), float(m[protocol.NUM_EXAMPLES]))
        for m in metrics
        if protocol.TRAIN_LOSS in m
    ]
    loss = sum(v * w for v, w in losses) / sum(w for _, w in losses) if losses else 0.0
    summary = MetricRecord(
        {
            protocol.TRAIN_LOSS: loss,
            "train-seconds-max": max(
                float(m.get(protocol.TRAIN_SECONDS, 0.0)) for m in metrics
            ),
            "peak-mem-bytes-max": max(
                int(m.get(protocol.PEAK_MEM_BYTES, 0)) for m in metrics
            ),
            "peak-mem-total-bytes-max": max(
                int(m.get(protocol.PEAK_MEM_TOTAL_BYTES, 0)) for m in metrics
            ),
            "clients": len(metrics),
            "forward-passes": sum(
                int(m.get(protocol.FORWARD_PASSES, 0)) for m in metrics
            ),
            protocol.NUM_EXAMPLES: sum(int(m[protocol.NUM_EXAMPLES]) for m in metrics),
        }
    )
    return summary
