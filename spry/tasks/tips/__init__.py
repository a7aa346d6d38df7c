"""Introspective Tips: an LLM agent learns tips for TextWorld games, not weights.

Chen et al., "Introspective Tips: Large Language Model for In-Context Decision
Making", 2023. Paper: arxiv.org/abs/2305.11598

Everything only this task uses lives here: the offline, seeded, cached games and
their walkthroughs (`games`), the agent that plays them through a pluggable
generator (`agent`), the introspection that turns a trajectory (and an expert's)
into tips (`introspect`), the server's merge of near-duplicate tips with the
offline MiniLM (`dedup`), and the task (`task`). Its package, TextWorld (with the
Inform 7 compiler it bundles), is the `tips` extra.
"""

from ..extras import require

require("tips", ("textworld",))  # textworld==1.7.0, the `tips` extra

from .task import TipsTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["TipsTask"]
