"""Conifer: instructions with 1-5 verifiable constraints, easy to hard, with feedback.

Sun et al., "Conifer: Improving Complex Constrained Instruction-Following Ability
of Large Language Models", 2024. Paper: arxiv.org/abs/2404.02823

Everything only Conifer uses lives here: the constraints and their checkers
(`constraints`, IFEval's kinds), the instructions drawn from offline review text
(`instructions`), the reference and near-miss writers (`writer`) and the task
(`task`: curriculum, process feedback, IFEval strict accuracy). It needs no
packages beyond the core's; its extra, `conifer`, is empty.
"""

from ..extras import require

require("conifer", ())  # nothing beyond the core (pyproject.toml: conifer = [])

from .task import ConiferTask  # noqa: E402  (after the check, as every task does)

__all__ = ["ConiferTask"]
