"""The checkpoint file: round trip, atomic replacement, refusal of another config."""

from __future__ import annotations

import numpy as np
import pytest

from server import checkpoint
from server.checkpoint import CHECKPOINT_FILE, Checkpoint
from spry.config import ConfigError, RunConfig
from spry.flatten import flatten


def _checkpoint(server_round: int = 2, cfg: RunConfig | None = None) -> Checkpoint:
    rng = np.random.default_rng(server_round)
    return Checkpoint(
        server_round=server_round,
        weights={
            "lora_A.weight": rng.normal(size=(1, 4)).astype(np.float32),
            "classifier.bias": rng.normal(size=(2,)).astype(np.float32),
        },
        config=(cfg or RunConfig()).to_mapping(),
        strategy_arrays={
            "optimizer": {
                "m": {"classifier.bias": np.array([0.1, -0.2], np.float32)},
                "v": {"classifier.bias": np.array([1e-6, 3e-5], np.float32)},
            }
        },
        strategy_state={"round-log": {"1": {"dropped": 0, "peaks": [[0, 2, None]]}}},
        recorder_state={"rows": [{"round": 0}], "notes": {}, "elapsed-seconds": 1.5},
    )


def test_round_trip_keeps_round_weights_and_optimizer_state(tmp_path):
    # Prepare
    saved = _checkpoint()

    # Execute
    checkpoint.save(tmp_path / CHECKPOINT_FILE, saved)
    loaded = checkpoint.load(tmp_path)  # a results folder names its checkpoint

    # Assert
    assert loaded.server_round == 2
    assert loaded.path == tmp_path / CHECKPOINT_FILE
    for got, want in (
        (loaded.weights, saved.weights),
        (flatten(loaded.strategy_arrays), flatten(saved.strategy_arrays)),
    ):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == want[name].dtype
            assert np.array_equal(got[name], want[name])
    assert loaded.strategy_state == saved.strategy_state
    assert loaded.recorder_state == saved.recorder_state
    assert loaded.config == RunConfig().to_mapping()
    assert checkpoint.read_config(tmp_path) == saved.config
    # The entry names are the format's (files written before keep loading)
    with np.load(tmp_path / CHECKPOINT_FILE) as npz:
        assert sorted(npz.files) == [
            "meta",
            "strategy/optimizer/m/classifier.bias",
            "strategy/optimizer/v/classifier.bias",
            "weights/classifier.bias",
            "weights/lora_A.weight",
        ]


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    # Prepare: round 1 is on disk; writing round 2 dies after a partial write
    path = tmp_path / CHECKPOINT_FILE
    checkpoint.save(path, _checkpoint(1))

    def dies_midway(fh, **entries):
        fh.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint.np, "savez", dies_midway)

    # Execute
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, _checkpoint(2))

    # Assert
    monkeypatch.undo()
    loaded = checkpoint.load(path)
    assert loaded.server_round == 1
    assert np.array_equal(
        loaded.weights["lora_A.weight"], _checkpoint(1).weights["lora_A.weight"]
    )
    checkpoint.save(path, _checkpoint(2))  # the leftover temporary is overwritten
    assert checkpoint.load(path).server_round == 2


def test_a_different_config_is_refused_in_one_line_naming_the_keys(tmp_path):
    saved = _checkpoint()
    checkpoint.save(tmp_path / CHECKPOINT_FILE, saved)
    other = RunConfig.from_run_config({"seed": 1, "lr": 0.5})

    with pytest.raises(ConfigError) as error:
        checkpoint.load(tmp_path).check_config(other)

    message = str(error.value)
    assert "\n" not in message
    assert "cannot resume from" in message
    assert "lr 0.001 -> 0.5" in message and "seed 0 -> 1" in message


def test_where_results_go_and_checkpoint_settings_may_differ():
    saved = _checkpoint()
    free = {"resume": "somewhere", "results-dir": "elsewhere", "checkpoint-every": 5}
    same = RunConfig.from_run_config(free)
    new = same.to_mapping()
    # The three keys really differ from the checkpoint's, and nothing else does
    assert {k for k in new if new[k] != saved.config.get(k)} == set(free)
    assert saved.check_config(same) is None
    # ...and the check still looks at every other key next to them
    with pytest.raises(ConfigError, match="seed 0 -> 1"):
        saved.check_config(RunConfig.from_run_config({**free, "seed": 1}))


def test_weights_that_do_not_fit_the_model_are_refused():
    saved = _checkpoint()
    model = {k: np.zeros_like(v) for k, v in saved.weights.items()}
    saved.check_weights(model)  # fits
    model["classifier.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ConfigError, match="do not fit the model"):
        saved.check_weights(model)


def test_missing_and_unreadable_checkpoints_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint at"):
        checkpoint.load(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize(
    "every, rounds, saved",
    [(1, 3, [1, 2, 3]), (2, 5, [2, 4, 5]), (0, 3, [])],
)
def test_checkpoint_schedule(every, rounds, saved):
    runtime = RunConfig.from_run_config(
        {"checkpoint-every": every, "num-server-rounds": rounds}
    ).runtime
    assert [r for r in range(rounds + 1) if runtime.checkpoints(r)] == saved


def test_a_key_the_checkpoint_lacks_counts_as_its_default():
    saved = _checkpoint()
    del saved.config["eval-every"]  # as if the key were added to Spry later
    saved.check_config(RunConfig())  # no error
    with pytest.raises(ConfigError, match="eval-every 1 -> 2"):
        saved.check_config(RunConfig.from_run_config({"eval-every": 2}))


def test_a_checkpoint_from_before_strategy_options_resumes_under_their_new_keys(
    tmp_path,
):
    import strategies
    from spry.resolve import resolve

    fwdllm = {"strategy": "fwdllm", "engine": "fwdllm", "num-tangents": 1}
    cfg = strategies.resolve(resolve(fwdllm))
    old = _checkpoint(cfg=cfg)
    old.config = {k: v for k, v in old.config.items() if "." not in k}
    old.config.update(  # the flat keys StrategyConfig used to carry
        {
            "baffle-clip": 0.3,
            "fwdllm-var-threshold": 0.1,
            "fwdllm-max-repeats": 2,
            "fwdllm-candidates": 10,
        }
    )
    checkpoint.save(tmp_path / CHECKPOINT_FILE, old)

    config = checkpoint.read_config(tmp_path)
    assert config["fwdllm.max-repeats"] == 2 and "fwdllm-max-repeats" not in config
    assert not {k for k in config if k.startswith("baffle")}  # not the run's
    resumed = strategies.resolve(resolve(config))  # what `spry run --resume` does
    assert dict(resumed.strategy_options)["max-repeats"] == 2
    checkpoint.load(tmp_path).check_config(resumed)  # no error
    with pytest.raises(ConfigError, match="fwdllm.max-repeats 2 -> 4"):
        checkpoint.load(tmp_path).check_config(cfg)
