"""The LLM agent: it reads the game, its tips and the commands it may type; it types.

Each turn the agent's generator (`spry.generators`: the local model, an endpoint,
or a script) gets one prompt (`turn_prompt`): the goal, the tips it holds now, an
optional worked example (few-shot: one finished trajectory), the last `history`
turns, the current observation and the admissible commands; it writes the next
command. What it writes is read leniently (`choose_command`): the first line,
without "> " or "Command:", matched to the admissible commands; an output that is
not one of them exactly counts as invalid and is mapped to the nearest one (one
whose text it contains, else the closest spelling), so a weak model still moves.

A game ends when it is won or lost or after `max-steps` commands; its normalized
score is score / max score. `play_games` plays many games in lockstep, so the
generator gets one batch of prompts per turn.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...generators import Generator
from .games import GameSession

_LEAD = re.compile(
    r"^\s*(?:>+|\d+[.)]|-|\*|(?:next\s+)?command\s*:|action\s*:)\s*", re.I
)


@dataclass(frozen=True)
class Step:
    """One turn: what the agent wrote, the command played, the game's reply."""

    observation: str
    output: str
    command: str
    valid: bool
    reply: str
    score: int


@dataclass
class Trajectory:
    """One game played to its end (or to the step budget)."""

    game: str
    objective: str
    start: str
    steps: list[Step] = field(default_factory=list)
    score: int = 0
    max_score: int = 1
    won: bool = False

    @property
    def normalized_score(self) -> float:
        return self.score / self.max_score if self.max_score else 0.0

    @property
    def invalid(self) -> int:
        """Turns whose output was not an admissible command as written."""
        return sum(not s.valid for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "normalized-score": self.normalized_score}


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding quotes or final punctuation."""
    text = " ".join(text.lower().split())
    return text.strip("\"'`").rstrip(".!;:,").strip()


def choose_command(output: str, admissible: Sequence[str]) -> tuple[str, bool]:
    """(the command to play, whether `output` named it exactly).

    Read: the first non-empty line, without a leading "> ", "Command:", a list
    marker or quotes. Exact (case-insensitive) match: valid. Otherwise the
    longest admissible command the line contains, else the closest by
    `difflib`'s ratio (ties: the first in `admissible`'s order).
    """
    if not admissible:
        raise ValueError("no admissible commands to choose from")
    lines = [line for line in output.splitlines() if line.strip()]
    said = normalize(_LEAD.sub("", lines[0])) if lines else ""
    options = {normalize(c): c for c in admissible}
    if said in options:
        return options[said], True
    contained = [c for c in options if c and re.search(rf"\b{re.escape(c)}\b", said)]
    if contained:
        return options[max(contained, key=len)], False
    ratios = [difflib.SequenceMatcher(None, said, c).ratio() for c in options]
    best = max(range(len(ratios)), key=ratios.__getitem__)
    return list(options.values())[best], False


# -- prompts -------------------------------------------------------------------------

INSTRUCTION = (
    "You are playing a text adventure game. Reach the goal by typing one command "
    "at a time. Answer with exactly one of the admissible commands and nothing else."
)


def render_tips(tips: Sequence[str]) -> str:
    return "\n".join(f"- {t}" for t in tips)


def shorten(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters (0: whole)."""
    text = " ".join(text.split())
    return text if not limit or len(text) <= limit else text[: limit - 3] + "..."


def render_trajectory(
    trajectory: Trajectory, *, max_steps: int = 0, reply_chars: int = 0
) -> str:
    """A played game as text: goal, each command and the game's reply, the score.

    `max_steps` keeps the last steps only, `reply_chars` cuts each reply (0: all).
    """
    steps = trajectory.steps[-max_steps:] if max_steps else trajectory.steps
    lines = [
        f"Goal: {trajectory.objective}",
        f"Start: {shorten(trajectory.start, reply_chars)}",
    ]
    first = len(trajectory.steps) - len(steps)
    before = trajectory.steps[first - 1].score if first > 0 else 0
    for step in steps:
        lines.append(f"> {step.command}")
        gained = step.score - before
        points = f" (+{gained} point{'s' * (gained != 1)})" if gained > 0 else ""
        lines.append(shorten(step.reply, reply_chars) + points)
        before = step.score
    outcome = "won" if trajectory.won else "not won"
    lines.append(
        f"Final score: {trajectory.score} of {trajectory.max_score} ({outcome}, "
        f"{len(trajectory.steps)} steps)"
    )
    return "\n".join(lines)


