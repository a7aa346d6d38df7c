"""Prompt -> response pairs for supervised fine-tuning, from a user's files or the hub.

The files are read the way labelled sentences are (`spry.data.sources`): a local
CSV, TSV, JSONL/JSON or Parquet file, or a folder of files of one kind, through
`datasets`' own builders; anything else is tried as a Hugging Face dataset id. The
prompt and response columns are found by their usual names (instruction-tuning sets
say "instruction"/"output", QA sets "question"/"answer") or named by the caller.

The result has `prompt` and `response` string columns (and `kind`, when the data
has one, for per-kind scores and partitions), split once into train and a fixed
test part (seed 0, independent of the run's seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import datasets

from .sources import SPLIT_SEED, DataError, _from_hub, _local_files, _read_files

PROMPT_COLUMNS = ("prompt", "instruction", "question", "input", "query")
RESPONSE_COLUMNS = ("response", "answer", "output", "completion", "target")
KIND_COLUMN = "kind"


@dataclass(frozen=True)
class PairDataset:
    """Prompt/response pairs with their fixed test split.

    Parameters
    ----------
    train : datasets.Dataset
        Columns `prompt`, `response` (str) and, when the source has one, `kind`.
    test : datasets.Dataset
        The central test split, same columns.
    """

    train: datasets.Dataset
    test: datasets.Dataset


def _pick(columns: list[str], named: str, usual: tuple[str, ...]) -> str:
    if named:
        return named
    lowered = {c.lower(): c for c in columns}
    return next((lowered[u] for u in usual if u in lowered), "")


def prompt_and_response(
    name: str,
    loaded: datasets.Dataset,
    prompt_column: str = "",
    response_column: str = "",
) -> datasets.Dataset:
    """`loaded` reduced to string `prompt` and `response` columns (and `kind`).

    A column that is missing fails in one line naming the columns found.
    """
    columns = loaded.column_names
    prompt = _pick(columns, prompt_column, PROMPT_COLUMNS)
    response = _pick(columns, response_column, RESPONSE_COLUMNS)
    if prompt not in columns or response not in columns or prompt == response:
        wanted_prompt = (
            repr(prompt_column) if prompt_column else f"one of {PROMPT_COLUMNS}"
        )
        wanted_response = (
            repr(response_column) if response_column else f"one of {RESPONSE_COLUMNS}"
        )
        raise DataError(
            f"dataset {name!r} needs a prompt column ({wanted_prompt}) and a "
            f"response column ({wanted_response}); its columns are {columns} "
            "(name them with --set sft.prompt-column=... "
            "--set sft.response-column=...)"
        )
    keep = [prompt, response] + ([KIND_COLUMN] if KIND_COLUMN in columns else [])
    loaded = loaded.select_columns(keep)
    renames = {prompt: "prompt", response: "response"}
    loaded = loaded.rename_columns({o: n for o, n in renames.items() if o != n})
    # numbers, lists, None: everything becomes the text a model reads and writes
    strings = datasets.Features(
        {c: datasets.Value("string") for c in loaded.column_names}
    )
    if loaded.features != strings:
        loaded = loaded.map(
            lambda row: {c: "" if v is None else str(v) for c, v in row.items()},
            features=strings,
        )
    return loaded


def read_pairs(
    name: str, prompt_column: str = "", response_column: str = ""
) -> datasets.Dataset:
    """All pairs of a local file or folder, or of a hub dataset's train split."""
    local = _local_files(name)
    loaded = _from_hub(name) if local is None else _read_files(name, *local)
    return prompt_and_response(name, loaded, prompt_column, response_column)


@lru_cache(maxsize=4)
def load_pairs(
    name: str,
    test_fraction: float = 0.1,
    prompt_column: str = "",
    response_column: str = "",
) -> PairDataset:
    """The pairs called `name`, split once into train and a fixed test part."""
    full = read_pairs(name, prompt_column, response_column)
    if len(full) < 2:
        raise DataError(f"dataset {name!r} has {len(full)} prompt/response pairs")
    split = full.train_test_split(test_size=test_fraction, seed=SPLIT_SEED)
    return PairDataset(train=split["train"], test=split["test"])
