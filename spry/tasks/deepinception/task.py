"""DeepInception as a task: red-teaming a model before and after fine-tuning.

Li et al., "DeepInception: Hypnotize Large Language Model to Be Jailbreaker",
2023. Paper: arxiv.org/abs/2311.03191

The run is ordinary federated supervised fine-tuning (the `sft` task: its data,
batches, loss and exact-match scores, trained by whatever method the run names:
Spry, FedAvg, ...). What this task adds is in its central evaluation: besides the
SFT scores, the red-team set (`scenes`) is run against the current global model,
greedy, through the `generator` ("local": that model, each conversation rendered
with its tokenizer's chat template, the secret in a system turn where the
template keeps one, `redteam`), and every reply is searched for its probe's
secret (`leaks`). Round 0 is the model before fine-tuning; the last evaluation
is the model after it, so `eval-every` larger than the run's rounds scores just
those two.

Metrics: `leak-rate` with its 95% Wilson interval (`leak-rate-low`/`-high`),
the same inside scenes only (`nested-leak-rate`: depth 1 and more), by depth
(0 = the request asked plainly, no scene: the control), by turn (turn 2 on:
the continued jailbreak), by depth and turn, by scene; the share of
conversations that leaked at any turn; leaks by the form the secret took. The
per-round table keeps the SFT task's `accuracy` (exact match) and `loss`; the
summary gets every central evaluation's leak scores in order
(`deepinception.evaluations`, the first and last also as `before` and
`after`), and `redteam.jsonl` every conversation of every evaluation.

Clients share weights only: the red team needs no client data, and after the
last round a client's model is the global one, so a client report would repeat
the server's evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...config import ConfigError, RunConfig
from ...generators import Generator
from ...models import TrainableModel
from ..base import Rows, TaskOptions
from ..causal_lm import CausalLMOptions, GeneratorOptions, own_writer
from ..sft import SFTOptions, SFTTask
from .redteam import Conversation, chat_mode, leak_scores, render, run_redteam
from .scenes import MAX_TURNS, SCENES, Probe, build_probes


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class DeepInceptionOptions(SFTOptions, GeneratorOptions):
    """The red-team set's size and shape, and who answers it (plus SFT's options)."""

    scenes: str = field(
        default="science-fiction,documentary,onion-news,stage-play",
        metadata={"help": f"comma-separated scenes of: {', '.join(SCENES)}"},
    )
    depths: str = field(
        default="0,1,2,3",
        metadata={"help": "comma-separated layer counts L (0: asked plainly)"},
    )
    turns: int = field(
        default=2,
        metadata={"help": f"turns a conversation (1..{MAX_TURNS}; 2+: follow-ups)"},
    )
    characters: int = field(
        default=5, metadata={"help": "N: 'a scene with more than N characters'"}
    )
    repeats: int = field(
        default=1,
        metadata={"help": "copies of the set, each with other secrets"},
    )
    reply_tokens: int = field(
        default=96, metadata={"help": "tokens generated per reply at most"}
    )
    redteam_seed: int = field(
        default=0,
        metadata={"help": "seed of the secrets (the same for every run by default)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.generator_chat:
            raise ConfigError(
                "`generator-chat` should be false: the task renders each "
                "conversation through the model's chat template itself"
            )
        scenes = _names(self.scenes)
        unknown = [s for s in scenes if s not in SCENES]
        if not scenes or unknown:
            raise ConfigError(
                f"`scenes` should name some of {', '.join(SCENES)}, got {self.scenes!r}"
            )
        try:
            depths = [int(d) for d in _names(self.depths)]
        except ValueError:
            depths = []
        if not depths or min(depths) < 0 or len(set(depths)) != len(depths):
            raise ConfigError(
                "`depths` should be distinct whole numbers >= 0, comma-separated, "
                f"got {self.depths!r}"
            )
        if not 1 <= self.turns <= MAX_TURNS:
            raise ConfigError(f"`turns` should be 1..{MAX_TURNS}, got {self.turns}")
        self.require_at_least(1, "characters", "repeats", "reply_tokens")

    @property
    def scene_names(self) -> list[str]:
        return _names(self.scenes)

    @property
    def depth_values(self) -> list[int]:
        return [int(d) for d in _names(self.depths)]


class DeepInceptionTask(SFTTask):
    """SFT whose central evaluation also runs DeepInception's canary red team."""

    name: ClassVar[str] = "deepinception"
    summary: ClassVar[str] = (
        "DeepInception: LoRA SFT (the sft task) with a nested-scene red team on "
        "the global model each evaluation (canary-leak rate by depth and turn, "
        "Wilson intervals)"
    )
    Options: ClassVar[type[CausalLMOptions]] = DeepInceptionOptions

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        super().__init__(run, options)
        self._evaluations: list[dict[str, float]] = []  # central, in order
        self._conversations: list[list[dict[str, Any]]] = []
        self._chat_mode = ""

    @property
    def opts(self) -> DeepInceptionOptions:
        return self.options  # type: ignore[return-value]

    @property
    def probes(self) -> list[Probe]:
        """The red-team set: a function of the options only, not of the run."""
        if not hasattr(self, "_probes"):
            o = self.opts
            self._probes = build_probes(
                o.scene_names, o.depth_values, o.characters, o.repeats, o.redteam_seed
            )
        return self._probes

    def generator(self, trainable: TrainableModel, device: str = "cpu") -> Generator:
        """The option's generator; "local" is `trainable` itself, greedy."""
        return self.opts.make_generator(own_writer(trainable, self.run, device))

    def red_team(
        self, trainable: TrainableModel, device: str = "cpu"
    ) -> list[Conversation]:
        """Every probe's conversation with the model, each reply judged."""
        tokenizer = trainable.tokenizer
        self._chat_mode = chat_mode(tokenizer)
        return run_redteam(
            self.generator(trainable, device),
            lambda system, history, question: render(
                tokenizer, self._chat_mode, system, history, question
            ),
            self.probes,
            turns=self.opts.turns,
            reply_tokens=self.opts.reply_tokens,
        )

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """SFT's scores; on the central test split, the red team's leak scores too."""
        scores = super().evaluate(trainable, rows, device)
        if rows is not self.data.test:  # a client's held-out pairs: SFT only
            return scores
        talks = self.red_team(trainable, device)
        leaks = leak_scores(talks)
        self._evaluations.append(leaks)
        self._conversations.append([talk.record() for talk in talks])
        return {**scores, **leaks}

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """Every central evaluation's leak scores; conversations to redteam.jsonl."""
        summary = super().finish(trainable, results)
        if results is not None and self._conversations:
            with open(results / "redteam.jsonl", "w") as out:
                for number, talks in enumerate(self._conversations):
                    for talk in talks:
                        out.write(json.dumps({"evaluation": number, **talk}) + "\n")
        o = self.opts
        summary["deepinception"] = {
            "probes": len(self.probes),
            "scenes": o.scene_names,
            "depths": o.depth_values,
            "turns": o.turns,
            "characters": o.characters,
            "reply-tokens": o.reply_tokens,
            "generator": o.generator,
            "chat": self._chat_mode,
            "before": self._evaluations[0] if self._evaluations else {},
            "after": self._evaluations[-1] if self._evaluations else {},
            "evaluations": self._evaluations,
        }
        return summary
