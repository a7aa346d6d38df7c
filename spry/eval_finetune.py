"""The paper's metric: score a client's held-out part after it fine-tunes the model.

Panchal et al., "Thinking Forward: Memory-Efficient Federated Finetuning of Language
Models" (NeurIPS 2024, https://arxiv.org/abs/2405.15551) report "Test Generalized
Accuracy": each federated evaluation client scores its held-out data, fine-tunes the
global model on its own training data for `finetuning_epochs` (5 in the official
`run_job.sh`) with the method's own client step, scores again, and the server logs
the example-weighted mean of the second score. (The official `client_spry.py`,
`text_classifier_generalized_test`: a fresh AdamW at the client learning rate, K jvp
tangents a step, dropout off since the scoring before it left the model in eval mode
(training turns it on), and only the tensors of the Spry slice the server sent with
the evaluation instruction: the i-th evaluation client fine-tunes what the i-th
training client of the round was dealt.)

Here the client fine-tunes every trainable tensor with the run's engine and client
settings (`spry.training.train_slice`, a fresh AdamW), dropout off as there:
evaluation clients are a sample of their own, dealt no slice, and a method that
trains whole models (FedAvg, FedMeZO) fine-tunes what its clients train. The work
is on the process's model, which the caller resets (`Task.model`) before anything
else reads it. Its randomness (batch order, directions) is a stream of its own
(`STREAM_EVAL_FINETUNE`), so it is reproducible and draws nothing of the round's
training.

It multiplies an evaluation's cost: N local epochs over the client's training part
on top of one pass over its held-out part (measured on the default, 10 clients of
50 examples: 0.14 s a client plain, 3.4 s with N = 1, 17.8 s with N = 5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from .engines.base import Batch
from .models import TrainableModel
from .seeding import STREAM_DATA, STREAM_EVAL_FINETUNE, derive_seed, numpy_rng
from .tasks.base import Task
from .training import TrainReport, make_client_engine, train_slice


def finetune_and_score(
    task: Task,
    trainable: TrainableModel,
    partition_id: int,
    *,
    epochs: int,
    server_round: int,
    device: str = "cpu",
) -> tuple[dict[str, float], TrainReport]:
    """Fine-tune `trainable` in place for `epochs` on the client's training part.

    Returns the task's scores on the client's held-out part afterwards, and what
    the fine-tuning did. `trainable` is left fine-tuned: the caller resets it.
    """
    run = task.run
    # Dropout off, as in the official code: the metric scores one function
    cfg = dataclasses.replace(run.client, local_epochs=epochs, dropout=False)
    root = derive_seed(run.runtime.seed, STREAM_EVAL_FINETUNE)
    data = task.partition(partition_id)

    def batches(epoch: int) -> Iterator[Batch]:
        order = numpy_rng(
            root, STREAM_DATA, server_round, partition_id, epoch
        ).permutation(len(data.train))
        for batch in task.batches(
            trainable, data.train, batch_size=cfg.batch_size, order=order
        ):
            yield {k: v.to(device) for k, v in batch.items()}

    report = train_slice(
        trainable,
        list(trainable.names),
        batches,
        loss=task.loss,
        engine=make_client_engine(cfg),
        cfg=cfg,
        seed=root,  # the directions: this stream's, never the round's training's
        server_round=server_round,
        partition_id=partition_id,
    )
    trainable.model.eval()  # scored as every model is: dropout off
    return task.evaluate(trainable, data.held_out, device), report
