"""The `soap` task: code extraction, canonical solutions, the loop, the task's rounds.

The loop runs for real (every solution in the sandbox) with a scripted writer
that answers as a model would: first a slow correct solution (it builds a list of
two million integers), then a faster one (a range, no list), then the closed form,
then a wrong one that the loop must reject. The metrics per iteration follow from
what each of those does: time and memory fall, then stay where the last correct
revision left them. The task's text rounds share those metrics and the hints of
the revisions that helped; it also runs 2 rounds in Flower's simulation engine.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spry.config import ConfigError, RunConfig, default_values
from spry.generators import ScriptedGenerator
from spry.tasks import TextReply, get
from spry.tasks.base import build_options
from spry.tasks.soap import SoapTask
from spry.tasks.soap.optimize import (
    Problem,
    Settings,
    canonical_profile,
    extract_code,
    extract_hint,
    found_hints,
    load_problems,
    optimize,
    solution_source,
    summarize,
)
from spry.tasks.soap.task import merge_hints

ROOT = Path(__file__).resolve().parents[2]

TOTAL = {
    "prompt": 'def total(n):\n    """The sum 0 + 1 + ... + n."""\n',
    "test": (
        "def check(candidate):\n"
        "    assert candidate(2_000_000) == 2_000_000 * 2_000_001 // 2\n"
        "    assert candidate(0) == 0\n"
        "    assert candidate(5) == 15\n"
    ),
    "entry_point": "total",
    "canonical_solution": "    return n * (n + 1) // 2\n",
}
SLOW = "    return sum([i for i in range(n + 1)])\n"  # continues the prompt
FASTER = (  # a chat-style answer: a sentence, a block, a hint
    "Here is a faster version.\n```python\ndef total(n):\n"
    "    return sum(range(n + 1))\n```\nHint: sum a range instead of building a list\n"
)
FASTEST = (  # continues the opened ```python block of the feedback prompt
    "def total(n):\n    return n * (n + 1) // 2\n```\n"
    "Hint: use the closed form n(n+1)/2\n"
)
WRONG = "def total(n):\n    return n * n // 2\n```\nHint: halve the square\n"
HINT_RANGE = "sum a range instead of building a list"
HINT_CLOSED = "use the closed form n(n+1)/2"


def write_total(prompt: str) -> str:
    """A scripted writer for `total`: slow, faster, closed form, then wrong."""
    if "Optimize the efficiency" not in prompt:
        return SLOW
    original = prompt.split("Original code:")[1].split("Overhead analysis:")[0]
    if "sum([i for i" in original:
        return FASTER
    if "sum(range(" in original:
        return FASTEST
    return WRONG


def total_problem(task_id: str = "Total/0") -> Problem:
    return Problem.from_record({"task_id": task_id, **TOTAL})


def fast_settings(**changes) -> Settings:
    return Settings(**{"iterations": 3, **changes})


# -- reading replies -------------------------------------------------------------------


def test_code_and_hints_are_read_from_every_reply_shape():
    problem = total_problem()
    body = solution_source(problem, SLOW + "\n\ndef unrelated():\n    pass\n")
    assert body == TOTAL["prompt"] + SLOW  # cut at HumanEval's stop sequence
    chat = solution_source(problem, FASTER)
    assert chat.startswith(TOTAL["prompt"].rstrip())  # the prompt's imports stay
    assert chat.endswith("def total(n):\n    return sum(range(n + 1))\n")
    assert extract_code(FASTEST) == "def total(n):\n    return n * (n + 1) // 2\n"
    assert extract_hint(FASTER) == HINT_RANGE
    assert extract_hint(FASTEST) == HINT_CLOSED
    assert extract_hint("def f():\n    # hint: not after the code\n    pass\n") == (
        "not after the code"
    )  # without a fence the whole reply is searched
    assert extract_hint("```python\nx = 1\n```\nNo hint here.\n") == ""


def test_a_handful_of_canonical_solutions_pass_and_an_empty_one_fails():
    problems = load_problems()
    assert len(problems) == 164
    settings = Settings(line_profile=False)
    for problem in problems[:6]:
        profile = canonical_profile(problem, settings)
        assert profile is not None, problem.task_id
        assert 0 < profile.et < 1 and 5 < profile.mu < 200
    broken = Problem(**{**vars(problems[0]), "canonical_solution": "    return []\n"})
    assert canonical_profile(broken, settings) is None


def test_a_problem_file_in_humaneval_format(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"task_id": "Total/0", **TOTAL}) + "\n")
    (problem,) = load_problems(path)
    assert problem == total_problem()


# -- the loop ------------------------------------------------------------------------


def test_the_loop_keeps_faster_correct_revisions_and_rejects_a_wrong_one():
    prompts: list[str] = []

    def writer(prompt: str) -> str:
        prompts.append(prompt)
        return write_total(prompt)

    problem = total_problem()
    # the median of 3 runs: microsecond calls on a busy machine jump 100-fold
    settings = fast_settings(repeats=3)
    (run,) = optimize([problem], ScriptedGenerator(writer), settings)
    assert [s.kept for s in run.steps] == [True, True, True, False]
    assert [s.candidate_status for s in run.steps] == [
        "passed",
        "passed",
        "passed",
        "failed",
    ]
    assert run.steps[3].result is run.steps[2].result  # the kept code stays
    assert "n * n // 2" in run.steps[3].candidate  # the rejected one, on record
    assert run.steps[3].solution == run.steps[2].solution
    assert found_hints([run]) == [HINT_RANGE, HINT_CLOSED]

    m = summarize([run])
    assert [m[f"pass@1-it{i}"] for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert m["et-it0"] > m["et-it1"] > m["et-it2"] == m["et-it3"]
    assert m["net-it0"] > m["net-it1"] > m["net-it2"] == m["net"]
    assert m["mu-it0"] - m["mu-it1"] > 40  # two million ints in a list, then none
    assert m["nmu-it0"] > m["nmu-it1"]
    assert m["tmu-it0"] > m["tmu-it1"] > m["tmu-it2"]
    assert m["ntmu-it0"] > 5 * m["ntmu-it2"]
    assert 0.05 < m["net-it2"] < 20  # the canonical code itself, timed again
    assert m["kept-revisions"] == 2 + 0 and m["rejected-revisions"] == 1
    assert m["num-examples"] == 1 and m["pass@1"] == 1.0

    # SOAP's feedback: the code, its ET/MU/TMU, its hottest line
    first_revision = prompts[1]
    assert "Original code:\n```python\ndef total(n):" in first_revision
    assert "sum([i for i in range(n + 1)])" in first_revision
    assert "The total execution time is" in first_revision
    assert "The total memory usage is" in first_revision
    hot = first_revision.split("Line profile")[1].split("\n\n")[0]
    assert "1 hits" in hot or "3 hits" in hot
    assert "sum([i for i in range(n + 1)])" in hot
    assert first_revision.endswith("Optimized code:\n```python\n")


def test_a_wrong_first_solution_is_replaced_by_the_first_that_passes():
    answers = iter(["    return 0\n", FASTEST, WRONG])
    prompts: list[str] = []

    def writer(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    runs = optimize(
        [total_problem()], ScriptedGenerator(writer), fast_settings(iterations=2)
    )
    # the failing code's feedback is how it failed, not an overhead it did not have
    assert (
        "The code does not pass the test case (failed): AssertionError" in (prompts[1])
    )
    assert "The total execution time" not in prompts[1]
    m = summarize(runs)
    assert m["pass@1-it0"] == 0.0 and m["pass@1-it1"] == 1.0 == m["pass@1-it2"]
    assert "et-it0" not in m and "net-it0" not in m  # nothing passes: no efficiency
    assert "net-it1" in m
    assert runs[0].steps[0].candidate_status == "failed"
    assert [s.kept for s in runs[0].steps] == [True, True, False]


def test_shared_hints_reach_every_revision_prompt():
    prompts: list[str] = []

    def writer(prompt: str) -> str:
        prompts.append(prompt)
        return write_total(prompt)

    settings = fast_settings(iterations=1, line_profile=False)
    hints = ["use a set for membership tests"]
    optimize([total_problem()], ScriptedGenerator(writer), settings, hints=hints)
    assert (
        "Optimization hints that worked on other problems:\n- use a set" in (prompts[1])
    )
    assert "Optimization hints" not in prompts[0]


# -- hints, merged ---------------------------------------------------------------------


def test_merge_hints_deduplicates_near_duplicates_and_ranks_by_clients():
    merged = merge_hints(
        ["Use a set for lookups."],
        [
            ["use a set for lookups", "Avoid building a list"],
            ["avoid building a list!", "  AVOID building a LIST  "],
            ["Cache repeated work"],
        ],
        limit=3,
    )
    # "avoid building a list": 2 clients; "use a set": shared + 1 client
    assert merged == [
        "Use a set for lookups.",
        "Avoid building a list",
        "Cache repeated work",
    ]
    assert merge_hints([], [["a", "b", "c"]], limit=2) == ["a", "b"]
    assert merge_hints(["?!"], [[]], limit=5) == []  # no words: no hint


# -- the task --------------------------------------------------------------------------


def make_task(values=(), **options) -> SoapTask:
    run = RunConfig.from_run_config(
        {**default_values(), **SoapTask.run_defaults, "task": "soap",
         "num-clients": 2, "clients-per-round": 2, **dict(values)}
    )  # fmt: skip
    values = {k.replace("_", "-"): v for k, v in options.items()}
    return SoapTask(run, build_options(SoapTask, values))


@pytest.fixture
def problem_file(tmp_path) -> Path:
    path = tmp_path / "totals.jsonl"
    with open(path, "w") as out:
        for k in range(5):
            out.write(json.dumps({"task_id": f"Total/{k}", **TOTAL}) + "\n")
    return path


def test_the_task_is_registered():
    assert get("soap") is SoapTask
    assert SoapTask.shares_text


def test_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="test-problems"):
        make_task(problems=4, test_problems=4)
    with pytest.raises(ConfigError, match="problem-file"):
        make_task(problem_file=str(tmp_path / "none.jsonl"))
    with pytest.raises(ConfigError, match="iterations"):
        make_task(iterations=-1)
    with pytest.raises(ConfigError, match="generator"):
        make_task(generator="not a generator")


def test_clients_hold_different_problems_dealt_by_seed():
    task = make_task({"num-clients": 4}, problems=20, test_problems=4)
    test_ids = {p.task_id for p in task.test_data()}
    held = [{p.task_id for p in task.partition(k).train} for k in range(4)]
    assert [len(h) for h in held] == [4, 4, 4, 4]
    assert len(set().union(*held)) == 16 and not test_ids & set().union(*held)
    again = make_task({"num-clients": 4}, problems=20, test_problems=4)
    assert [p.task_id for p in again.partition(1).train] == [
        p.task_id for p in task.partition(1).train
    ]
    other = make_task({"num-clients": 4, "seed": 7}, problems=20, test_problems=4)
    assert {p.task_id for p in other.partition(1).train} != held[1]
    # each round, the next problems_per_round of a client's, in rotation
    rounds = [[p.task_id for p in task.round_problems(0, r)] for r in (1, 2, 3)]
    mine = [p.task_id for p in task.partition(0).train]
    assert rounds == [mine[0:2], mine[2:4], mine[0:2]]


def test_a_text_round_shares_metrics_and_the_hints_that_helped(problem_file):
    task = make_task(
        generator="tests.tasks.test_soap:write_total",
        problem_file=str(problem_file),
        test_problems=1,
        iterations=2,
        share_hints=True,
    )
    assert task.initial_text() == {"hints": []}
    trainable = task.model("cpu")
    assert trainable.names == {}  # nothing trains
    replies = [task.text_round(trainable, k, 1, {"hints": []}) for k in (0, 1)]
    for reply in replies:
        assert isinstance(reply, TextReply)
        m = reply.metrics
        assert m["num-examples"] == 2 and m["pass@1"] == 1.0
        assert m["net-it0"] > m["net-it1"] > m["net-it2"]
        assert all(math.isfinite(v) for v in m.values())
        assert reply.text == {"hints": [HINT_RANGE, HINT_CLOSED] * 2}
    merged = task.merge_text(1, {"hints": []}, replies)
    assert merged == {"hints": [HINT_RANGE, HINT_CLOSED]}

    task.shared_text = merged
    scores = task.evaluate(trainable, task.test_data())
    assert scores["accuracy"] == 1.0 and math.isnan(scores["loss"])
    assert scores["num-examples"] == 1 and scores["net-it0"] > scores["net"]


def test_without_share_hints_only_metrics_travel(problem_file):
    task = make_task(
        generator="tests.tasks.test_soap:write_total",
        problem_file=str(problem_file),
        test_problems=1,
        iterations=1,
        line_profile=False,
    )
    reply = task.text_round(task.model("cpu"), 0, 1, {})
    assert reply.text == {} and reply.metrics["pass@1"] == 1.0
    assert task.merge_text(1, {}, [reply]) == {}


@pytest.mark.slow  # the simulation engine (about a minute here)
def test_two_rounds_in_the_simulation_engine(tmp_path, problem_file):
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--task", "soap",
         "--rounds", "2", "--clients", "2", "--per-round", "2",
         "--set", "eval-clients-per-round=2",
         "--set", "soap.generator=tests.tasks.test_soap:write_total",
         "--set", f"soap.problem-file={problem_file}",
         "--set", "soap.test-problems=1", "--set", "soap.problems-per-round=1",
         "--set", "soap.iterations=2", "--set", "soap.share-hints=true",
         "--results-dir", str(results)],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = results.iterdir()
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert all(float(r["test-accuracy"]) == 1.0 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["shared-text"]["hints"] == [HINT_RANGE, HINT_CLOSED]
    report = summary["soap"]
    assert set(report["isolation"]) == {"network", "processes", "files"}
    for evaluation in ("first-evaluation", "last-evaluation"):
        assert report[evaluation]["pass@1-it0"] == 1.0
        assert report[evaluation]["net-it0"] > report[evaluation]["net-it2"]
    log = json.loads((run_dir / "rounds.json").read_text())
    for server_round in ("1", "2"):
        train = log[server_round]["train"]
        assert train["clients"] == 2 and train["num-examples"] == 2
        assert train["pass@1"] == 1.0 and train["net-it0"] > train["net-it2"]
    steps = [json.loads(line) for line in open(run_dir / "soap-steps.jsonl")]
    assert [s["kept"] for s in steps] == [True, True, True]
