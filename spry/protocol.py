"""Every key and action name that travels in a Flower message, in one place.

Server and clients never import each other; they agree through these names.
"""

from __future__ import annotations

# RecordDict keys
ARRAYS = "arrays"  # ArrayRecord: the tensors a client trains (its slice), and returns
CONTEXT = "context"  # ArrayRecord: other trainable tensors, read-only on the client
# ArrayRecord: the previous round's global update over the slice (`tangent-guess`)
GUESS = "guess"
CONFIG = "config"  # ConfigRecord: the run config + per-message fields below
METRICS = "metrics"  # MetricRecord in replies
# ConfigRecord kind -> list[str]: a text round's shared text, or a client's reply
TEXT = "text"

# ConfigRecord fields added per message
SERVER_ROUND = "server-round"
TRAINABLE_NAMES = "trainable-names"  # list[str]: the slice, in training order
FAULT = "fault"  # str: "crash" tells a simulated client to fail (fault injection)

# MetricRecord fields in replies
NUM_EXAMPLES = "num-examples"  # the aggregation weight
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
TRAIN_LOSS = "train-loss"
ACCURACY = "accuracy"
LOSS = "loss"
# With `eval-finetune-epochs` > 0: the held-out scores after fine-tuning a copy
FINETUNED_ACCURACY = "finetuned-accuracy"
FINETUNED_LOSS = "finetuned-loss"
# The largest training step's peak above the client's baseline (taken once, weights
# resident, just before local training), and the process's whole peak at that step
PEAK_MEM_BYTES = "peak-mem-bytes"
PEAK_MEM_TOTAL_BYTES = "peak-mem-total-bytes"
PEAK_STEP_TOKENS = "peak-step-tokens"  # that step's batch length (0: not tokens)
LIVE_ALLOCATOR = "live-allocator"  # 1: freed memory leaves RSS (CPU peaks mean it)
TRAIN_SECONDS = "train-seconds"
STEPS = "steps"
FORWARD_PASSES = "forward-passes"  # model passes the engine ran (a jvp pass counts 1)

# Actions: message types beyond Flower's defaults ("train", "evaluate")
DESCRIBE = "describe"  # query: which partition a node holds
FEATURE_STATS = "feature_stats"  # query: sum and count of the pooled features
TASK_REPORT = "task_report"  # query: after the last round, the task's client report
TEXT_ROUND = "text_round"  # query: a round of a task that shares text, not weights

# Model statistics the server sets and every train/evaluate message carries
FEATURE_CENTER = "feature-center"  # list[float]: the mean pooled feature
FEATURE_SUM = "feature-sum"  # ArrayRecord key in a FEATURE_STATS reply

# Fields of one-estimate-a-round strategies (fedsgd, baffle, fwdllm)
ONE_STEP = "one-step"  # bool: make one estimate on one batch (no local epochs)
SCALARS = "scalars"  # ArrayRecord {"scalars": (steps, K) float64}: instead of tensors
DIRECTION_SEED = "direction-seed"  # int: seed of the directions' CPU generator
DATA_ROUND = "data-round"  # int: the round whose batch order to use
TARGET = "target"  # ArrayRecord: FwdLLM's previous gradient, to choose directions by
SELECT_SEED = "select-seed"  # int: seed of FwdLLM's shared candidate directions
SELECT_INDEX = "select-index"  # int: which of the ranked candidates this client takes
SELECT_COUNT = "select-count"  # int: candidates drawn per tensor
