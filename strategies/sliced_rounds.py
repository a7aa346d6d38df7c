"""Sampled, sliced rounds: the round that Spry and the FedSGD family share.

Each round: sample clients by (seed, round), cut the trainable tensors into groups,
deal them, send each client its slice (`configure_train`); then check every reply
against what was sent, average per tensor and take the server step
(`aggregate_train`); evaluate on a seeded sample (`configure_evaluate`). What a
client is sent besides its slice, what a reply contributes and the server step are
the algorithm's own (`_train_content`, `_contribution`, `_step`: `spry.py`,
`fedsgd.py`), as Flower's FedOpt builds on FedAvg.

Three parts are injected by the ServerApp (`server/`), each behind a small
protocol in `parts.py` with a do-nothing default, so a strategy built by hand is
the plain algorithm: a `Dealer` (device budgets: who can train what, device time),
a `Faults` policy (injected crashes, timeouts, stragglers, the deadline) and a
`SecondWave` (groups whose clients all failed, dealt again). Resuming and the
queries outside the rounds wrap or call a strategy from outside it
(`server/resume.py`, `server/queries.py`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from logging import INFO
from typing import Any, ClassVar

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
from flwr.serverapp.strategy import Strategy

from spry import protocol
from spry.aggregation import OptimizerState, ServerOptimizer
from spry.config import ClientConfig, ConfigError, Options, RunConfig, build_options
from spry.faults import CRASH, InjectedFault
from spry.seeding import SAMPLE_EVALUATE, SAMPLE_TRAIN
from spry.splitting import coverage, group_tensors
from spry.training import make_client_engine

from .parts import Dealer, Faults, NoFaults, RoundRobin, SecondWave
from .replies import (
    EVALUATE_METRICS,
    EmptyReply,
    InvalidReply,
    checked_metrics,
    log_dropped,
    log_empty,
    slice_arrays,
)
from .strategy_utils import (
    by_partition,
    evaluate_metrics,
    gist,
    in_partition_order,
    sample_nodes,
    train_metrics,
)
from .waves import WaveResult

Contributions = list[tuple[dict[str, np.ndarray], float]]


class RoundFailedError(RuntimeError):
    """Every client of a round failed; the run cannot make progress."""


class SlicedRounds(Strategy):
    """Sampled, sliced rounds (message API); the algorithm fills in three hooks.

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
        Deal groups of tensors to clients. False: every client trains every
        trainable tensor, the same code path with one group.
    group_size : int (default: 2)
        Consecutive trainable tensors per group (2: one LoRA A/B pair).
    shared_names : Sequence[str] (default: ())
        Tensors every client trains in addition to its groups (e.g. the head).
    send_context : bool (default: True)
        Also send the other trainable tensors, read-only, so each client's forward
        pass is the global model's. Uploads carry only the slice either way.
    optimizer : ServerOptimizer (default: FedYogi, eta 1e-2, b1 0.9, b2 0.99, tau 1e-3)
        The server step on the pseudo-gradient.
    seed : int (default: 0)
        Root seed for client sampling (and the clients' direction seeds).
    upload_scalars : bool (default: False)
        Clients upload the scalars of a directional engine instead of the slice.
    client_cfg : ClientConfig (default: ClientConfig())
        The clients' settings, for rebuilding scalar uploads; with its
        `tangent_guess` > 0 the last global update is kept and each client is
        sent its slice of it (`protocol.GUESS`), the direction its tangents
        lean toward.
    run_config : Mapping[str, Any] (default: {})
        Sent to every client in each message's ConfigRecord.
    eval_every : int (default: 1)
        Federated evaluation every this many rounds, and in the last one.
    num_rounds : int (default: 0)
        Rounds in the run (0: unknown), for the last-round evaluation and schedules.
    dealer : Dealer (default: RoundRobin())
        Device budgets (`server.budgets.BudgetDealer`).
    faults : Faults (default: NoFaults())
        Fault injection and the deadline (`server.faults.FaultInjection`).
    second_wave : SecondWave | None (default: None)
        Reassigns orphaned groups (`server.second_wave.SecondWave`); ignored by a
        strategy whose `reassigns` is False.
    """

    reassigns: bool = True  # whether the strategy can take a second wave
    # Its own settings, `<strategy>.<option>` keys of the run config (none here)
    Options: ClassVar[type[Options]] = Options
    # Whether a client makes one estimate on one batch a round (no local epochs)
    one_step: ClassVar[bool] = False

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
        dealer: Dealer | None = None,
        faults: Faults | None = None,
        second_wave: SecondWave | None = None,
    ) -> None:
        if clients_per_round > len(partitions):
            raise ValueError(
                f"clients_per_round ({clients_per_round}) exceeds the "
                f"{len(partitions)} connected nodes"
            )
        self.partitions = dict(partitions)
        self.clients_per_round = clients_per_round
        self.eval_clients_per_round = min(eval_clients_per_round, len(partitions))
        self.split, self.group_size = split, group_size
        self.shared_names = tuple(shared_names)
        self.send_context = send_context
        self.optimizer = optimizer or ServerOptimizer()
        self.seed = seed
        self.upload_scalars = upload_scalars
        self.client_cfg = client_cfg or ClientConfig()
        self.run_config = dict(run_config or {})
        self.eval_every, self.num_rounds = eval_every, num_rounds
        self.dealer: Dealer = dealer or RoundRobin()
        self.faults: Faults = faults or NoFaults()
        self.second_wave = second_wave if self.reassigns else None
        self.optimizer_state: OptimizerState | None = None
        self.current: dict[str, np.ndarray] = {}
        # The last round's global update (new weights minus old), kept only with
        # `tangent-guess`: the clients' guess direction. Empty: no guess (round 1,
        # or a round that changed nothing).
        self.previous_update: dict[str, np.ndarray] = {}
        self.assignment: dict[int, list[str]] = {}  # node id -> its slice this round
        self.round_log: dict[int, dict[str, Any]] = {}
        # The mean pooled feature every client's head subtracts (set before round
        # 1 by the server app when the run centres features).
        self.feature_center: list[float] | None = None
        # This round's groups, names, config and grid; what each node of the wave
        # was sent (node -> its injected fault or ""); the faults by partition.
        self.groups: list[tuple[str, ...]] = []
        self.grid: Grid | None = None
        self._names: list[str] = []
        self._cfg_record = ConfigRecord()
        self._sent: dict[int, str] = {}
        self._faults: dict[int, str] = {}
        self._eligible_nodes: list[int] | None = None
        self._round_started = 0.0

    @classmethod
    def from_run(
        cls,
        cfg: RunConfig,
        partitions: Mapping[int, int],
        head: Sequence[str],
        *,
        dealer: Dealer | None = None,
        faults: Faults | None = None,
        second_wave: SecondWave | None = None,
    ) -> SlicedRounds:
        """The strategy `cfg` describes (`head`: the task head's tensor names).

        The parts are the ServerApp's to inject (`server/server_app.py`). Raises
        `ConfigError` on options or run settings the strategy cannot take.
        """
        kwargs = cls._options(cfg, partitions, head, cls.options(cfg))
        return cls(**kwargs, dealer=dealer, faults=faults, second_wave=second_wave)

    @classmethod
    def options(cls, cfg: RunConfig) -> Options:
        """The strategy's `Options` from `cfg`'s `<strategy>.<option>` keys.

        Checks them, and the run settings the strategy cannot take, before anything
        starts (`strategies.resolve`); raises `ConfigError` naming the key.
        """
        cls.check_run(cfg)
        name = cfg.strategy.strategy
        return build_options("strategy", name, cls.Options, dict(cfg.strategy_options))

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """Refuse run settings the strategy cannot take (`ConfigError` names them)."""
        if cls.one_step and cfg.client.local_epochs != 1:
            raise ConfigError(
                f"the {cfg.strategy.strategy} strategy takes one batch per client "
                f"per round; `local-epochs` ({cfg.client.local_epochs}) applies to "
                "local-epoch strategies (spry) only"
            )

    @classmethod
    def _options(
        cls,
        cfg: RunConfig,
        partitions: Mapping[int, int],
        head: Sequence[str],
        options: Options,
    ) -> dict[str, Any]:
        """Constructor keywords from `cfg` and the strategy's built `options`."""
        del options  # the shared round has none; BAFFLE and FwdLLM read theirs
        s = cfg.strategy
        return {
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
                estimated_kind=s.estimated_server_optimizer,
                # the clients' engine says which tensors it differentiates exactly
                is_exact=make_client_engine(cfg.client).is_exact
                if s.estimated_server_optimizer
                else None,
            ),
            "seed": cfg.runtime.seed,
            "upload_scalars": s.upload_scalars,
            "client_cfg": cfg.client,
            "run_config": cfg.to_mapping(),
            "eval_every": cfg.runtime.eval_every,
            "num_rounds": cfg.runtime.num_server_rounds,
        }

    # ---------------------------------------------------------------- the hooks
    def _train_content(
        self, server_round: int, node_id: int, owned: list[str]
    ) -> RecordDict:
        """What a node is sent to train: its slice, the config, the read-only rest."""
        content = RecordDict(
            {
                protocol.ARRAYS: slice_arrays(self.current, owned),
                protocol.CONFIG: ConfigRecord(
                    {**dict(self._cfg_record), protocol.TRAINABLE_NAMES: owned}
                ),
            }
        )
        if self.send_context:
            rest = [n for n in self._names if n not in set(owned)]
            content[protocol.CONTEXT] = slice_arrays(self.current, rest)
        if self.client_cfg.tangent_guess and self.previous_update:
            content[protocol.GUESS] = slice_arrays(self.previous_update, owned)
        return content

    def _contribution(
        self, server_round: int, node_id: int, reply: Message
    ) -> tuple[dict[str, np.ndarray], float, MetricRecord, int]:
        """(tensors, weight, metrics, bytes uploaded) of a reply; InvalidReply."""
        raise NotImplementedError

    def _step(self, server_round: int, contributions: Contributions) -> dict[str, Any]:
        """The new trainable tensors from this round's accepted contributions."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared pieces
    def sample(
        self,
        server_round: int,
        count: int,
        offset: int,
        population: Sequence[int] | None = None,
    ) -> list[int]:
        """`count` nodes of `population` (default: all; in partition order)."""
        nodes = by_partition(self.partitions) if population is None else population
        return sample_nodes(self.seed, offset + server_round, count, list(nodes))

    def eligible(self) -> list[int]:
        """Nodes the dealer says can train some slice; the rest are never sampled."""
        if self._eligible_nodes is None:
            self._eligible_nodes = self.dealer.eligible(
                by_partition(self.partitions),
                self.partitions,
                self.groups,
                self.shared_names,
                self.params,
            )
        return self._eligible_nodes

    def _training_nodes(self, server_round: int) -> list[int]:
        """The nodes that train this round, in deal order (eligible ones only)."""
        eligible = self.eligible()
        count = min(self.clients_per_round, len(eligible))
        if not count:
            raise RoundFailedError("no client's device can hold a slice")
        return self.sample(server_round, count, SAMPLE_TRAIN, population=eligible)

    def params(self, names: Iterable[str]) -> int:
        """Parameters in the tensors `names`."""
        return sum(int(np.asarray(self.current[n]).size) for n in names)

    def deal(
        self, groups: Sequence[tuple[str, ...]], nodes: list[int]
    ) -> dict[int, list[str]]:
        """Deal `groups` to `nodes` (within their devices' memory when budgeted)."""
        return self.dealer.deal(
            groups, nodes, self.partitions, self.shared_names, self.params
        )

    def config(self, config: ConfigRecord, server_round: int) -> ConfigRecord:
        """The run config, `config`, the round and the feature center, as sent."""
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
        opt = self.optimizer
        kind = (
            f"{opt.kind}, estimated tensors {opt.estimated_kind}"
            if (opt.split_kinds)
            else opt.kind
        )
        log(
            INFO,
            "\t│\t└── server optimizer %s (eta %g, b1 %g, b2 %g, tau %g)",
            *(kind, opt.eta, opt.beta_1, opt.beta_2, opt.tau),
        )

    # -------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a resumed run needs besides the weights: (arrays tree, JSON state).

        The server optimizer's moments, the last global update (the clients' guess
        with `tangent-guess`), the feature center and the round log (so rounds.json
        and the summary of a resumed run cover every round). Anything else is
        rebuilt each round from the weights, the seed and the round number.
        """
        arrays: dict[str, Any] = {}
        if self.optimizer_state is not None:
            arrays["optimizer"] = self.optimizer_state._asdict()
        if self.previous_update:
            arrays["previous-update"] = self.previous_update
        state = {
            "optimizer": self.optimizer_state is not None,
            "feature-center": self.feature_center,
            "round-log": {str(r): entry for r, entry in self.round_log.items()},
        }
        return arrays, state

    def load_checkpoint_state(
        self, arrays: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        """Restore what `checkpoint_state` returned (JSON turned int keys to str)."""
        if state["optimizer"]:
            moments = arrays.get("optimizer", {})
            self.optimizer_state = OptimizerState(
                **{m: dict(moments.get(m, {})) for m in OptimizerState._fields}
            )
        self.previous_update = dict(arrays.get("previous-update", {}))
        self.feature_center = state["feature-center"]
        self.round_log = {}
        for r, entry in state["round-log"].items():
            if "faults" in entry:
                faults = {int(p): k for p, k in entry["faults"].items()}
                entry = {**entry, "faults": faults}
            self.round_log[int(r)] = entry

    # ----------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients, group the trainable tensors, deal, send each its slice."""
        self._round_started = time.perf_counter()
        self.current = {name: array.numpy() for name, array in arrays.items()}
        if self.optimizer_state is None:
            self.optimizer_state = self.optimizer.init(self.current)
        names = list(arrays.keys())
        unknown_shared = sorted(set(self.shared_names) - set(names))
        if unknown_shared:
            raise ValueError(f"shared tensors not in the model: {unknown_shared}")
        self.groups = group_tensors(
            names, self.shared_names, self.group_size, self.split
        )
        self.grid, self._names = grid, names
        self._cfg_record = self.config(config, server_round)
        nodes = self._training_nodes(server_round)
        self.assignment = self.deal(self.groups, nodes)
        messages = self.wave_messages(server_round, 0, self.assignment)
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
            len(self.groups),
            f"; over budget, not sent work: {over_budget}" if over_budget else "",
        )
        return messages

    def wave_messages(
        self, server_round: int, wave: int, assignment: dict[int, list[str]]
    ) -> list[Message]:
        """Messages for one wave; draws its faults (a lost message is not sent)."""
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
            content = self.faults.deliver(
                self._train_content(server_round, node_id, owned),
                by_node.get(node_id, ""),
            )
            if content is not None:
                messages.append(
                    Message(
                        content=content,
                        message_type=MessageType.TRAIN,
                        dst_node_id=node_id,
                        group_id=str(server_round),  # as FedAvg; replies copy it
                    )
                )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply, average per tensor, take the server step."""
        result = self._recover(server_round, self.collect(server_round, replies))
        entry = self.round_log.setdefault(server_round, {})
        _record_drops(entry, result, self.partitions)
        if result.errors and len(result.errors) == len(self.assignment):
            # Every client crashed: a bug or a broken setup, not bad luck. Stop the
            # run with the first traceback instead of silently training nothing.
            raise RoundFailedError(
                f"round {server_round}: all {len(result.errors)} clients failed; "
                f"first error: {result.errors[0]}"
            )
        if not result.contributions:
            entry["coverage-trained"] = 0.0
            self.previous_update = {}  # the model is unchanged: no update to guess by
            log(INFO, "aggregate_train: no valid replies; the model is unchanged")
            return None, None
        trained = {name for tensors, _ in result.contributions for name in tensors}
        entry["coverage-trained"] = len(trained) / len(self.current)
        new = self._step(server_round, result.contributions)
        if self.client_cfg.tangent_guess:
            self.previous_update = {
                n: np.asarray(v, dtype=np.float32) - self.current[n]
                for n, v in new.items()
            }
        metrics = train_metrics(result.accepted)
        metrics["upload-bytes-mean"] = sum(result.uploaded) / len(result.uploaded)
        entry["train"] = dict(metrics)
        # Sending, the clients' work, receiving and aggregating: the wall time a
        # round's training takes in whatever runs the clients.
        entry["train-wall-seconds"] = time.perf_counter() - self._round_started
        return ArrayRecord({k: Array(v) for k, v in new.items()}), metrics

    def _recover(self, server_round: int, result: WaveResult) -> WaveResult:
        """Hand groups no accepted reply trained to the second wave, if any."""
        entry = self.round_log.setdefault(server_round, {})
        orphans = self.orphans(result)
        entry["orphan-groups"] = len(orphans)
        entry["reassigned-groups"] = 0
        if not orphans:
            return result
        if self.second_wave is not None:
            second = self.second_wave(self, server_round, orphans, len(result.dropped))
            if second is not None:
                result = result.merge(second)
                entry["reassigned-groups"] = len(orphans) - len(self.orphans(result))
        log(
            INFO,
            "aggregate_train: %d group(s) lost every client; %s",
            len(orphans),
            f"reassigned {entry['reassigned-groups']} in a second wave"
            if self.second_wave is not None
            else "skipped this round",
        )
        return result

    def orphans(self, result: WaveResult) -> list[tuple[str, ...]]:
        """Groups of this round that no accepted reply trained."""
        trained = {name for tensors, _ in result.contributions for name in tensors}
        assigned = {n for owned in self.assignment.values() for n in owned}
        return [g for g in self.groups if set(g) <= assigned and not set(g) <= trained]

    def collect(self, server_round: int, replies: Iterable[Message]) -> WaveResult:
        """Classify one wave's replies against what was sent in it."""
        result = WaveResult()
        replies = in_partition_order(replies, self.partitions)
        counts = Counter(reply.metadata.src_node_id for reply in replies)
        seconds = [self._accept(server_round, r, counts, result) for r in replies]
        for node_id in self._sent:
            if node_id not in counts:
                result.dropped[node_id] = "timeout"
                log_dropped(node_id, self.partitions[node_id], "no reply (timeout)")
        # The server waited out the deadline when a reply came late or never
        waited = {"late", "timeout"} & set(result.dropped.values())
        slowest = max((s for s in seconds if s is not None), default=0.0)
        result.device_seconds = self.faults.deadline if waited else slowest
        return result

    def _accept(
        self,
        server_round: int,
        reply: Message,
        counts: Counter[int],
        result: WaveResult,
    ) -> float | None:
        """Add `reply` to `result`; its device seconds, or None when dropped."""
        node_id = reply.metadata.src_node_id
        partition = self.partitions.get(node_id)
        if reply.has_error():
            reason = reply.error.reason
            kind = CRASH if InjectedFault.MARKER in reason else "error"
            if kind == "error":
                result.errors.append(reason)
            result.dropped[node_id] = kind
            log_dropped(node_id, partition, f"client error: {gist(reason)}")
            return None
        try:
            self._check_sender(server_round, reply, counts[node_id])
            tensors, weight, metrics, nbytes = self._contribution(
                server_round, node_id, reply
            )
        except EmptyReply:
            result.dropped[node_id] = "empty"
            log_empty(partition, f"round {server_round}")
            return None
        except InvalidReply as reason:
            result.dropped[node_id] = "invalid"
            result.rejected[node_id] = str(reason)
            log_dropped(node_id, partition, f"invalid reply: {reason}", server_round)
            return None
        seconds = self.faults.device_seconds(
            self.dealer.device_seconds(
                self.partitions[node_id],
                float(metrics.get(protocol.TRAIN_SECONDS, 0.0)),
            ),
            self._sent.get(node_id, ""),
        )
        if seconds > self.faults.deadline:
            result.dropped[node_id] = "late"
            deadline = self.faults.deadline
            reason = f"late: {seconds:.1f} device-s > deadline {deadline:g} s"
            log_dropped(node_id, partition, reason)
            return None
        owned = self.assignment.get(node_id, [])
        result.contributions.append((tensors, weight))
        result.accepted.append(RecordDict({protocol.METRICS: metrics}))
        result.uploaded.append(nbytes)
        result.peaks.append(
            (
                node_id,
                len(owned),
                int(metrics.get(protocol.PEAK_MEM_BYTES, 0)),
                int(metrics.get(protocol.PEAK_MEM_TOTAL_BYTES, 0)),
                self.dealer.predicted_bytes(self.params(owned)),
                int(metrics.get(protocol.PEAK_STEP_TOKENS, 0)),
            )
        )
        return seconds

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

    # --------------------------------------------------------------- evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the full trainable state to a seeded sample of clients."""
        last = server_round == self.num_rounds
        if not self.eval_clients_per_round or (
            server_round % self.eval_every and not last
        ):
            return []
        nodes = self.sample(server_round, self.eval_clients_per_round, SAMPLE_EVALUATE)
        content = RecordDict(
            {
                protocol.ARRAYS: arrays,
                protocol.CONFIG: self.config(config, server_round),
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
        for reply in in_partition_order(replies, self.partitions):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                log_dropped(node_id, None, reply.error.reason)
                continue
            metrics = reply.content.metric_records.get(protocol.METRICS)
            if not metrics or metrics.get(protocol.NUM_EXAMPLES) == 0:
                continue  # no held-out examples on this client
            partition = self.partitions.get(node_id)
            try:
                checked_metrics(metrics, partition, known=EVALUATE_METRICS)
            except InvalidReply as reason:
                why = f"invalid evaluation reply: {reason}"
                log_dropped(node_id, partition, why, server_round)
                continue
            usable.append(RecordDict({protocol.METRICS: metrics}))
        if not usable:
            return None
        metrics = evaluate_metrics(usable)
        entry = self.round_log.setdefault(server_round, {})
        entry["federated-evaluate"] = dict(metrics)
        return metrics


def _record_drops(
    entry: dict[str, Any], result: WaveResult, partitions: Mapping[int, int]
) -> None:
    """The round log's record of who was dropped and why, and the device time."""
    entry["dropped"] = len(result.dropped)
    entry.update({f"dropped-{kind}": n for kind, n in result.drop_counts().items()})
    who = {n: f"partition {p}" for n, p in partitions.items()}
    entry["rejected"] = {
        who.get(n, f"node {n}"): why for n, why in result.rejected.items()
    }
    entry["device-seconds"] = result.device_seconds
    entry["peaks"] = [(partitions[n], *rest) for n, *rest in result.peaks]
