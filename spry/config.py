"""Run configuration: every default lives here, once.

A run is described by one flat mapping of kebab-case keys (Flower's run config, the
`[tool.flwr.app.config]` table, `--run-config` overrides and the `spry run` flags all
speak it). The dataclasses below group those keys by concern and validate them, so a
bad value fails before any process starts, with a message that names it.

This module sits at the bottom of the library and imports nothing of it: it checks
what a value is on its own (a type, a range, keys that do not go together). Whether
a name names something (an engine, a server optimizer, a task and its options, a
device profile) is asked of the registry that implements it, where each name list
is written once, in one resolving step (`spry.resolve.resolve`). So importing the
config costs no torch import, and a bad flag is reported at once.

The server is the single source of truth at run time: it sends the whole config to
every client in each message, so simulation (where Flower passes no run config to
in-process apps) and deployment behave the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

ConfigValue = bool | int | float | str

T = TypeVar("T", bound="_Section")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class _Section:
    """Base for config sections: kebab-case <-> snake_case mapping and coercion."""

    @classmethod
    def keys(cls) -> list[str]:
        return [_kebab(f.name) for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls: type[T], values: Mapping[str, ConfigValue]) -> T:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _kebab(f.name)
            if key in values:
                kwargs[f.name] = _coerce(key, values[key], type(f.default))
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, ConfigValue]:
        return {_kebab(k): v for k, v in dataclasses.asdict(self).items()}


def _coerce(key: str, value: ConfigValue, kind: type) -> ConfigValue:
    """Coerce to the field's type (TOML may write 1 for 1.0; the CLI gives str)."""
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in {"true", "1", "yes"}:
                    return True
                if value.lower() in {"false", "0", "no"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"`{key}` should be a {kind.__name__}, got {value!r}"
        ) from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class Options(_Section):
    """A pluggable part's own settings (a task's, a strategy's): no config keys.

    A part declares a frozen subclass with every default and a `help` in each
    field's metadata, and validates in `__post_init__` with `ConfigError` naming
    the option and echoing the value. The run config carries them as
    `<name>.<option>` keys (`verix.epsilon`, `fwdllm.max-repeats`), which the part's
    registry builds with `build_options`. This class itself is "no options".
    """


OptionsT = TypeVar("OptionsT", bound=Options)


