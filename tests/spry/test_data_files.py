"""A user's own data: local CSV, TSV, JSONL and Parquet files, or a folder of them.

The files are written here, read through the same loader a run uses, and must come
out as `text` and `label` columns with the classes named by the labels found.
"""

from __future__ import annotations

import json

import datasets
import pytest

from spry.config import DataConfig
from spry.data import load_for, load_text_dataset
from spry.data.sources import DataError

ROWS = [(f"sentence number {i}", "spam" if i % 4 == 0 else "ham") for i in range(40)]


def _write_csv(path, rows, header=("text", "label"), sep=","):
    lines = [sep.join(header)] + [f"{t}{sep}{lab}" for t, lab in rows]
    path.write_text("\n".join(lines) + "\n")


def _texts_and_labels(data):
    names = data.label_names
    both = [*zip(data.train["text"], data.train["label"], strict=True)]
    both += [*zip(data.test["text"], data.test["label"], strict=True)]
    return sorted((text, names[label]) for text, label in both)


def test_a_csv_file_loads_with_string_labels_encoded_as_classes(tmp_path):
    path = tmp_path / "mine.csv"
    _write_csv(path, ROWS)

    data = load_text_dataset(str(path), test_fraction=0.25)

    assert set(data.label_names) == {"ham", "spam"}
    assert _texts_and_labels(data) == sorted(ROWS)
    assert len(data.test) == 10
    # stratified: the minority class keeps its share in the test split
    spam = data.label_names.index("spam")
    assert data.test["label"].count(spam) in (2, 3)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "tsv"])
def test_jsonl_parquet_and_tsv_files_give_the_same_examples(tmp_path, kind):
    path = tmp_path / f"mine.{kind}"
    if kind == "jsonl":
        path.write_text(
            "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS)
        )
    elif kind == "tsv":
        _write_csv(path, ROWS, sep="\t")
    else:
        datasets.Dataset.from_dict(
            {"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]}
        ).to_parquet(str(path))

    data = load_text_dataset(str(path), test_fraction=0.25)

    assert _texts_and_labels(data) == sorted(ROWS)


def test_a_folder_of_csv_files_is_one_dataset(tmp_path):
    _write_csv(tmp_path / "a.csv", ROWS[:20])
    _write_csv(tmp_path / "b.csv", ROWS[20:])

    data = load_text_dataset(str(tmp_path), test_fraction=0.25)

    assert _texts_and_labels(data) == sorted(ROWS)


def test_named_columns_are_used_and_a_missing_one_fails_naming_the_columns(tmp_path):
    path = tmp_path / "odd.csv"
    _write_csv(path, ROWS, header=("question", "category"))

    with pytest.raises(DataError) as error:
        load_text_dataset(str(path))
    message = str(error.value)
    assert "\n" not in message
    assert "['question', 'category']" in message and "text-column" in message

    data = load_for(
        DataConfig(
            dataset=str(path),
            text_column="question",
            label_column="category",
            test_fraction=0.25,
        )
    )
    assert _texts_and_labels(data) == sorted(ROWS)


def test_missing_files_and_mixed_folders_fail_in_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text_dataset(str(tmp_path / "nope.csv"))
    (tmp_path / "a.csv").write_text("text,label\nx,1\n")
    (tmp_path / "b.jsonl").write_text('{"text": "y", "label": 0}\n')
    with pytest.raises(DataError, match="files of one kind"):
        load_text_dataset(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no data files"):
        load_text_dataset(str(empty))
