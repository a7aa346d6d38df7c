"""A scripted agent and scripted tip writers for the tips task's tests (no LLM).

They read the same prompts an LLM reads (`spry.tasks.tips.agent.turn_prompt`,
`introspect.introspection_prompt`) and answer by rule, so a test knows what
tips do:

- `agent`: reads first the tip that shares the most words with the goal, and
  plays the admissible command it names first that is not among its last
  commands; without one it explores: the first admissible command not among
  its last, an action before a move (no look, inventory, examine, drop).
- `own_writer`: from its own trajectory, one tip naming the commands that gained
  points ("Commands that gained points: a, b").
- `expert_writer`: from the expert's walkthrough shown beside its game, one tip
  naming the expert's commands in order.
- `chatty_writer`: the own writer's tip in other words, numbered and followed by
  chatter, to exercise the tip parser.
- `recording_agent`: `agent`, keeping every prompt it reads in `SEEN`, so a test
  can check what the task showed it.

Named as "tests.tasks.tips_scripts:agent" etc. in `tips.generator`/`tip-writer`.
"""

from __future__ import annotations

import re

_IDLE = ("look", "inventory", "examine ")
SEEN: list[str] = []


def _section(prompt: str, header: str) -> str:
    """The text after the last `header` up to the next blank line."""
    start = prompt.rfind(header)
    if start < 0:
        return ""
    rest = prompt[start + len(header) :]
    return rest.split("\n\n", 1)[0]


def agent(prompt: str) -> str:
    admissible = [
        c.strip()
        for c in prompt.rsplit("Admissible commands:", 1)[1].split("\n\n")[0].split(",")
    ]
    tips = _section(prompt, "Tips from earlier games:\n").lower().splitlines()
    goal = set(re.findall(r"\w+", _section(prompt, "Goal: ").lower()))
    recent = re.findall(r"^> (.*)$", _section(prompt, "Your last commands:\n"), re.M)
    fresh = [c for c in admissible if c not in recent]
    # the tip that shares the most words with the goal is read first
    for tip in sorted(tips, key=lambda t: -len(goal & set(re.findall(r"\w+", t)))):
        named = sorted(
            (found.start(), c)
            for c in fresh
            if c.strip() and (found := re.search(rf"\b{re.escape(c.lower())}\b", tip))
        )
        if named:
            return named[0][1]
    acts = [c for c in fresh if not c.startswith((*_IDLE, "go ", "drop "))]
    moves = [c for c in fresh if c.startswith("go ")]
    return (acts or moves or fresh or admissible)[0]


def _commands(text: str, with_points: bool) -> list[str]:
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("> "):
            reply = lines[i + 1] if i + 1 < len(lines) else ""
            if not with_points or "(+" in reply:
                found.append(line[2:].strip())
    return found


def own_writer(prompt: str) -> str:
    own = prompt.split("Your game:\n", 1)[1]
    scored = _commands(own, with_points=True)
    if not scored:
        return "Explore every room before anything else.\n"
    return f"Commands that gained points: {', '.join(scored)}\n"


def expert_writer(prompt: str) -> str:
    part = prompt.split("An expert played this game", 1)[1].split("Your game:")[0]
    return f"The expert typed, in order: {', '.join(_commands(part, False))}\n"


def chatty_writer(prompt: str) -> str:
    tip = own_writer(prompt).strip()
    return f"1. {tip}\n2. ok\nTip 3: Read the goal before you move.\n\nYour game:\n"


def recording_agent(prompt: str) -> str:
    SEEN.append(prompt)
    return agent(prompt)
