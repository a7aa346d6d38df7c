"""`spry.eval_finetune` on a causal-LM task: LoRA only, any engine, seeded.

The tiny random Llama of tests/tasks/test_causal_lm_task.py (no head: the adapters
are all that trains), three training rows and one held out.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spry.eval_finetune import finetune_and_score
from tests.tasks.test_causal_lm_task import make_task


@pytest.mark.parametrize("engine", ["forward", "backprop", "mezo"])
def test_a_causal_lm_task_is_finetuned_then_scored(engine):
    task = make_task(chunk_tokens=4)
    task.run = dataclasses.replace(
        task.run, client=dataclasses.replace(task.run.client, engine=engine, lr=0.05)
    )
    trainable = task.model()
    sent = trainable.state()
    plain = task.evaluate(trainable, task.partition(0).held_out)

    tuned, report = finetune_and_score(task, trainable, 0, epochs=3, server_round=1)

    assert report.steps == 3  # one batch of three rows an epoch
    assert tuned["num-examples"] == plain["num-examples"] == 1
    assert tuned["loss"] != plain["loss"]
    changed = trainable.state()
    assert all(not np.array_equal(changed[n], sent[n]) for n in sent)  # LoRA, all
    again = task.model()  # the caller's reset: the initial state back
    assert all(np.array_equal(again.state()[n], sent[n]) for n in sent)
