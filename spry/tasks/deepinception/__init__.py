"""DeepInception: nested-scene red teaming of a model before and after fine-tuning.

Li et al., "DeepInception: Hypnotize Large Language Model to Be Jailbreaker",
2023. Paper: arxiv.org/abs/2311.03191

Everything only this task uses lives here: the red-team set (`scenes`: the
paper's nested-scene template around a benign canary request, a planted random
secret per conversation, follow-up turns), the leak detector and Wilson interval
(`leaks`), the conversations and their scores (`redteam`) and the task (`task`:
federated SFT whose central evaluation runs the red team). No harmful content is
asked or shipped. It needs no packages beyond the core's; its extra,
`deepinception`, is empty.
"""

from ..extras import require

require("deepinception", ())  # nothing beyond the core (deepinception = [])

from .task import DeepInceptionTask  # noqa: E402  (after the check, as every task does)

__all__ = ["DeepInceptionTask"]