def build_options(
    kind: str, name: str, options: type[OptionsT], values: Mapping[str, ConfigValue]
) -> OptionsT:
    """`options` from `<option>` keys; errors name `<name>.<option>`.

    Parameters
    ----------
    kind : str
        What owns the options, for the messages ("task", "strategy").
    name : str
        Its registered name, the keys' prefix.
    options : type[Options]
        Its options class.
    values : Mapping[str, ConfigValue]
        Option (without the prefix) -> value, as given (coerced here).
    """
    known = set(options.keys())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{kind} {name!r} has no option(s) "
            f"{[f'{name}.{k}' for k in unknown]}; its options: "
            f"{sorted(f'{name}.{k}' for k in known) or 'none'}"
        )
    try:
        return options.from_mapping(values)
    except ConfigError as error:
        raise ConfigError(
            f"{kind} {name!r}: {error} (set as `{name}.<option>`)"
        ) from None


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Which network trains, and which of its weights are trainable."""

    model: str = field(
        default="all-MiniLM-L6-v2",
        metadata={"help": "offline model name, Hugging Face model id, or local path"},
    )
    lora_r: int = field(default=1, metadata={"help": "LoRA rank (paper: 1)"})
    lora_alpha: int = field(default=1, metadata={"help": "LoRA alpha (paper: 1)"})
    lora_targets: str = field(
        default="query,value", metadata={"help": "comma-separated module names"}
    )
    max_length: int = field(default=64, metadata={"help": "tokens per example"})
    pooling: str = field(
        default="mean",
        metadata={
            "help": "what the head sees: mean|cls (a linear head on the mean or "
            "first hidden state) | model (the model's own head; paper)"
        },
    )

    center_features: bool = field(
        default=True,
        metadata={
            "help": "a pooled head subtracts the federation's mean feature, "
            "estimated before round 1 from a sample of clients"
        },
    )

    frozen_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the frozen base weights: float32|bfloat16|float16, "
            "or int8|int4|nf4 (frozen linears as codes, the rest bfloat16); "
            "trainable tensors stay float32"
        },
    )

    train_lora: bool = field(
        default=True,
        metadata={
            "help": "LoRA trains (false: LoRA stays at its initial values and only "
            "the head trains, the head-only reference)"
        },
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout, active with `dropout` (paper: 0.1)"},
    )
    lora_fa: bool = field(
        default=False,
        metadata={
            "help": "LoRA-FA: A stays at its random init, only B trains (half the "
            "dimension, a gradient from the first step)"
        },
    )
    lora_b_init: float = field(
        default=0.0,
        metadata={
            "help": "standard deviation of LoRA B's init (0: zeros, as PEFT; "
            "non-zero gives A a gradient from the first step)"
        },
    )

    POOLINGS: ClassVar[tuple[str, ...]] = ("mean", "cls", "model")
    FROZEN_DTYPES: ClassVar[tuple[str, ...]] = (
        "float32", "bfloat16", "float16", "int8", "int4", "nf4",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _require(
            self.pooling in self.POOLINGS,
            f"`pooling` should be one of {self.POOLINGS}, got {self.pooling!r}",
        )
        _require(
            not self.center_features or self.pooling != "model",
            "`center-features` needs a pooled head (`pooling` mean or cls); "
            "the model's own head has no feature center",
        )
        _require(
            self.frozen_dtype in self.FROZEN_DTYPES,
            f"`frozen-dtype` should be one of {self.FROZEN_DTYPES}, "
            f"got {self.frozen_dtype!r}",
        )
        _require(self.lora_r > 0, f"`lora-r` should be positive, got {self.lora_r}")
        _require(
            0 <= self.lora_dropout < 1,
            f"`lora-dropout` should be in [0, 1), got {self.lora_dropout}",
        )
        _require(
            self.lora_b_init >= 0,
            f"`lora-b-init` should be >= 0, got {self.lora_b_init}",
        )
        _require(bool(self.target_modules), "`lora-targets` should name a module")
        _require(
            self.max_length > 0,
            f"`max-length` should be positive, got {self.max_length}",
        )

    @property
    def target_modules(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which data, and how it is split into a test set and client partitions."""

    PARTITIONERS: ClassVar[tuple[str, ...]] = ("dirichlet", "iid")

    dataset: str = field(
        default="rotten-tomatoes",
        metadata={
            "help": "offline dataset name, a local CSV/JSONL/Parquet file or a "
            "folder of them, or a Hugging Face dataset id"
        },
    )
    text_column: str = field(
        default="",
        metadata={"help": "the dataset's text column ('': text, sentence, ...)"},
    )
    label_column: str = field(
        default="", metadata={"help": "the dataset's label column ('': label)"}
    )
    num_clients: int = field(default=100, metadata={"help": "number of partitions"})
    partitioner: str = field(default="dirichlet", metadata={"help": "dirichlet|iid"})
    alpha: float = field(default=1.0, metadata={"help": "Dirichlet concentration"})
    test_fraction: float = field(default=0.1, metadata={"help": "central test split"})
    client_eval_fraction: float = field(
        default=0.1, metadata={"help": "held-out share of each client's partition"}
    )
    max_train_examples: int = field(
        default=0, metadata={"help": "use only this many training examples (0: all)"}
    )
    max_test_examples: int = field(
        default=0, metadata={"help": "use only this many test examples (0: all)"}
    )

    def __post_init__(self) -> None:
        _require(
            self.num_clients >= 1,
            f"`num-clients` should be at least 1, got {self.num_clients}",
        )
        _require(
            self.partitioner in self.PARTITIONERS,
            f"`partitioner` should be one of {self.PARTITIONERS}, "
            f"got {self.partitioner!r}",
        )
        _require(self.alpha > 0, f"`alpha` should be > 0, got {self.alpha}")
        _require(
            0 < self.test_fraction < 1,
            f"`test-fraction` should be in (0, 1), got {self.test_fraction}",
        )
        _require(
            self.max_train_examples >= 0 and self.max_test_examples >= 0,
            "`max-train-examples` and `max-test-examples` should be >= 0",
        )
        _require(
            0 <= self.client_eval_fraction < 1,
            f"`client-eval-fraction` should be in [0, 1), "
            f"got {self.client_eval_fraction}",
        )


