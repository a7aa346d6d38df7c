"""SEP: self-enhanced prompt tuning of a vision-language model, against CoOp.

Yao et al., "SEP: Self-Enhanced Prompt Tuning for Visual-Language Model", 2024.
Paper: arxiv.org/abs/2405.15549; code: github.com/htyao89/SEP

Everything only SEP uses lives here: the representative-token rules
(`selection`), the Token Fusion Module (`fusion`), the prompted CLIP and its loss
(`prompted`), the base-to-new split and its score (`classes`) and the task
(`task`). The vision-language model is the core's (`spry.vision`). Its packages
are the `sep` extra.
"""

from ..extras import require

require("sep", ("sklearn",))  # scikit-learn: the offline digits

from .task import SepTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["SepTask"]
