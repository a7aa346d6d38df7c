"""Introspection: a played game, read back by the agent's own generator, becomes tips.

Chen et al., "Introspective Tips: Large Language Model for In-Context Decision
Making", 2023. Paper: arxiv.org/abs/2305.11598

The paper's loop, in prompt form: after a game the LLM is shown its trajectory
(and the tips it played with) and asked for a few short, general tips that would
make it score higher; the tips go into its next prompt, and no weight changes.
Its two other sources are built the same way: expert demonstrations (here the
game's walkthrough, replayed for its replies: `agent.expert_trajectory`) shown
next to the agent's own game, and the tips of other games (the federation's
merged set, `dedup`), which is what generalization to unseen games tests.

`introspection_prompt` writes the request, `parse_tips` reads tips back from any
writer (one a line, list markers and numbering dropped, too-short lines and
repeats skipped, `max-tips` at most), and `introspect` batches one request per
game through a `spry.generators` generator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ...generators import Generator
from .agent import Trajectory, render_tips, render_trajectory

OWN, EXPERT = "own", "expert"
_MARKER = re.compile(r"^\s*(?:(?:[-*\u2022]|\d+[.):]|tip\s*\d*\s*[:.-])\s*)+", re.I)
MIN_WORDS = 3
# Lines that begin as the prompt's own parts do: the writer echoing its input
ECHOES = ("goal:", "start:", "final score:", "your game:", "tips you played with:")


def introspection_prompt(
    trajectory: Trajectory,
    tips: Sequence[str],
    *,
    expert: Trajectory | None = None,
    max_tips: int = 3,
    max_steps: int = 20,
    reply_chars: int = 160,
    cue: bool = True,
) -> str:
    """The request for tips after `trajectory` (next to `expert`'s, when given).

    With `cue` it ends with a "Tips:" line and "- ", so a plain causal LM goes
    straight into a tip. A chat writer gets no cue: its template closes the turn
    after it, and SmolLM2-135M-Instruct, asked that way, answered "1. 1. 1. ..."
    where without the cue it wrote three tips.
    """
    show = {"max_steps": max_steps, "reply_chars": reply_chars}
    parts = []
    if tips:
        parts.append(f"Tips you played with:\n{render_tips(tips)}")
    if expert is not None:
        parts.append(
            "An expert played this game and reached the full score:\n"
            + render_trajectory(expert, **show)
        )
    parts.append("Your game:\n" + render_trajectory(trajectory, **show))
    compare = (
        "Compare your game with the expert's. "
        if expert is not None
        else "Think about which commands gained points and which were wasted. "
    )
    parts.append(
        compare + f"Write at most {max_tips} short, general tips that would help "
        "you score higher in games like this one, one tip a line, each starting "
        'with "- ".' + ("\nTips:\n- " if cue else "")
    )
    return "\n\n".join(parts)


def parse_tips(text: str, *, max_tips: int, max_chars: int = 200) -> list[str]:
    """Tips from a writer's text: one a line, markers dropped, at most `max_tips`.

    A line of fewer than `MIN_WORDS` words, a repeat, a header ("Your game:"), a
    game command ("> go east") or an echo of the prompt ("Goal: ...") is skipped;
    markdown bold goes; a line longer than `max_chars` is cut at its last word
    that fits.
    """
    tips: list[str] = []
    seen: set[str] = set()
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = " ".join(_MARKER.sub("", raw.replace("**", "")).split()).strip("\"'`")
        if line.endswith(":") or raw.lstrip().startswith(">"):
            continue  # a section header or a game command, not a tip
        if line.lower().startswith(ECHOES):
            continue  # the writer repeating the prompt
        if len(line.split()) < MIN_WORDS:
            continue
        if len(line) > max_chars:
            line = line[:max_chars].rsplit(" ", 1)[0]
        key = line.lower().rstrip(".")
        if key in seen:
            continue
        seen.add(key)
        tips.append(line)
        if len(tips) == max_tips:
            break
    return tips


def introspect(
    generator: Generator,
    trajectories: Sequence[Trajectory],
    tips: Sequence[str],
    *,
    experts: Sequence[Trajectory] | None = None,
    max_tips: int = 3,
    max_new_tokens: int = 96,
    cue: bool = True,
) -> list[list[str]]:
    """One tip list per trajectory, asked of `generator` in one batch.

    With `experts` (one per trajectory, same game), each request shows the
    expert's demonstration next to the agent's game. `cue`: the requests end
    inside a first tip, for a writer that continues text (not a chat).
    """
    if experts is not None and len(experts) != len(trajectories):
        raise ValueError("one expert trajectory per game is needed")
    prompts = [
        introspection_prompt(
            trajectory,
            tips,
            expert=None if experts is None else experts[i],
            max_tips=max_tips,
            cue=cue,
        )
        for i, trajectory in enumerate(trajectories)
    ]
    if not prompts:
        return []
    written = generator(prompts, max_new_tokens=max_new_tokens)
    # A cued prompt ends inside the first tip ("- "): put its marker back.
    marker = "- " if cue else ""
    return [parse_tips(marker + w, max_tips=max_tips) for w in written]
