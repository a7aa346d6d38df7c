"""A task's settings for one method reach that method's runs, and only those.

`spry run --task lm-classification` trains Spry with the task's tuned forward
step (plain SGD at lr 3 on LoRA-FA, K = 8); the same step under backprop FedAvg
would be a different, worse method, so it must not leak there, and the user's
flags and `--set` still win.
"""

from __future__ import annotations

from cli.main import build_parser, overrides_from_args
from spry.config import RunConfig
from spry.resolve import resolve
from spry.tasks import get


def _overrides(*argv: str) -> dict:
    return overrides_from_args(build_parser().parse_args(["run", *argv]))


def test_the_task_tunes_spry_only_and_the_user_still_wins():
    tuned = get("lm-classification").method_defaults["spry"]
    assert tuned  # the task does tune Spry

    spry = _overrides("--task", "lm-classification")
    assert {k: spry[k] for k in tuned} == dict(tuned)
    assert _overrides("--task", "lm-classification", "--method", "spry") == {
        **spry,
        "strategy": "spry",
        "engine": "forward",
        "split": True,
        "server-optimizer": "yogi",
        "estimated-server-optimizer": "avg",
    }
    fedavg = _overrides("--task", "lm-classification", "--method", "fedavg")
    assert not set(tuned) & set(fedavg)
    assert _overrides("--task", "lm-classification", "--set", "lr=0.5")["lr"] == "0.5"
    # the paper's Spry keeps the paper's step
    paper = _overrides("--task", "lm-classification", "--method", "spry-paper")
    assert paper["lr"] == 1e-4 and paper["num-tangents"] == 1

    cfg: RunConfig = resolve(spry)
    assert cfg.client.client_optimizer == "sgd" and cfg.client.num_tangents == 8


def test_both_causal_lm_tasks_train_spry_with_the_tuned_forward_step():
    """sft was measured with the same step (benchmarks/results/compare_sft.md)."""
    tuned = get("lm-classification").method_defaults["spry"]
    spry = _overrides("--task", "sft")
    assert {k: spry[k] for k in tuned} == dict(tuned)
