"""Introspective Tips as a federated task: clients learn tips, the server merges them.

No weight changes: the clients' generator (the task's model, an endpoint, or a
script) stays as it is, and what the federation learns is the text in its prompt.
Each round (`text_round`) a sampled client plays its own TextWorld games (`games`:
generated offline from the run's seed, `games-per-client` each) with the current
shared tips (`agent`), then its tip writer introspects each game into a few tips
(`introspect`), shown its own trajectory (`source=own`) or the game's expert
walkthrough beside it (`source=expert`); it replies with its tips and its scores.
The server merges the clients' tips with the shared ones, near-duplicates as one
(`dedup`: MiniLM cosine >= `similarity`), and keeps the `max-tips` most
supported (`merge_text`). `source=none` writes no tips: zero-shot every round.

`evaluate` plays `test-games` games no client ever played (generalization) with
the shared tips: `accuracy` is their mean normalized score (score / max score);
with `compare-no-tips` the same games are played without tips too
(`score-no-tips`, once per process: it cannot change), so each row shows the
gain. Round 0 has no tips yet. `few-shot` puts one expert game (a game of its
own, in neither pool) into every prompt. `finish` writes the final tips with
their support, each round's tips, and the last evaluation's trajectories.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...config import ConfigError, ConfigValue
from ...generators import Generator, check_generator_spec
from ...models import TrainableModel
from ...models.causal_lm import DEFAULT_CAUSAL_LM
from ..base import ClientData, Rows, TextReply, TextTask
from ..causal_lm import GeneratorOptions, frozen_writer, own_writer
from .agent import (
    AgentSettings,
    Trajectory,
    expert_trajectory,
    play_games,
    render_trajectory,
    summarize,
)
from .dedup import DEFAULT_EMBEDDER, Embedder, SentenceEmbedder, Tip, merge_tips
from .games import (
    POOL_EXAMPLE,
    POOL_TEST,
    POOL_TRAIN,
    GameSpec,
    games_folder,
    make_games,
    pool_specs,
)
from .introspect import EXPERT, OWN, introspect

NONE = "none"
SOURCES = (NONE, OWN, EXPERT)
TIPS = "tips"  # the shared text's kind


@dataclass(frozen=True)
class TipsOptions(GeneratorOptions):
    """The games, the agent, where tips come from and how they are merged."""

    source: str = field(
        default=OWN,
        metadata={
            "help": "where tips come from: own (the agent's trajectories), expert "
            "(the walkthrough beside them) or none (zero-shot every round)"
        },
    )
    tip_writer: str = field(
        default="",
        metadata={
            "help": "who introspects ('': the agent's generator; else a generator "
            "spec: local, an http(s) API root, module:function, a run folder)"
        },
    )
    tip_writer_chat: bool = field(
        default=True,
        metadata={
            "help": "ask the tip writer in chat form (asked plainly, the offline "
            'SmolLM2 answers "1. 1. 1. ..." and writes no tip)'
        },
    )
    few_shot: bool = field(
        default=False, metadata={"help": "one expert game as an example in prompts"}
    )
    games_per_client: int = field(
        default=2, metadata={"help": "games each client plays every round"}
    )
    test_games: int = field(
        default=20, metadata={"help": "unseen games the server evaluates on"}
    )
    max_steps: int = field(default=20, metadata={"help": "commands per game at most"})
    history: int = field(
        default=4, metadata={"help": "last turns the agent's prompt shows"}
    )
    action_tokens: int = field(
        default=12, metadata={"help": "new tokens per command at most"}
    )
    tip_tokens: int = field(
        default=96, metadata={"help": "new tokens per introspection at most"}
    )
    tips_per_game: int = field(
        default=3, metadata={"help": "tips read from one introspection at most"}
    )
    max_tips: int = field(default=8, metadata={"help": "shared tips kept at most"})
    similarity: float = field(
        default=0.7,
        metadata={"help": "cosine at which two tips are one (MiniLM embeddings)"},
    )
    embedder: str = field(
        default=DEFAULT_EMBEDDER,
        metadata={"help": "the sentence encoder that compares tips"},
    )
    compare_no_tips: bool = field(
        default=True, metadata={"help": "also score the test games without tips"}
    )
    world_size: int = field(default=3, metadata={"help": "rooms per game"})
    objects: int = field(default=5, metadata={"help": "objects per game at least"})
    quest_length: int = field(default=3, metadata={"help": "actions per quest"})
    quests: int = field(
        default=2, metadata={"help": "parallel quests per game (its max score)"}
    )
    cache_dir: str = field(
        default="", metadata={"help": "where games are kept ('': $SPRY_CACHE/tips)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in SOURCES:
            raise ConfigError(
                f"`source` should be one of {', '.join(SOURCES)}, got {self.source!r}"
            )
        if self.tip_writer.strip():
            try:
                check_generator_spec(self.tip_writer)
            except ValueError as error:
                raise ConfigError(f"`tip-writer` {error}") from None
        self.require_at_least(
            1,
            "games_per_client",
            "test_games",
            "max_steps",
            "action_tokens",
            "tip_tokens",
            "tips_per_game",
            "max_tips",
            "world_size",
            "objects",
            "quest_length",
            "quests",
        )
        self.require_at_least(0, "history")
        if not 0 < self.similarity <= 1:
            raise ConfigError(
                f"`similarity` should be in (0, 1], got {self.similarity}"
            )

    @property
    def game(self) -> GameSpec:
        """The settings every game shares (its seed is set per game)."""
        return GameSpec(
            seed=0,
            world_size=self.world_size,
            objects=self.objects,
            quest_length=self.quest_length,
            quests=self.quests,
        )

    @property
    def uses_local(self) -> bool:
        """Whether the agent or the tip writer is the task's own model."""
        return self.generator.strip() == "local" or self.tip_writer.strip() == "local"


