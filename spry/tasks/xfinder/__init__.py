"""xFinder: a small model that extracts the key answer, instead of a RegEx.

Yu et al., "xFinder: Robust and Pinpoint Answer Extraction for Large Language
Models", 2024. Paper: arxiv.org/abs/2405.11874

Here: the key-answer-finder set the task builds (`examples`) and the task that
fine-tunes the extractor federatedly (`task`). The extraction interface other
tasks' evaluations call, and the RegEx baseline of real evaluation frameworks, are
the core's `spry.answers` (a task package imports no other task), re-exported here.
It needs no packages beyond the core's: its `xfinder` extra is empty, and checked
like every task's.
"""

from ..extras import require

require("xfinder", ())  # the `xfinder` extra (pyproject.toml) adds nothing

from ...answers import extract, same_answer  # noqa: E402  (after the check)
from .task import XFinderTask  # noqa: E402

__all__ = ["XFinderTask", "extract", "same_answer"]
