"""The `tips` task (Introspective Tips) on real generated TextWorld games, no LLM.

A scripted agent and scripted tip writers (tests/tasks/tips_scripts.py) stand in
for the LLM: they read the prompts an LLM reads and answer by rule, so what a tip
does is known. Games are real: `tw-make` builds them from seeds (about 4 s each),
once per test session into one temporary cache (the `games` fixture); the tests
play them through TextWorld's engine. Tip merging uses the real offline MiniLM.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("textworld")

from spry.config import ConfigError, RunConfig, default_values  # noqa: E402
from spry.generators import ScriptedGenerator  # noqa: E402
from spry.tasks import load_task  # noqa: E402
from spry.tasks.base import TextReply  # noqa: E402
from spry.tasks.tips.agent import (  # noqa: E402
    AgentSettings,
    choose_command,
    expert_trajectory,
    play_games,
    summarize,
)
from spry.tasks.tips.dedup import SentenceEmbedder, merge_tips  # noqa: E402
from spry.tasks.tips.games import (  # noqa: E402
    POOL_TEST,
    POOL_TRAIN,
    GameSpec,
    make_game,
    pool_specs,
)
from spry.tasks.tips.introspect import (  # noqa: E402
    introspect,
    introspection_prompt,
    parse_tips,
)
from tests.tasks import tips_scripts  # noqa: E402

SCRIPTS = "tests.tasks.tips_scripts"
AGENT = ScriptedGenerator(tips_scripts.agent)
SETTINGS = AgentSettings(max_steps=20)


def _task(cache, **options):
    values = {
        **default_values(),
        "task": "tips",
        "num-clients": 2,
        "clients-per-round": 2,
        "eval-clients-per-round": 0,
        "tips.generator": f"{SCRIPTS}:agent",
        "tips.tip-writer": f"{SCRIPTS}:expert_writer",
        "tips.source": "expert",
        "tips.games-per-client": 2,
        "tips.test-games": 2,
        "tips.cache-dir": str(cache),
    }
    values.update({f"tips.{k.replace('_', '-')}": v for k, v in options.items()})
    return load_task(RunConfig.from_run_config(values))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tips-cache")


@pytest.fixture(scope="module")
def games(cache):
    """The 6 games a 2-client task plays (2 each) and evaluates on (2 unseen)."""
    task = _task(cache)
    train = [g for p in range(2) for g in task.partition(p).train]
    return {"train": train, "test": list(task.test_data())}


@pytest.fixture(scope="module")
def embed():
    return SentenceEmbedder()


# -- games -----------------------------------------------------------------------------


def test_the_same_seed_makes_the_same_game_and_pools_do_not_overlap(games, tmp_path):
    specs = pool_specs(0, POOL_TRAIN, 4, GameSpec(seed=0))
    assert specs == pool_specs(0, POOL_TRAIN, 4, GameSpec(seed=0))
    unseen = pool_specs(0, POOL_TEST, 2, GameSpec(seed=0))
    assert not {s.seed for s in specs} & {s.seed for s in unseen}
    assert pool_specs(1, POOL_TRAIN, 4, GameSpec(seed=0)) != specs

    first = games["train"][0]
    assert first.endswith(f"{specs[0].stem}.z8")
    again = make_game(specs[0], tmp_path)  # a fresh build in another folder
    assert again.read_bytes() == open(first, "rb").read()
    assert (
        again.with_suffix(".json").read_bytes()
        == open(first.replace(".z8", ".json"), "rb").read()
    )
    other = open(games["train"][1], "rb").read()
    assert other != again.read_bytes()
    # cached: asking again builds nothing (same file, same modification time)
    mtime = again.stat().st_mtime_ns
    assert make_game(specs[0], tmp_path) == again
    assert again.stat().st_mtime_ns == mtime


def test_every_walkthrough_wins_its_game_with_full_score(games):
    for path in games["train"] + games["test"]:
        expert = expert_trajectory(path)
        assert expert.won and expert.score == expert.max_score == 2, path
        assert expert.normalized_score == 1.0
        assert all(step.valid for step in expert.steps)
        # the points come during the game (two quests), not only at the end
        assert expert.steps[-1].score == 2 and any(s.score == 1 for s in expert.steps)


# -- the agent -------------------------------------------------------------------------


def test_outputs_map_to_the_nearest_admissible_command():
    admissible = ["close box", "examine box", "go east", "open box", "take key"]
    assert choose_command("go east", admissible) == ("go east", True)
    assert choose_command("> Go East.\nthen look", admissible) == ("go east", True)
    assert choose_command("Command: take key", admissible) == ("take key", True)
    # named inside a sentence: played, but not valid as written
    assert choose_command("I will open box now", admissible) == ("open box", False)
    assert choose_command("take the key", admissible) == ("take key", False)
    assert choose_command("go est", admissible) == ("go east", False)
    assert choose_command("", admissible)[1] is False
    with pytest.raises(ValueError):
        choose_command("go east", [])


def test_a_scripted_agent_plays_real_games(games):
    played = play_games(games["train"], AGENT, [], SETTINGS)
    assert [t.game for t in played] == [
        p.rsplit("/", 1)[1][:-3] for p in games["train"]
    ]
    for trajectory in played:
        assert 1 <= len(trajectory.steps) <= SETTINGS.max_steps
        assert trajectory.max_score == 2
        assert 0 <= trajectory.score <= 2
        assert trajectory.steps[-1].score == trajectory.score
        assert trajectory.won == (trajectory.score == 2)
        assert trajectory.won or len(trajectory.steps) == SETTINGS.max_steps
        assert trajectory.invalid == 0  # the script answers admissible commands
    # an agent that writes nonsense still moves: every output invalid, mapped
    babble = ScriptedGenerator(lambda prompt: "hmm, let me think about it")
    (lost,) = play_games(games["train"][:1], babble, [], AgentSettings(max_steps=5))
    assert len(lost.steps) == 5 and lost.invalid == 5
    assert summarize([lost])["invalid-rate"] == 1.0


def test_expert_tips_win_the_games_they_came_from(games):
    paths = games["train"]
    zero = play_games(paths, AGENT, [], SETTINGS)
    experts = [expert_trajectory(p) for p in paths]
    writer = ScriptedGenerator(tips_scripts.expert_writer)
    tips = introspect(writer, zero, [], experts=experts)
    for path, game_tips, expert in zip(paths, tips, experts, strict=True):
        (tip,) = game_tips
        assert tip.endswith(", ".join(s.command for s in expert.steps))
        (tipped,) = play_games([path], AGENT, game_tips, SETTINGS)
        assert tipped.won and tipped.normalized_score == 1.0
    assert summarize(zero)["won"] < 1.0  # without tips the script does not win all


def test_own_tips_name_the_commands_that_scored(games):
    played = play_games(games["train"], AGENT, [], SETTINGS)
    writer = ScriptedGenerator(tips_scripts.own_writer)
    for trajectory, tips in zip(played, introspect(writer, played, []), strict=True):
        scored = [
            s.command
            for before, s in zip(
                [0, *[x.score for x in trajectory.steps]],
                trajectory.steps,
                strict=False,
            )
            if s.score > before
        ]
        if scored:
            assert tips == [f"Commands that gained points: {', '.join(scored)}"]
        else:
            assert tips == ["Explore every room before anything else."]


def test_the_introspection_prompt_and_the_tip_parser(games):
    (played,) = play_games(games["train"][:1], AGENT, [], SETTINGS)
    prompt = introspection_prompt(played, ["Open containers first."], max_tips=2)
    assert prompt.startswith("Tips you played with:\n- Open containers first.")
    assert "Your game:\nGoal: " in prompt and "Final score: " in prompt
    assert "at most 2 short, general tips" in prompt and prompt.endswith("Tips:\n- ")
    if played.score:
        assert "(+1 point)" in prompt
    text = (
        "- 1. Open every container you see.\n2) ok\n* Tip 3: Read the goal first, "
        "then act.\nYour game:\n> go east\n- open every container you see.\n"
        "- Move to rooms named in the goal.\nGoal: Hey, thanks for coming over to "
        "the TextWorld today\n3. **Drop nothing**: keep what the goal names.\n"
    )
    assert parse_tips(text, max_tips=5) == [
        "Open every container you see.",
        "Read the goal first, then act.",
        "Move to rooms named in the goal.",
        "Drop nothing: keep what the goal names.",
    ]
    assert parse_tips(text, max_tips=1) == ["Open every container you see."]
    long = "- " + " ".join(["word"] * 100)
    (cut,) = parse_tips(long, max_tips=1, max_chars=30)
    assert len(cut) <= 30 and cut.endswith("word")
    chatty = ScriptedGenerator(tips_scripts.chatty_writer)
    (tips,) = introspect(chatty, [played], [], max_tips=3)
    assert tips[-1] == "Read the goal before you move." and len(tips) == 2
    # a chat writer is asked without the cue that starts a first tip, and its
    # reply is read as written
    asked = introspection_prompt(played, [], max_tips=2, cue=False)
    assert asked.endswith('each starting with "- ".') and "Tips:\n" not in asked
    assert introspect(chatty, [played], [], max_tips=3, cue=False) == [tips]


# -- merging ---------------------------------------------------------------------------

NEAR = [
    ["Open a container before trying to take an item out of it.",
     "Do not repeat a command that did nothing."],
    ["Always open containers before taking things from them.",
     "Read the goal carefully and follow its steps in order."],
    ["open a container before you take an item from it",
     "Avoid repeating commands that had no effect.",
     "Examine objects to find hidden items."],
    ["Follow the steps of the objective in the order they are given.",
     "Do not repeat a command that did nothing"],
]  # fmt: skip


def test_near_duplicate_tips_merge_and_the_most_supported_lead(embed):
    merged = merge_tips(NEAR, embed, threshold=0.7, max_tips=10)
    assert [(t.text, t.support) for t in merged] == [
        ("Open a container before trying to take an item out of it.", 3),
        ("Do not repeat a command that did nothing.", 3),
        ("Read the goal carefully and follow its steps in order.", 2),
        ("Examine objects to find hidden items.", 1),
    ]
    capped = merge_tips(NEAR, embed, threshold=0.7, max_tips=2)
    assert [t.support for t in capped] == [3, 3]
    # at cosine 1 only exact repeats (case, final period aside) are one
    exact = merge_tips(NEAR, embed, threshold=1.0001, max_tips=20)
    assert len(exact) == 8
    assert ("Do not repeat a command that did nothing.", 2) in [
        (t.text, t.support) for t in exact
    ]
    assert merge_tips([[], []], embed, threshold=0.7, max_tips=3) == []


# -- the task --------------------------------------------------------------------------


def test_options_are_checked(cache):
    with pytest.raises(ConfigError, match="source"):
        _task(cache, source="dreams")
    with pytest.raises(ConfigError, match="similarity"):
        _task(cache, similarity=1.5)
    with pytest.raises(ConfigError, match="tip-writer"):
        _task(cache, tip_writer="not a spec")
    with pytest.raises(ConfigError, match="games-per-client"):
        _task(cache, games_per_client=0)


def test_a_round_plays_introspects_and_the_server_merges(cache, games, embed, tmp_path):
    task = _task(cache)
    task._embedder = embed
    trainable = task.model()
    assert trainable.names == {}  # nothing trains; a scripted agent needs no model
    assert list(task.partition(1).train) == games["train"][2:]
    shared = task.initial_text()
    assert shared == {"tips": []}
    replies = [task.text_round(trainable, p, 1, shared) for p in range(2)]
    for reply in replies:
        assert reply.metrics["num-examples"] == 2.0
        assert reply.metrics["tips-written"] == 2.0
        assert 0 <= reply.metrics["score"] <= 1 and reply.metrics["invalid-rate"] == 0
        assert all(t.startswith("The expert typed") for t in reply.text["tips"])
    merged = task.merge_text(1, shared, replies)
    written = [t for r in replies for t in r.text["tips"]]
    assert 1 <= len(merged["tips"]) <= len(written)
    assert set(merged["tips"]) <= set(written)

    # round 2: with its own expert tips in the prompt, each client wins its games
    again = [task.text_round(trainable, p, 2, merged) for p in range(2)]
    assert all(r.metrics["won"] == 1.0 for r in again)
    assert sum(r.metrics["score"] for r in again) >= sum(
        r.metrics["score"] for r in replies
    )

    task.shared_text = merged
    scores = task.evaluate(trainable, task.test_data())
    assert scores["num-examples"] == 2.0 and math.isnan(scores["loss"])
    assert scores["accuracy"] == scores["score"]
    assert scores["tips"] == float(len(merged["tips"]))
    assert scores["score-gain"] == scores["score"] - scores["score-no-tips"]
    task.shared_text = {"tips": []}
    bare = task.evaluate(trainable, task.test_data())
    assert bare["score"] == scores["score-no-tips"] and bare["score-gain"] == 0.0

    final = task.merge_text(2, merged, again)
    report = task.finish(trainable, tmp_path)["tips"]
    assert report["final-tips"] == task._history[-1]["tips"]
    assert [t["text"] for t in report["final-tips"]] == final["tips"]
    assert [h["train-score"] for h in task._history] == [
        sum(r.metrics["score"] for r in rs) / 2 for rs in (replies, again)
    ]  # 2 games a client: the mean of the clients' means
    assert [e["tips"] for e in report["evaluations"]] == [len(merged["tips"]), 0]
    written = json.loads((tmp_path / "tips.json").read_text())
    assert written["evaluations"] == report["evaluations"]
    assert len((tmp_path / "tips-trajectories.jsonl").read_text().splitlines()) == 2


def test_the_same_seed_gives_the_same_tips_and_scores(cache, games, embed):
    def run(**options):
        task = _task(cache, **options)
        task._embedder = embed
        trainable = task.model()
        replies = [task.text_round(trainable, p, 1, {"tips": []}) for p in range(2)]
        merged = task.merge_text(1, {"tips": []}, replies)
        task.shared_text = merged
        return replies, merged, task.evaluate(trainable, task.test_data())

    first = run(source="own", tip_writer=f"{SCRIPTS}:own_writer")
    assert first == run(source="own", tip_writer=f"{SCRIPTS}:own_writer")
    replies, merged, scores = first
    assert all(isinstance(r, TextReply) for r in replies)


def test_zero_shot_shares_no_tips_and_few_shot_shows_an_expert_game(cache, games):
    task = _task(cache, source="none")
    trainable = task.model()
    reply = task.text_round(trainable, 0, 1, {"tips": []})
    assert reply.text == {"tips": []} and reply.metrics["tips-written"] == 0.0
    assert task.merge_text(1, {"tips": []}, [reply]) == {"tips": []}

    few = _task(
        cache, source="none", few_shot=True, generator=f"{SCRIPTS}:recording_agent"
    )
    example = few.settings().example
    assert example.startswith("Goal: ") and "won" in example.splitlines()[-1]
    seen = tips_scripts.SEEN
    seen.clear()
    few.text_round(few.model(), 0, 1, {"tips": []})
    assert seen and all("An example of a finished game:\n" + example in p for p in seen)