class TipsTask(TextTask):
    """TextWorld games, an LLM agent, introspected tips merged by the server."""

    name: ClassVar[str] = "tips"
    summary: ClassVar[str] = (
        "Introspective Tips: an LLM agent plays TextWorld games, introspects them "
        "into tips; the server merges and de-duplicates them (normalized score)"
    )
    Options: ClassVar[type[GeneratorOptions]] = TipsOptions
    run_defaults: ClassVar[dict[str, ConfigValue]] = {
        "model": DEFAULT_CAUSAL_LM,
        "num-clients": 5,
        "clients-per-round": 5,
        "eval-clients-per-round": 0,
        "client-eval-fraction": 0.0,
    }

    @property
    def opts(self) -> TipsOptions:
        return self.options  # type: ignore[return-value]

    # -- the model: only the clients' generator; nothing trains -----------------------

    def build_model(self, device: str) -> TrainableModel:
        """The run's causal LM when a generator is "local", else no model.

        Built with LoRA at B = 0 (the model as trained) and no trainable names:
        the core ships nothing for it.
        """
        if not self.opts.uses_local:
            return super().build_model(device)
        return frozen_writer(self.run, device)

    def agent(self, trainable: TrainableModel, device: str) -> Generator:
        """The generator that picks commands (`generator`, `generator-chat`)."""
        return self.opts.make_generator(own_writer(trainable, self.run, device))

    def tip_writer(self, trainable: TrainableModel, device: str) -> Generator:
        """The generator that introspects (`tip-writer`, else the agent's).

        Asked in chat form or not by `tip-writer-chat`, apart from the agent: the
        offline SmolLM2 picks commands best continuing a plain prompt (in chat
        form 95% of its replies named no admissible command, on 4 games) but
        writes tips only when asked in chat form.
        """
        spec = self.opts.tip_writer.strip() or self.opts.generator.strip()
        return self.opts.make_generator(
            own_writer(trainable, self.run, device),
            spec,
            chat=self.opts.tip_writer_chat,
        )

    # -- games -------------------------------------------------------------------------

    def games(self, pool: int, first: int, count: int) -> list[str]:
        """Paths of games `first`..`first + count - 1` of `pool`, built if missing."""
        specs = pool_specs(self.run.runtime.seed, pool, first + count, self.opts.game)
        folder = games_folder(self.opts.cache_dir)
        return [str(p) for p in make_games(specs[first:], folder)]

    def load_partition(self, partition_id: int) -> ClientData:
        """Client `partition_id`'s own games (no other client has them)."""
        per = self.opts.games_per_client
        return ClientData(
            train=self.games(POOL_TRAIN, partition_id * per, per), held_out=[]
        )

    def test_data(self) -> Rows:
        """The unseen games: a pool of their own."""
        if not hasattr(self, "_test"):
            self._test = self.games(POOL_TEST, 0, self.opts.test_games)
        return self._test

    def settings(self) -> AgentSettings:
        """How the agent plays, with the few-shot example when asked."""
        example = ""
        if self.opts.few_shot:
            if not hasattr(self, "_example"):
                (path,) = self.games(POOL_EXAMPLE, 0, 1)
                self._example = render_trajectory(
                    expert_trajectory(path), reply_chars=160
                )
            example = self._example
        return AgentSettings(
            max_steps=self.opts.max_steps,
            history=self.opts.history,
            max_new_tokens=self.opts.action_tokens,
            example=example,
        )

    # -- a round -----------------------------------------------------------------------

    def initial_text(self) -> dict[str, list[str]]:
        return {TIPS: []}

    def text_round(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        shared: Mapping[str, list[str]],
        device: str = "cpu",
    ) -> TextReply:
        """Play this client's games with the shared tips; introspect them into tips."""
        games = list(self.partition(partition_id).train)
        tips = list(shared.get(TIPS, []))
        played = play_games(games, self.agent(trainable, device), tips, self.settings())
        written: list[str] = []
        if self.opts.source != NONE:
            experts = (
                [expert_trajectory(g) for g in games]
                if self.opts.source == EXPERT
                else None
            )
            for game_tips in introspect(
                self.tip_writer(trainable, device),
                played,
                tips,
                experts=experts,
                max_tips=self.opts.tips_per_game,
                max_new_tokens=self.opts.tip_tokens,
                cue=not self.opts.tip_writer_chat,
            ):
                written.extend(t for t in game_tips if t not in written)
        metrics = {
            **summarize(played),
            "tips-written": float(len(written)),
            "num-examples": float(len(played)),
        }
        return TextReply(metrics=metrics, text={TIPS: written})

    @property
    def embedder(self) -> Embedder:
        if not hasattr(self, "_embedder"):
            self._embedder = SentenceEmbedder(self.opts.embedder)
        return self._embedder

    def merge_text(
        self,
        server_round: int,
        shared: Mapping[str, list[str]],
        replies: Sequence[TextReply],
    ) -> dict[str, list[str]]:
        """The shared tips and every client's, near-duplicates one, most supported."""
        sources = [list(shared.get(TIPS, []))]
        sources += [list(r.text.get(TIPS, [])) for r in replies]
        merged = (
            []
            if self.opts.source == NONE
            else merge_tips(
                sources,
                self.embedder,
                threshold=self.opts.similarity,
                max_tips=self.opts.max_tips,
            )
        )
        games = sum(r.metrics["num-examples"] for r in replies) or 1.0
        played = sum(r.metrics["score"] * r.metrics["num-examples"] for r in replies)
        self.__dict__.setdefault("_history", []).append(
            {
                "round": server_round,
                # the clients' own games this round, played with the tips sent
                "train-score": played / games,
                "written": sum(len(s) for s in sources[1:]),
                "kept": len(merged),
                "tips": [{"text": t.text, "support": t.support} for t in merged],
            }
        )
        self._merged: list[Tip] = merged
        return {TIPS: [t.text for t in merged]}

    # -- scoring -----------------------------------------------------------------------

    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Mean normalized score on `rows` (game paths) with the shared tips."""
        games = [str(g) for g in rows]  # type: ignore[attr-defined]
        if not games:
            return {"accuracy": 0.0, "loss": math.nan, "num-examples": 0.0}
        tips = list(getattr(self, "shared_text", {}).get(TIPS, []))
        settings = self.settings()
        agent = self.agent(trainable, device)
        played = (
            play_games(games, agent, tips, settings)
            if tips
            else self.played_without_tips(games, agent, settings)
        )
        scores = summarize(played)
        result = {
            "accuracy": scores["score"],
            "loss": math.nan,
            "num-examples": float(len(games)),
            **scores,
            "tips": float(len(tips)),
        }
        if self.opts.compare_no_tips:
            baseline = summarize(self.played_without_tips(games, agent, settings))
            result["score-no-tips"] = baseline["score"]
            result["won-no-tips"] = baseline["won"]
            result["score-gain"] = scores["score"] - baseline["score"]
        if rows is getattr(self, "_test", None):  # the server's test games
            self._last_played = played
            kept = {k: v for k, v in result.items() if k != "loss"}  # nan: no loss
            self.__dict__.setdefault("_evaluations", []).append(kept)
        return result

    def played_without_tips(
        self, games: list[str], agent: Generator, settings: AgentSettings
    ) -> list[Trajectory]:
        """The games played without tips: once per process and set of games.

        The agent and the games are fixed, and play is greedy, so it cannot change.
        """
        cache: dict[tuple[str, ...], list[Trajectory]] = self.__dict__.setdefault(
            "_no_tips", {}
        )
        key = tuple(games)
        if key not in cache:
            cache[key] = play_games(games, agent, [], settings)
        return cache[key]

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """The final tips with their support, each round's, the last trajectories."""
        merged = getattr(self, "_merged", [])
        summary = {
            "source": self.opts.source,
            "few-shot": self.opts.few_shot,
            "final-tips": [{"text": t.text, "support": t.support} for t in merged],
            "rounds": getattr(self, "_history", []),
            # every central evaluation in order (the first: round 0, no tips)
            "evaluations": getattr(self, "_evaluations", []),
        }
        results.mkdir(parents=True, exist_ok=True)
        (results / "tips.json").write_text(json.dumps(summary, indent=1))
        played = getattr(self, "_last_played", [])
        if played:
            with open(results / "tips-trajectories.jsonl", "w") as out:
                for trajectory in played:
                    out.write(json.dumps(trajectory.to_json()) + "\n")
        rounds = [  # the run summary gets each round's numbers, tips.json the tips
            {k: v for k, v in r.items() if k != "tips"} for r in summary["rounds"]
        ]
        return {"tips": {**summary, "rounds": rounds}}