def turn_prompt(
    objective: str,
    observation: str,
    admissible: Sequence[str],
    history: Sequence[Step],
    tips: Sequence[str] = (),
    example: str = "",
) -> str:
    """The agent's prompt for one turn (it ends with "Command:")."""
    parts = [INSTRUCTION]
    if tips:
        parts.append(f"Tips from earlier games:\n{render_tips(tips)}")
    if example:
        parts.append(f"An example of a finished game:\n{example}")
    parts.append(f"Goal: {objective}")
    if history:
        recent = "\n".join(f"> {s.command}\n{s.reply}" for s in history)
        parts.append(f"Your last commands:\n{recent}")
    parts.append(f"Observation: {observation}")
    parts.append(f"Admissible commands: {', '.join(admissible)}")
    parts.append("Command:")
    return "\n\n".join(parts)


# -- playing -------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSettings:
    """How the agent plays: its step budget, memory, tokens and example."""

    max_steps: int = 20
    history: int = 4
    max_new_tokens: int = 12
    example: str = ""  # a rendered trajectory (few-shot); "" for zero-shot


def play_games(
    paths: Sequence[Path | str],
    generator: Generator,
    tips: Sequence[str],
    settings: AgentSettings,
) -> list[Trajectory]:
    """Play every game with `tips` in the prompt, in lockstep; one trajectory each."""
    sessions = [GameSession(p) for p in paths]
    try:
        trajectories, observations = [], []
        for session in sessions:
            observation = session.start()
            observations.append(observation)
            trajectories.append(
                Trajectory(
                    game=session.path.stem,
                    objective=session.objective,
                    start=observation,
                    max_score=session.max_score,
                )
            )
        for _ in range(settings.max_steps):
            active = [i for i, s in enumerate(sessions) if not s.done and s.admissible]
            if not active:
                break
            prompts = [
                turn_prompt(
                    trajectories[i].objective,
                    observations[i],
                    sessions[i].admissible,
                    trajectories[i].steps[-settings.history :]
                    if settings.history
                    else [],
                    tips,
                    settings.example,
                )
                for i in active
            ]
            outputs = generator(prompts, max_new_tokens=settings.max_new_tokens)
            for i, output in zip(active, outputs, strict=True):
                session = sessions[i]
                command, valid = choose_command(output, session.admissible)
                reply = session.step(command)
                trajectories[i].steps.append(
                    Step(observations[i], output, command, valid, reply, session.score)
                )
                observations[i] = reply
        for trajectory, session in zip(trajectories, sessions, strict=True):
            trajectory.score = session.score
            trajectory.won = session.won
        return trajectories
    finally:
        for session in sessions:
            session.close()


def expert_trajectory(path: Path | str) -> Trajectory:
    """The game played by its walkthrough: the expert demonstration."""
    with GameSession(path) as session:
        observation = session.start()
        trajectory = Trajectory(
            game=session.path.stem,
            objective=session.objective,
            start=observation,
            max_score=session.max_score,
        )
        for command in session.walkthrough:
            reply = session.step(command)
            trajectory.steps.append(
                Step(observation, command, command, True, reply, session.score)
            )
            observation = reply
            if session.done:
                break
        trajectory.score, trajectory.won = session.score, session.won
    return trajectory


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Mean normalized score, win rate, invalid-output rate and steps of a set."""
    if not trajectories:
        return {"score": 0.0, "won": 0.0, "invalid-rate": 0.0, "steps": 0.0}
    steps = sum(len(t.steps) for t in trajectories)
    return {
        "score": sum(t.normalized_score for t in trajectories) / len(trajectories),
        "won": sum(t.won for t in trajectories) / len(trajectories),
        "invalid-rate": sum(t.invalid for t in trajectories) / max(steps, 1),
        "steps": steps / len(trajectories),
    }
