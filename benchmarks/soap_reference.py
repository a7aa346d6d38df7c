"""A SOAP writer that answers every request with the problem's canonical solution.

It measures the loop, not a model. pass@1 is 100% by construction, and each
revision is the same code measured again, so NET, NMU and NTMU are the canonical
solution against itself: their spread is the profiler's noise floor on this
machine, the smallest change a model's revision has to beat to mean anything.

    spry run --task soap --set soap.generator=benchmarks.soap_reference:canonical_writer
"""

from __future__ import annotations

import functools

from spry.tasks.soap.optimize import Problem, load_problems


@functools.cache
def _problems() -> tuple[Problem, ...]:
    return tuple(load_problems())


def canonical_writer(request: str) -> str:
    """The canonical solution of the HumanEval problem the request quotes."""
    quoted = [p for p in _problems() if p.prompt.strip() in request]
    if not quoted:
        raise ValueError("the request quotes no HumanEval problem's prompt")
    problem = max(quoted, key=lambda p: len(p.prompt))  # the most specific
    return f"```python\n{problem.prompt}{problem.canonical_solution}```\n"
