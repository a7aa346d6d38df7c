"""SOAP as a federated task: clients optimize code for their own problems.

No weights train. Each client holds different coding problems (HumanEval's 164, a
seeded subset `problems`, or any file in its format, `problem-file`); each round a
client runs SOAP's loop (`optimize`) on `problems-per-round` of its problems with
its generator (`generator`: the local model, an OpenAI-compatible endpoint, or
module:function) and replies with the per-iteration metrics (pass@1, ET, MU,
TMU, NET, NMU, NTMU). With `share-hints`, it also replies with the one-line hints
of the revisions that made its code faster or leaner; the server merges them
(de-duplicated, the most often found first, `max-hints` at most) and sends them
back, and every revision prompt then lists them: federated prompt sharing.

The server's evaluation runs the same loop on `test-problems` held-out problems
with the merged hints (`accuracy` is the last iteration's pass@1; there is no
loss: nan).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ...config import ConfigError, ConfigValue
from ...generators import Generator
from ...models import TrainableModel
from ...models.causal_lm import DEFAULT_CAUSAL_LM
from ...seeding import STREAM_DATA, numpy_rng
from ..base import ClientData, Rows, TextReply, TextTask
from ..causal_lm import GeneratorOptions, frozen_writer, own_writer
from .optimize import (
    Problem,
    ProblemRun,
    Settings,
    canonical_profile,
    found_hints,
    load_problems,
    optimize,
    summarize,
)
from .profiler import Profile
from .sandbox import Limits

HINTS = "hints"


@dataclass(frozen=True)
class SoapOptions(GeneratorOptions):
    """Which problems, how many per client and round, the loop and the sandbox."""

    problems: int = field(
        default=20, metadata={"help": "problems used, a seeded subset (0: all)"}
    )
    problem_file: str = field(
        default="",
        metadata={"help": "a HumanEval-format jsonl(.gz) file ('': HumanEval's 164)"},
    )
    test_problems: int = field(
        default=4, metadata={"help": "problems held out for the server's evaluation"}
    )
    problems_per_round: int = field(
        default=2, metadata={"help": "a client's problems per round (0: all)"}
    )
    iterations: int = field(default=5, metadata={"help": "revisions per problem"})
    max_new_tokens: int = field(
        default=384, metadata={"help": "tokens per generated solution at most"}
    )
    share_hints: bool = field(
        default=False,
        metadata={"help": "clients share one-line hints of revisions that helped"},
    )
    max_hints: int = field(default=16, metadata={"help": "merged hints kept"})
    cpu_seconds: int = field(default=5, metadata={"help": "RLIMIT_CPU per run"})
    memory_mb: int = field(default=1024, metadata={"help": "RLIMIT_AS per run, MiB"})
    wall_seconds: float = field(default=10.0, metadata={"help": "wall limit per run"})
    repeats: int = field(
        default=1, metadata={"help": "runs per measurement (the median ET counts)"}
    )
    line_profile: bool = field(
        default=True, metadata={"help": "a traced run gives the feedback's hot lines"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(0, "problems", "test_problems", "problems_per_round")
        self.require_at_least(0, "iterations", "max_hints")
        self.require_at_least(1, "max_new_tokens", "cpu_seconds", "repeats")
        self.require_at_least(64, "memory_mb")
        self.require_at_least(0.1, "wall_seconds")
        if self.problem_file and not Path(self.problem_file).is_file():
            raise ConfigError(f"`problem-file`: no file at {self.problem_file!r}")
        if self.problems and self.test_problems >= self.problems:
            raise ConfigError(
                f"`test-problems` ({self.test_problems}) should be fewer than "
                f"`problems` ({self.problems}): clients need some"
            )

    def settings(self) -> Settings:
        limits = Limits(
            cpu_seconds=self.cpu_seconds,
            memory_bytes=self.memory_mb << 20,
            wall_seconds=self.wall_seconds,
        )
        return Settings(
            iterations=self.iterations,
            max_new_tokens=self.max_new_tokens,
            limits=limits,
            repeats=self.repeats,
            line_profile=self.line_profile,
            chat=self.generator_chat,
        )


def hint_key(hint: str) -> str:
    """What two hints must share to be one: lower case, words only."""
    return " ".join(re.findall(r"[a-z0-9]+", hint.lower()))


def merge_hints(
    shared: Sequence[str], found: Sequence[Sequence[str]], limit: int
) -> list[str]:
    """De-duplicated hints, the most often found first (ties: first seen first).

    The hints already shared count once each; every client's new ones count once
    per client that found them.
    """
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for group in [shared, *found]:
        for key in {hint_key(h): h for h in group if hint_key(h)}:
            counts[key] += 1
        for hint in group:
            first.setdefault(hint_key(hint), hint.strip())
    order = {key: i for i, key in enumerate(first)}
    ranked = sorted(counts, key=lambda k: (-counts[k], order[k]))
    return [first[k] for k in ranked[:limit]]


class SoapTask(TextTask):
    """SOAP's generate-profile-revise loop per client; metrics (and hints) shared."""

    name: ClassVar[str] = "soap"
    summary: ClassVar[str] = (
        "SOAP: generate code, run it in a sandbox, profile time and memory, feed "
        "the profile back, revise (pass@1, NET/NMU/NTMU per iteration)"
    )
    Options: ClassVar[type[GeneratorOptions]] = SoapOptions
    shares_text: ClassVar[bool] = True
    run_defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "model": DEFAULT_CAUSAL_LM,  # the local generator (SmolLM2-135M-Instruct)
        "num-clients": 4,
        "clients-per-round": 2,
        "eval-clients-per-round": 0,  # the server scores the held-out problems
    }

    @property
    def opts(self) -> SoapOptions:
        return self.options  # type: ignore[return-value]

    # -- the model: only a writer ------------------------------------------------------

    def build_model(self, device: str) -> TrainableModel:
        """The run's causal LM when it writes the code, else none; nothing trains.

        (Its LoRA starts at zero, so it writes as the base model does.)
        """
        if self.opts.generator.strip() != "local":
            return super().build_model(device)
        return frozen_writer(self.run, device)

    def generator(self, trainable: TrainableModel, device: str) -> Generator:
        """The option's writer ("local": `trainable`, greedy), built per call.

        Free for every spec: a run folder's model loads once per process.
        """
        return self.opts.make_generator(own_writer(trainable, self.run, device))

    # -- problems ----------------------------------------------------------------------

    @property
    def problems(self) -> list[Problem]:
        """The run's problems in a seeded order, `problems` of them (0: all)."""
        if not hasattr(self, "_problems"):
            loaded = load_problems(self.opts.problem_file or None)
            order = numpy_rng(self.run.runtime.seed, STREAM_DATA).permutation(
                len(loaded)
            )
            chosen = [loaded[int(i)] for i in order]
            if self.opts.problems:
                chosen = chosen[: self.opts.problems]
            if len(chosen) <= self.opts.test_problems:
                raise ConfigError(
                    f"task 'soap': {len(chosen)} problems, not more than "
                    f"`test-problems` ({self.opts.test_problems})"
                )
            self._problems = chosen
        return self._problems

    def test_data(self) -> Rows:
        return self.problems[: self.opts.test_problems]

    def load_partition(self, partition_id: int) -> ClientData:
        """Client k's problems: every num-clients-th of the rest, from the k-th."""
        rest = self.problems[self.opts.test_problems :]
        mine = rest[partition_id :: self.run.data.num_clients]
        return ClientData(train=mine, held_out=[])

    def round_problems(self, partition_id: int, server_round: int) -> list[Problem]:
        """The client's `problems-per-round` for this round, in rotation."""
        mine: list[Problem] = list(self.partition(partition_id).train)  # type: ignore[call-overload]
        count = self.opts.problems_per_round
        if not mine or count == 0 or count >= len(mine):
            return mine
        start = ((server_round - 1) * count) % len(mine)
        return [mine[(start + i) % len(mine)] for i in range(count)]

    def canonicals(self, problems: Sequence[Problem]) -> dict[str, Profile | None]:
        """Canonical solutions' profiles, measured once per process."""
        if not hasattr(self, "_canonicals"):
            self._canonicals: dict[str, Profile | None] = {}
        settings = self.opts.settings()
        for problem in problems:
            if problem.task_id not in self._canonicals:
                self._canonicals[problem.task_id] = canonical_profile(problem, settings)
        return {p.task_id: self._canonicals[p.task_id] for p in problems}

    def run_loop(
        self,
        trainable: TrainableModel,
        problems: Sequence[Problem],
        hints: Sequence[str],
        device: str,
    ) -> list[ProblemRun]:
        if not problems:
            return []
        return optimize(
            problems,
            self.generator(trainable, device),
            self.opts.settings(),
            canonicals=self.canonicals(problems),
            hints=hints if self.opts.share_hints else (),
        )

    # -- text rounds -----------------------------------------------------------------

    def initial_text(self) -> dict[str, list[str]]:
        return {HINTS: []} if self.opts.share_hints else {}

    def text_round(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        shared: Mapping[str, list[str]],
        device: str = "cpu",
    ) -> TextReply:
        """SOAP on this round's problems; metrics, and hints when shared."""
        problems = self.round_problems(partition_id, server_round)
        runs = self.run_loop(trainable, problems, shared.get(HINTS, []), device)
        text = {HINTS: found_hints(runs)} if self.opts.share_hints else {}
        return TextReply(metrics=summarize(runs), text=text)

    def merge_text(
        self,
        server_round: int,
        shared: Mapping[str, list[str]],
        replies: Sequence[TextReply],
    ) -> dict[str, list[str]]:
        if not self.opts.share_hints:
            return {}
        found = [r.text.get(HINTS, []) for r in replies]
        return {HINTS: merge_hints(shared.get(HINTS, []), found, self.opts.max_hints)}

    # -- scoring -----------------------------------------------------------------------

    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """SOAP on `rows` with the shared hints; `accuracy`: the last pass@1."""
        problems: list[Problem] = list(rows)  # type: ignore[call-overload]
        shared = getattr(self, "shared_text", None) or {}
        runs = self.run_loop(trainable, problems, shared.get(HINTS, []), device)
        metrics = summarize(runs)
        metrics["accuracy"] = metrics.get("pass@1", 0.0)
        metrics["loss"] = math.nan
        if problems == list(self.test_data()):
            self._last_runs = runs
            self._evaluations: list[dict[str, float]] = [
                *getattr(self, "_evaluations", []),
                metrics,
            ]
        return metrics

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """The last evaluation's iterations (code, status, profile) to a file.

        `soap-steps.jsonl`: a row per problem and iteration; the summary gets the
        merged hints, the isolation the sandbox had on this machine, and the
        first and last evaluations' metrics (per iteration).
        """
        runs: list[ProblemRun] = getattr(self, "_last_runs", [])
        if not runs:
            return {}
        results.mkdir(parents=True, exist_ok=True)
        with open(results / "soap-steps.jsonl", "w") as out:
            for run in runs:
                for step in run.steps:
                    profile = step.profile
                    row = {
                        "task_id": run.problem.task_id,
                        "iteration": step.iteration,
                        "passed": step.passed,
                        "candidate": step.candidate_status,
                        "kept": step.kept,
                        "hint": step.hint,
                        "et": profile.et if profile else None,
                        "mu": profile.mu if profile else None,
                        "tmu": profile.tmu if profile else None,
                        **run.normalized(step.iteration),
                        "code": step.solution,
                        "candidate-code": step.candidate,
                    }
                    out.write(json.dumps(row) + "\n")
        hints = (getattr(self, "shared_text", None) or {}).get(HINTS, [])
        summary = {
            "problems": len(runs),
            "hints": list(hints),
            # which kernel mechanisms the sandbox got here (or the hook instead)
            "isolation": runs[0].steps[0].result.isolation,
            # per iteration: the first evaluation (round 0, no hints) and the last
            "first-evaluation": self._evaluations[0],
            "last-evaluation": self._evaluations[-1],
        }
        return {"soap": summary}
