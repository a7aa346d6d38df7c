"""Server checkpoints: what a killed run needs to resume and end where it would have.

After each round (every `checkpoint-every` rounds, and the last) the ServerApp
rewrites one file, `checkpoint.npz` in the run's results folder: the round number,
the global trainable weights, the strategy's state (the server optimizer's moments
and whatever a strategy carries from round to round, e.g. FwdLLM's pool), the run's
per-round records and its config. Clients keep nothing between rounds and every
draw is a function of (seed, round), so rounds k+1..N of a run resumed from round
k's checkpoint send the same messages and compute the same numbers as those of an
uninterrupted run.

The file is written atomically (a temporary file, then `os.replace`), so a run
killed mid-write leaves the previous checkpoint whole. Arrays are stored as they
are (no pickling); everything else is one JSON text entry.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spry.config import ConfigError, ConfigValue, RunConfig, default_values
from spry.flatten import flatten, unflatten

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT = 1  # bump when the layout changes; older files are refused, not misread

# Keys a resumed run may set differently: where results go, how often checkpoints
# are written, and the resume path itself. Every other key can change the numbers
# of the rounds still to run, so a difference there is refused.
RESUME_FREE_KEYS = frozenset({"resume", "checkpoint-every", "results-dir"})

# Keys a strategy's `Options` took over (`<strategy>.<option>`): a checkpoint written
# before keeps resuming, with the value its own strategy used.
RETIRED_KEYS = {
    "baffle-clip": "baffle.clip",
    "fwdllm-var-threshold": "fwdllm.var-threshold",
    "fwdllm-max-repeats": "fwdllm.max-repeats",
    "fwdllm-candidates": "fwdllm.candidates",
}

# Entries: "meta" (the JSON), "weights/<tensor>", "strategy/<its own keys>" (e.g.
# "strategy/optimizer/m/<tensor>"), packed by `spry.flatten`.
_META = "meta"
_WEIGHTS = "weights"
_STRATEGY = "strategy"


@dataclass
class Checkpoint:
    """The state of a run after round `server_round`.

    Parameters
    ----------
    server_round : int
        The last round completed; a resumed run starts at the next one.
    weights : dict[str, np.ndarray]
        The global trainable tensors after that round.
    config : dict[str, ConfigValue]
        The run's flat config (`RunConfig.to_mapping()`).
    strategy_arrays : dict[str, Any] (default: {})
        The strategy's array state, a nested mapping of arrays (server-optimizer
        moments under "optimizer", ...).
    strategy_state : dict[str, Any] (default: {})
        The strategy's JSON state (round log, feature center, counters).
    recorder_state : dict[str, Any] (default: {})
        The results recorder's rows and notes, so metrics.csv stays complete.
    path : Path | None (default: None)
        Where it was read from or written to.
    """

    server_round: int
    weights: dict[str, np.ndarray]
    config: dict[str, ConfigValue]
    strategy_arrays: dict[str, Any] = field(default_factory=dict)
    strategy_state: dict[str, Any] = field(default_factory=dict)
    recorder_state: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def check_config(self, cfg: RunConfig) -> None:
        """Refuse to resume under a config that would compute different rounds.

        A key the checkpoint lacks (one added to Spry since) counts as its default.
        """
        defaults = {k: v for k, v in default_values().items() if "." not in k}
        old, new = {**defaults, **self.config}, cfg.to_mapping()
        differ = sorted(
            key
            for key in set(old) | set(new)
            if key not in RESUME_FREE_KEYS and old.get(key) != new.get(key)
        )
        if differ:
            changes = ", ".join(
                f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
                for k in differ
            )
            raise ConfigError(
                f"cannot resume from {self.path}: it was written by a run with a "
                f"different config ({changes}); resume with the same settings"
            )

    def check_weights(self, reference: Mapping[str, np.ndarray]) -> None:
        """Refuse weights whose names or shapes are not the model's."""
        shapes = {k: tuple(v.shape) for k, v in self.weights.items()}
        expected = {k: tuple(np.shape(v)) for k, v in reference.items()}
        if shapes != expected:
            wrong = sorted(set(shapes) ^ set(expected)) or sorted(
                k for k in shapes if shapes[k] != expected[k]
            )
            raise ConfigError(
                f"cannot resume from {self.path}: its weights do not fit the model "
                f"(tensors differing in name or shape: {wrong[:5]})"
            )


def checkpoint_path(location: str | Path) -> Path:
    """The checkpoint file `location` names: the file, or a results folder's one."""
    path = Path(location)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def save(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically; return the path."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "server-round": checkpoint.server_round,
        "config": checkpoint.config,
        "strategy": checkpoint.strategy_state,
        "recorder": checkpoint.recorder_state,
    }
    arrays = {_WEIGHTS: checkpoint.weights, _STRATEGY: checkpoint.strategy_arrays}
    entries: dict[str, np.ndarray] = {
        _META: np.frombuffer(json.dumps(meta, default=_plain).encode(), dtype=np.uint8),
        **{k: np.asarray(v) for k, v in flatten(arrays).items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **entries)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)  # (a SIGKILL leaves it; the next save reuses it)
        raise
    checkpoint.path = path
    return path


def load(location: str | Path) -> Checkpoint:
    """Read the checkpoint `location` names (a file or a results folder)."""
    path, meta, weights, strategy_arrays = _read(location, arrays=True)
    return Checkpoint(
        server_round=int(meta["server-round"]),
        weights=weights,
        config=meta["config"],
        strategy_arrays=strategy_arrays,
        strategy_state=meta["strategy"],
        recorder_state=meta["recorder"],
        path=path,
    )


def read_config(location: str | Path) -> dict[str, ConfigValue]:
    """The config a checkpoint was written under (its arrays are not read)."""
    config: dict[str, ConfigValue] = _read(location, arrays=False)[1]["config"]
    return config


def _read(
    location: str | Path, *, arrays: bool
) -> tuple[Path, dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """(path, JSON entry, weights, strategy arrays); arrays empty unless asked."""
    path = checkpoint_path(location)
    if not path.is_file():
        raise ConfigError(f"resume: no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta: dict[str, Any] = json.loads(npz[_META].tobytes().decode())
            tree = (
                unflatten({k: npz[k] for k in npz.files if k != _META})
                if arrays
                else {}
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ConfigError(f"resume: cannot read checkpoint {path}: {error}") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(
            f"resume: {path} has checkpoint format {meta.get('format')}, "
            f"this version reads {FORMAT}"
        )
    meta["config"] = _renamed(meta["config"])
    return path, meta, tree.get(_WEIGHTS, {}), tree.get(_STRATEGY, {})


def _renamed(config: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
    """`config` with its retired keys under their new names.

    Only the run's strategy's are kept: the others' never applied to the run.
    """
    renamed = {k: v for k, v in config.items() if k not in RETIRED_KEYS}
    for old, new in RETIRED_KEYS.items():
        if old in config and new.partition(".")[0] == config.get("strategy"):
            renamed.setdefault(new, config[old])
    return renamed


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays that strategies' logs may hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
