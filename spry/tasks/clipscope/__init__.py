"""CLIPScope: zero-shot OOD detection with a class prior and mined OOD labels.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737; code: github.com/fu1001hao/CLIPScope

Everything only CLIPScope uses lives here: WordNet's nouns (`wordnet`), the OOD
label mining (`mining`), the scores and their metrics (`score`) and the class
prior that clients share as prediction counts (`prior`), the detector on a
model (`detector`), the ID/OOD comparison (`evaluation`) and the task (`task`).
The vision-language model is the core's (`spry.vision`). Its packages are the
`clipscope` extra.
"""

from ..extras import require

require("clipscope", ("sklearn",))  # scikit-learn: metrics, the offline digits

from .task import ClipscopeTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["ClipscopeTask"]