@dataclass(frozen=True)
class ClientConfig(_Section):
    """How a client trains the slice it receives."""

    ZO_FORMATS: ClassVar[tuple[str, ...]] = ("auto", "forward", "center")
    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adamw", "sgd")
    HEAD_GRADIENTS: ClassVar[tuple[str, ...]] = ("shared", "exact")
    LR_DECAYS: ClassVar[tuple[str, ...]] = ("constant", "linear", "cosine")

    engine: str = field(
        default="forward",
        metadata={
            "help": "gradient engine: forward mode, backprop or zero-order "
            "(spry.engines.ENGINES)"
        },
    )
    num_tangents: int = field(
        default=1, metadata={"help": "K tangents (directions) per batch"}
    )
    zo_eps: float = field(
        default=0.0,
        metadata={
            "help": "finite-difference step of mezo|baffle|fwdllm "
            "(0: the method's own, 1e-3|1e-4|1e-2)"
        },
    )
    zo_format: str = field(
        default="auto",
        metadata={"help": "baffle's difference: auto|forward|center (auto: forward)"},
    )
    tangent_distribution: str = field(
        default="gaussian",
        metadata={
            "help": "how forward tangents are drawn (spry.engines.DISTRIBUTIONS)"
        },
    )
    tangent_batch: int = field(
        default=0,
        metadata={
            "help": "forward: tangents carried by one vmapped pass (1: one jvp "
            "each; 0: all K at once)"
        },
    )
    fused_rules: bool = field(
        default=True,
        metadata={
            "help": "forward: attention, norms and frozen feed-forward blocks take "
            "fused tangent rules, a block at a time (spry.engines.fused); false: "
            "PyTorch's per-operator forward-AD rules (same result, more memory)"
        },
    )
    fused_block_mib: float = field(
        default=2.0,
        metadata={
            "help": "forward: MiB one block of a fused rule's work may take; larger "
            "blocks are faster and hold more memory (benchmarks/results/"
            "memory_blocks.md measures the trade)"
        },
    )
    head_gradient: str = field(
        default="exact",
        metadata={
            "help": "forward: shared (the head shares the slice's K tangents) | "
            "exact (reverse mode over the head alone, inside the slice's pass)"
        },
    )
    tangent_guess: float = field(
        default=0.0,
        metadata={
            "help": "forward: b in [0, 1), each tangent's share along the previous "
            "round's global update (a guess, Fournier et al. 2023): v = sqrt(1-b) z "
            "+ sqrt(b d) s u; biased toward the guess (0: plain tangents)"
        },
    )
    local_epochs: int = field(default=1, metadata={"help": "local epochs per round"})
    client_optimizer: str = field(
        default="adamw",
        metadata={
            "help": "the client's local step: adamw (the paper's) | sgd (plain "
            "steps: a noisy forward or zero-order estimate is not blown up "
            "coordinate by coordinate, as MeZO steps)"
        },
    )
    lr: float = field(
        default=1e-3, metadata={"help": "client learning rate (paper: AdamW 1e-4)"}
    )
    estimated_optimizer: str = field(
        default="",
        metadata={
            "help": "the local step for tensors whose gradient is an estimate "
            "(forward or zero-order; not a head differentiated exactly): adamw | "
            "sgd ('': client-optimizer)"
        },
    )
    estimated_lr: float = field(
        default=0.0,
        metadata={"help": "learning rate for the estimated tensors (0: lr)"},
    )
    lr_decay: str = field(
        default="constant",
        metadata={
            "help": "the client rates over the run's rounds: constant | linear "
            "(to lr/T in the last of T rounds, as FwdLLM decays) | cosine; a "
            "noisy estimate at a constant rate keeps wandering once it has learned"
        },
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "client AdamW decay (paper: torch's 0.01)"}
    )
    dropout: bool = field(
        default=False,
        metadata={
            "help": "train with dropout on (the model in train mode; paper: on); "
            "each step's masks come from its seed, so every pass of a step, and a "
            "backprop check, sees the same masks"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "client batch size"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch"})

    def __post_init__(self) -> None:
        _require(
            self.num_tangents >= 1,
            f"`num-tangents` should be at least 1, got {self.num_tangents}",
        )
        _require(self.zo_eps >= 0, f"`zo-eps` should be >= 0, got {self.zo_eps}")
        _require(
            self.zo_format in self.ZO_FORMATS,
            f"`zo-format` should be one of {self.ZO_FORMATS}, got {self.zo_format!r}",
        )
        _require(
            self.zo_format != "forward" or self.engine == "baffle",
            f"`zo-format` 'forward' applies to baffle; {self.engine} is central",
        )
        _require(
            self.tangent_batch >= 0,
            f"`tangent-batch` should be >= 0, got {self.tangent_batch}",
        )
        _require(
            self.fused_block_mib > 0,
            f"`fused-block-mib` should be > 0, got {self.fused_block_mib}",
        )
        _require(
            self.head_gradient in self.HEAD_GRADIENTS,
            f"`head-gradient` should be one of {self.HEAD_GRADIENTS}, "
            f"got {self.head_gradient!r}",
        )
        _require(
            self.engine == "forward" or self.tangent_distribution == "gaussian",
            f"`tangent-distribution` applies to the forward engine, "
            f"not {self.engine!r}",
        )
        _require(
            0.0 <= self.tangent_guess < 1.0,
            f"`tangent-guess` should be in [0, 1), got {self.tangent_guess}",
        )
        _require(
            self.engine == "forward" or self.tangent_guess == 0.0,
            f"`tangent-guess` applies to the forward engine, not {self.engine!r}",
        )
        _require(
            self.local_epochs >= 1,
            f"`local-epochs` should be at least 1, got {self.local_epochs}",
        )
        _require(self.lr > 0, f"`lr` should be positive, got {self.lr}")
        _require(
            self.client_optimizer in self.OPTIMIZERS,
            f"`client-optimizer` should be one of {self.OPTIMIZERS}, "
            f"got {self.client_optimizer!r}",
        )
        _require(
            self.estimated_optimizer in ("", *self.OPTIMIZERS),
            f"`estimated-optimizer` should be '' or one of {self.OPTIMIZERS}, "
            f"got {self.estimated_optimizer!r}",
        )
        _require(
            self.estimated_lr >= 0,
            f"`estimated-lr` should be >= 0, got {self.estimated_lr}",
        )
        _require(
            self.lr_decay in self.LR_DECAYS,
            f"`lr-decay` should be one of {self.LR_DECAYS}, got {self.lr_decay!r}",
        )
        _require(
            self.weight_decay >= 0,
            f"`weight-decay` should be >= 0, got {self.weight_decay}",
        )
        _require(
            self.batch_size >= 1,
            f"`batch-size` should be at least 1, got {self.batch_size}",
        )

    def at_round(self, server_round: int, num_rounds: int) -> ClientConfig:
        """These settings at round `server_round` (1-based) of `num_rounds`.

        `lr` and `estimated-lr` scaled as `lr-decay` says. The client trains
        with them and the server replays scalar uploads with them, so both must
        ask here.
        """
        if self.lr_decay == "constant" or num_rounds < 1:
            return self
        done = min(max(server_round - 1, 0), num_rounds - 1) / num_rounds
        if self.lr_decay == "linear":
            share = 1.0 - done
        else:
            share = 0.5 * (1.0 + math.cos(math.pi * done))
        return dataclasses.replace(
            self, lr=self.lr * share, estimated_lr=self.estimated_lr * share
        )

    def engine_options(self) -> dict[str, Any]:
        """Keyword options for `spry.engines.make_engine` (None: method default)."""
        options: dict[str, Any] = {
            "num_tangents": self.num_tangents,
            "eps": self.zo_eps or None,
            "fd_format": None if self.zo_format == "auto" else self.zo_format,
        }
        if self.engine == "forward":
            options.update(
                distribution=self.tangent_distribution,
                tangent_batch=self.tangent_batch,
                fused=self.fused_rules,
                block_mib=self.fused_block_mib,
            )
        return options


@dataclass(frozen=True)
class StrategyConfig(_Section):
    """How the server samples, splits, aggregates and steps.

    What only one strategy uses is that strategy's `Options` (`<strategy>.<option>`
    keys, e.g. `baffle.clip`), built and checked by the strategies' registry.
    """

    strategy: str = field(
        default="spry",
        metadata={
            "help": "a strategy of strategies/ (STRATEGIES): spry (local epochs, "
            "weights up), fedsgd (one gradient per round), ...; its own options "
            "are `<strategy>.<option>` keys"
        },
    )
    clients_per_round: int = field(default=10, metadata={"help": "M sampled clients"})
    split: bool = field(
        default=True,
        metadata={"help": "deal tensor groups to clients (false: all train all)"},
    )
    group_size: int = field(default=2, metadata={"help": "tensors per split group"})
    share_head: bool = field(
        default=True,
        metadata={"help": "every client also trains the task head (paper: false)"},
    )
    send_context: bool = field(
        default=True,
        metadata={"help": "send the other trainable tensors read-only with a slice"},
    )
    upload_scalars: bool = field(
        default=False,
        metadata={
            "help": "upload the K scalars of each step instead of tensors; the "
            "server redraws the directions from the seeds"
        },
    )
    server_optimizer: str = field(
        default="yogi",
        metadata={"help": "server step (spry.aggregation.ServerOptimizer.KINDS)"},
    )
    estimated_server_optimizer: str = field(
        default="avg",
        metadata={
            "help": "server step for the tensors whose client gradient is an "
            "estimate (the forward LoRA slices; not an exact head): Yogi/Adam "
            "move every coordinate of a noisy delta by about eta, avg takes the "
            "slices as trained ('': server-optimizer, as the paper and the "
            "baselines step)"
        },
    )
    eta: float = field(
        default=3e-2, metadata={"help": "server learning rate (paper: 1e-2)"}
    )
    beta_1: float = field(default=0.9, metadata={"help": "server first moment"})
    beta_2: float = field(default=0.99, metadata={"help": "server second moment"})
    tau: float = field(default=1e-3, metadata={"help": "server adaptivity"})
    eval_clients_per_round: int = field(
        default=10, metadata={"help": "clients in federated evaluation (0: off)"}
    )
    eval_finetune_epochs: int = field(
        default=0,
        metadata={
            "help": "the paper's metric: each federated evaluation client first "
            "fine-tunes a copy for this many local epochs with the run's engine, "
            "then scores its held-out part (0: score the global model as sent)"
        },
    )

    def __post_init__(self) -> None:
        _require(
            self.clients_per_round >= 1,
            f"`clients-per-round` should be at least 1, got {self.clients_per_round}",
        )
        _require(
            self.group_size >= 1,
            f"`group-size` should be at least 1, got {self.group_size}",
        )
        _require(self.eta > 0, f"`eta` should be positive, got {self.eta}")
        _require(
            self.eval_clients_per_round >= 0,
            f"`eval-clients-per-round` should be >= 0, "
            f"got {self.eval_clients_per_round}",
        )
        _require(
            self.eval_finetune_epochs >= 0,
            f"`eval-finetune-epochs` should be >= 0, got {self.eval_finetune_epochs}",
        )


@dataclass(frozen=True)
class TaskConfig(_Section):
    """What clients learn: a task registered by name (`spry tasks` lists them)."""

    task: str = field(
        default="classification",
        metadata={
            "help": "a registered task (`spry tasks`); its own options are "
            "`<task>.<option>` keys"
        },
    )


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    """Rounds, seed, where results go, and what each simulated client may use."""

    num_server_rounds: int = field(default=20, metadata={"help": "federated rounds"})
    seed: int = field(default=0, metadata={"help": "root seed of every random draw"})
    results_dir: str = field(default="results", metadata={"help": "results folder"})
    client_num_cpus: int = field(default=1, metadata={"help": "CPUs per client"})
    client_num_gpus: float = field(default=0.0, metadata={"help": "GPU per client"})
    round_timeout: float = field(default=3600.0, metadata={"help": "seconds"})
    eval_every: int = field(
        default=1, metadata={"help": "evaluate every this many rounds (and the last)"}
    )
    checkpoint_every: int = field(
        default=1,
        metadata={
            "help": "save weights, server-optimizer state and round to "
            "checkpoint.npz every this many rounds (and the last; 0: never)"
        },
    )
    resume: str = field(
        default="",
        metadata={
            "help": "continue a run from its checkpoint: a checkpoint.npz or the "
            "results folder holding it (same config; empty: start afresh)"
        },
    )

    def __post_init__(self) -> None:
        _require(
            self.num_server_rounds >= 1,
            f"`num-server-rounds` should be at least 1, got {self.num_server_rounds}",
        )
        _require(
            self.client_num_cpus >= 1,
            f"`client-num-cpus` should be at least 1, got {self.client_num_cpus}",
        )
        _require(
            self.eval_every >= 1,
            f"`eval-every` should be at least 1, got {self.eval_every}",
        )
        _require(
            self.checkpoint_every >= 0,
            f"`checkpoint-every` should be >= 0, got {self.checkpoint_every}",
        )

    def evaluates(self, server_round: int) -> bool:
        """Whether round `server_round` is evaluated (round 0 and the last always)."""
        return (
            server_round % self.eval_every == 0
            or server_round == self.num_server_rounds
        )

    def checkpoints(self, server_round: int) -> bool:
        """Whether a checkpoint is saved after round `server_round` (never round 0)."""
        if not self.checkpoint_every or server_round < 1:
            return False
        return (
            server_round % self.checkpoint_every == 0
            or server_round == self.num_server_rounds
        )


@dataclass(frozen=True)
class SimulationConfig(_Section):
    """Simulated devices: memory budgets, speeds and faults.

    The device mix and the fault shares are checked against `spry.devices`'
    catalogue and `spry.faults.FaultPlan` by the resolving step.
    """

    ORPHAN_SLICES: ClassVar[tuple[str, ...]] = ("reassign", "skip")

    device_profiles: str = field(
        default="",
        metadata={
            "help": "device mix, e.g. phone-4gb:0.5,laptop-16gb:0.5 (empty: every "
            "client is the host, no budget); `spry devices` lists profiles"
        },
    )
    device_catalog: str = field(
        default="", metadata={"help": "TOML file of extra device profiles"}
    )
    memory_margin: float = field(
        default=0.1,
        metadata={"help": "predicted peak x (1 + margin) must fit a device budget"},
    )
    round_deadline: float = field(
        default=0.0,
        metadata={
            "help": "device-seconds the server waits for a round's replies "
            "(0: `round-timeout`); later replies are dropped"
        },
    )
    fault_crash: float = field(
        default=0.0, metadata={"help": "share of sampled clients that crash"}
    )
    fault_timeout: float = field(
        default=0.0, metadata={"help": "share of sampled clients that never answer"}
    )
    fault_straggle: float = field(
        default=0.0,
        metadata={"help": "share of sampled clients whose device is slowed down"},
    )
    straggle_factor: float = field(
        default=4.0, metadata={"help": "a straggler's device takes this many times"}
    )
    orphan_slices: str = field(
        default="reassign",
        metadata={
            "help": "groups whose clients all failed: reassign (a second wave to "
            "unsampled clients) | skip"
        },
    )

    def __post_init__(self) -> None:
        _require(
            self.memory_margin >= 0,
            f"`memory-margin` should be >= 0, got {self.memory_margin}",
        )
        _require(
            self.round_deadline >= 0,
            f"`round-deadline` should be >= 0, got {self.round_deadline}",
        )
        _require(
            self.orphan_slices in self.ORPHAN_SLICES,
            f"`orphan-slices` should be one of {self.ORPHAN_SLICES}, "
            f"got {self.orphan_slices!r}",
        )


@dataclass(frozen=True)
class RunConfig:
    """The whole run: one section per concern, all built from one flat mapping."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    # The selected task's `<task>.<option>` values, sorted by option; typed and
    # completed with the task's defaults by the resolving step (the task's Options)
    task_options: tuple[tuple[str, ConfigValue], ...] = ()
    # The selected strategy's `<strategy>.<option>` values, sorted by option; typed
    # and completed with the strategy's defaults above the library, by the
    # strategies' registry (`strategies.resolve`), which knows its Options
    strategy_options: tuple[tuple[str, ConfigValue], ...] = ()

    SECTIONS: ClassVar[dict[str, type[_Section]]] = {
        "model": ModelConfig,
        "data": DataConfig,
        "client": ClientConfig,
        "strategy": StrategyConfig,
        "runtime": RuntimeConfig,
        "simulation": SimulationConfig,
        "task": TaskConfig,
    }

    def __post_init__(self) -> None:
        _require(
            self.strategy.clients_per_round <= self.data.num_clients,
            f"`clients-per-round` ({self.strategy.clients_per_round}) should not "
            f"exceed `num-clients` ({self.data.num_clients})",
        )
        _require(
            self.strategy.eval_clients_per_round <= self.data.num_clients,
            f"`eval-clients-per-round` ({self.strategy.eval_clients_per_round}) "
            f"should not exceed `num-clients` ({self.data.num_clients})",
        )
        self._check_combination()

    def _check_combination(self) -> None:
        """Options that are each valid but do not go together, named before any work.

        Those that need to know which engines are directional are the resolving
        step's (`spry.resolve`); what a strategy cannot take (an engine, local
        epochs) is the strategy's own check (`strategies.resolve`).
        """
        engine = self.client.engine
        _require(
            not self.strategy.upload_scalars
            or engine != "forward"
            or self.client.head_gradient == "shared",
            "`upload-scalars` with `head-gradient` 'exact': the server rebuilds "
            "random directions only; use `head-gradient` 'shared'",
        )
        _require(
            not (self.strategy.upload_scalars and self.client.tangent_guess),
            "`upload-scalars` with `tangent-guess`: the server rebuilds plain random "
            "directions only; set `tangent-guess` to 0",
        )

    @classmethod
    def keys(cls) -> list[str]:
        return [key for section in cls.SECTIONS.values() for key in section.keys()]

    @classmethod
    def from_run_config(cls, values: Mapping[str, ConfigValue]) -> RunConfig:
        """Build from Flower's `context.run_config` or a message's ConfigRecord.

        Unknown keys are an error (a typo must not silently fall back to a default);
        keys Flower itself injects, such as `server-round`, are ignored. The
        selected task's `<task>.<option>` keys and the selected strategy's
        `<strategy>.<option>` keys are kept as given; other tasks' are left out (a
        pyproject may carry several tasks' tables). Checking a task's options is
        `spry.resolve.resolve`'s job, a strategy's the strategies' registry's.
        """
        known = set(cls.keys())
        unknown = sorted(
            k for k in values if k not in known and k not in _TRANSIENT and "." not in k
        )
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown}; valid keys: {sorted(known)}"
            )
        sections = {
            name: section.from_mapping(values) for name, section in cls.SECTIONS.items()
        }
        task = sections["task"].task  # type: ignore[attr-defined]
        strategy = sections["strategy"].strategy  # type: ignore[attr-defined]
        return cls(
            **sections,  # type: ignore[arg-type]
            task_options=_prefixed(values, task),
            strategy_options=_prefixed(values, strategy),
        )

    def to_mapping(self) -> dict[str, ConfigValue]:
        """The flat kebab-case mapping (round-trips through `from_run_config`)."""
        flat: dict[str, ConfigValue] = {}
        for name in self.SECTIONS:
            flat.update(getattr(self, name).to_mapping())
        flat.update({f"{self.task.task}.{k}": v for k, v in self.task_options})
        flat.update(
            {f"{self.strategy.strategy}.{k}": v for k, v in self.strategy_options}
        )
        return flat


def _prefixed(
    values: Mapping[str, ConfigValue], name: str
) -> tuple[tuple[str, ConfigValue], ...]:
    """The `<name>.<option>` values of `values` as sorted (option, value) pairs."""
    return tuple(
        sorted(
            (key.partition(".")[2], value)
            for key, value in values.items()
            if key.partition(".")[0] == name and "." in key
        )
    )


def default_values() -> dict[str, ConfigValue]:
    """Every key with its default: the table `[tool.flwr.app.config]` mirrors."""
    return RunConfig().to_mapping()


# Keys that travel in messages but are not part of a run's configuration.
_TRANSIENT = frozenset({"server-round"})
