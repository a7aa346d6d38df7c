"""The paper's metric in the real ClientApp: fine-tune a copy, score, forget it.

Messages come from the real Spry strategy's `configure_evaluate`; the replies from
the real ClientApp on the offline default model (MiniLM + LoRA + head), two IID
clients of 50 examples (15 held out).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

import strategies
from clients.client_app import app
from spry import protocol
from spry.eval_finetune import finetune_and_score
from spry.resolve import resolve
from spry.tasks import load_task
from tests.helpers import answer

pytestmark = pytest.mark.usefixtures("server_identity")

PARTITIONS = {10: 0, 11: 1}
SETTINGS = {
    "num-clients": 2,
    "clients-per-round": 2,
    "eval-clients-per-round": 2,
    "partitioner": "iid",
    "max-train-examples": 100,
    "client-eval-fraction": 0.3,
}


def _cfg(**overrides):
    return strategies.resolve(resolve({**SETTINGS, **overrides}))


def _messages(cfg, arrays: dict[str, np.ndarray]) -> dict[int, Message]:
    """The evaluation instructions of round 1, by partition."""
    strategy = strategies.get(cfg.strategy.strategy).from_run(
        cfg, PARTITIONS, load_task(cfg).head_names(list(arrays))
    )
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    messages = strategy.configure_evaluate(1, record, ConfigRecord(), grid=None)
    return {PARTITIONS[m.metadata.dst_node_id]: m for m in messages}


def _reply(message: Message, epochs: int) -> dict[str, float]:
    """The real ClientApp's evaluation metrics for `message` with N = `epochs`."""
    message.content[protocol.CONFIG]["eval-finetune-epochs"] = epochs
    reply = answer(app, message, PARTITIONS, 2)
    return dict(reply.content[protocol.METRICS])


@pytest.fixture(scope="module")
def run():
    """The run's config, the global model it sends (head moved off its init)."""
    cfg = _cfg()
    trainable = load_task(cfg).model()
    rng = np.random.default_rng(0)
    arrays = {k: v + 0.05 * rng.standard_normal(v.shape, dtype=np.float32)
              for k, v in trainable.state().items()}  # fmt: skip
    return cfg, arrays


def test_without_finetuning_the_reply_is_the_plain_score(run):
    # N = 0 (the default): exactly the three metrics of the model as sent
    cfg, arrays = run
    metrics = _reply(_messages(cfg, arrays)[0], epochs=0)

    task = load_task(cfg)
    scores = task.evaluate(task.model("cpu", arrays), task.partition(0).held_out)
    assert metrics == {
        protocol.ACCURACY: scores["accuracy"],
        protocol.LOSS: scores["loss"],
        protocol.NUM_EXAMPLES: scores["num-examples"],
    }


def test_finetuning_reports_both_scores_and_changes_the_finetuned_one(run):
    cfg, arrays = run
    plain = _reply(_messages(cfg, arrays)[0], epochs=0)
    tuned = _reply(_messages(cfg, arrays)[0], epochs=1)

    # The plain scores as before, the fine-tuned ones beside them
    assert tuned[protocol.ACCURACY] == plain[protocol.ACCURACY]
    assert tuned[protocol.LOSS] == plain[protocol.LOSS]
    assert tuned[protocol.NUM_EXAMPLES] == plain[protocol.NUM_EXAMPLES]
    assert tuned[protocol.FINETUNED_LOSS] != plain[protocol.LOSS]
    assert tuned[protocol.FINETUNED_ACCURACY] != plain[protocol.ACCURACY]
    # A local epoch on its own data fits it better than the sent model does
    assert tuned[protocol.FINETUNED_LOSS] < plain[protocol.LOSS]


def test_finetuning_does_not_reach_the_next_call_and_is_reproducible(run):
    # Same arrays -> the same plain score before and after a fine-tuning call, the
    # worker's model is the one sent when the call returns, and a second
    # fine-tuning call reports the same numbers (seeded, not carried over)
    cfg, arrays = run
    before = _reply(_messages(cfg, arrays)[1], epochs=0)
    tuned = _reply(_messages(cfg, arrays)[1], epochs=1)
    after = _reply(_messages(cfg, arrays)[1], epochs=0)
    again = _reply(_messages(cfg, arrays)[1], epochs=1)

    assert after == before
    assert tuned[protocol.ACCURACY] == before[protocol.ACCURACY]
    assert again == tuned
    state = load_task(cfg)._models["cpu"].state()  # the worker's model, as left
    for name, value in arrays.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_finetuning_draws_apart_from_training(run):
    # The fine-tuning is not a replay of the round's training of that client:
    # its batch order and directions come from a stream of its own
    cfg, arrays = run
    task = load_task(cfg)
    from spry.training import make_client_engine, train_slice

    trained = task.model("cpu", arrays)
    train_slice(
        trained,
        list(trained.names),
        lambda epoch: task.train_batches(trained, 0, 1, epoch),
        loss=task.loss,
        engine=make_client_engine(cfg.client),
        cfg=cfg.client,
        seed=cfg.runtime.seed,
        server_round=1,
        partition_id=0,
    )
    as_trained = trained.state()
    tuned = task.model("cpu", arrays)
    finetune_and_score(task, tuned, 0, epochs=1, server_round=1)
    as_tuned = tuned.state()
    assert any(not np.array_equal(as_trained[n], as_tuned[n]) for n in arrays)
    task.model("cpu", arrays)


@pytest.mark.parametrize("engine", ["backprop", "mezo"])
def test_finetuning_runs_with_other_engines(engine):
    cfg = _cfg(engine=engine)
    arrays = load_task(cfg).model().state()
    metrics = _reply(_messages(cfg, arrays)[0], epochs=1)
    assert set(metrics) == {
        protocol.ACCURACY,
        protocol.LOSS,
        protocol.NUM_EXAMPLES,
        protocol.FINETUNED_ACCURACY,
        protocol.FINETUNED_LOSS,
    }
    assert np.isfinite(metrics[protocol.FINETUNED_LOSS])


def test_finetuning_runs_with_dropout_off_as_the_official_code_does(run):
    # `dropout = true` trains in train mode; the evaluation's fine-tuning does not
    cfg, arrays = run
    with_dropout = _cfg(dropout=True)
    plain = _reply(_messages(cfg, arrays)[0], epochs=1)
    asked = _reply(_messages(with_dropout, arrays)[0], epochs=1)
    assert asked == plain
