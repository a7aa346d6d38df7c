"""MUSTARD: synthetic math problems kept only when a checker proves them.

Huang et al., "MUSTARD: Mastering Uniform Synthesis of Theorem and Proof Data",
ICLR 2024. Paper: arxiv.org/abs/2402.08957

Everything only MUSTARD uses lives here: the concept seeds (`seeds`), the prompt
and the parser of generated items (`generator`), a template writer that needs no
model (`templates`), the formal statement language (`statements`) and its checker
(`checker`: sympy, z3, Lean when on PATH), the synthesis loop (`pipeline`), the
held-out word problems and answer extraction (`word_problems`), and the task
(`task`). Its packages are the `mustard` extra.
"""

from ..extras import require

require("mustard", ("z3", "sympy"))  # z3-solver and sympy, the `mustard` extra

from .task import MustardTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["MustardTask"]
