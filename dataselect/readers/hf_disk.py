"""Hugging Face dataset folders written by ``Dataset.save_to_disk``: the memory-mapped table
behind the folder, cut into row ranges of about the partition size."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from dataselect.checks import check_hf_data_files, check_regular_file, read_hf_state, shown
from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, read_json_file
from dataselect.readers.arrow import check_stream_end
from dataselect.readers.base import Piece, register
from dataselect.readers.tabular import TabularReader

HF_MARKERS = ("dataset_info.json", "state.json")


@register
class HfDiskReader(TabularReader):
    """A ``save_to_disk`` folder (one split; a ``DatasetDict`` folder lists its splits)."""

    kind = "hf"
    label = "Hugging Face dataset folder"
    folder = True
    requires = ("datasets",)

    @classmethod
    def claims(cls, path: str) -> bool:
        return is_hf_dataset_dir(path)

    def plan(self, path: str, target_bytes: int) -> list[Piece]:
        for data_file in sorted(Path(path).glob("*.arrow")):  # save_to_disk writes streams
            # a FIFO named like a shard would block this read of its end for ever
            check_regular_file(data_file)
            check_stream_end(str(data_file), data_file.name)
        table = _hf_table(path)
        total, nbytes = table.num_rows, max(table.nbytes, 1)
        rows_per_piece = max(1, int(total * target_bytes / nbytes))
        return [
            Piece(path, self.kind, first, min(rows_per_piece, total - first),
                  size_bytes=int(nbytes * min(rows_per_piece, total - first) / max(total, 1)))
            for first in range(0, max(total, 1), rows_per_piece)
        ]

    def schema(self, piece: Piece) -> pa.Schema:
        return _hf_table(piece.path).schema

    def read_rows(self, piece: Piece) -> pa.Table:
        return _hf_table(piece.path).slice(piece.first_row, piece.num_rows)


def is_hf_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, m)) for m in HF_MARKERS)


DATASET_DICT = "dataset_dict.json"


def datasetdict_splits(path: str) -> tuple[list[str], list[str]]:
    """The split folders a ``DatasetDict.save_to_disk`` folder's ``dataset_dict.json``
    lists, in its order, and the dataset folders beside them it does not list.

    Why: ``datasets.load_from_disk`` reads exactly the listed splits, so reading every
    dataset subfolder took an unlisted ``test`` split or a hidden ``.old`` copy as pool
    rows, and a listed split that was not a plain child name (``../hf``) was dropped
    without a word. A listed name must be a folder of this one (not ``.``, ``..``, a path
    or an absolute name) holding a save_to_disk dataset; a malformed ``splits`` value is
    refused, naming the file, as ``load_from_disk`` fails on it."""
    where = os.path.join(path, DATASET_DICT)
    check_regular_file(where)
    try:
        splits = read_json_file(where)["splits"]
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror or exc})", where=where) from None
    except (UnreadableJSON, KeyError, TypeError):
        raise InputError("is not a DatasetDict record (a JSON object whose 'splits' lists "
                         "its split folders): restore it, or save the DatasetDict again",
                         where=where) from None
    if not isinstance(splits, list) or not splits:
        raise InputError(f"holds {shown(splits)}, not a non-empty list of split names: "
                         "restore it, or save the DatasetDict again", where=where,
                         field="splits")
    folders = []
    for name in splits:
        plain = (isinstance(name, str) and name not in ("", ".", "..")
                 and not any(c in name for c in ("/", "\\", "\0")))
        if not plain:
            raise InputError(f"lists {shown(name)}, which is not the name of a folder in "
                             f"{path}: list the split folders by name", where=where,
                             field="splits")
        folder = os.path.join(path, name)
        if not is_hf_dataset_dir(folder):
            raise InputError(f"lists the split {shown(name)}, but {folder} is no "
                             "save_to_disk folder (dataset_info.json and state.json): "
                             "restore it, or drop the split from the list", where=where,
                             field="splits")
        if folder in folders:
            raise InputError(f"lists the split {shown(name)} twice: list each split once",
                             where=where, field="splits")
        folders.append(folder)
    unlisted = sorted(entry.name for entry in os.scandir(path)
                      if os.path.join(path, entry.name) not in folders
                      and is_hf_dataset_dir(entry.path))
    return folders, unlisted


def hf_data_files(path: str) -> list[str]:
    """The data files a ``save_to_disk`` folder's ``state.json`` lists (none when it
    cannot be read, or names a file not its own: the folder's own reading, or
    :func:`~dataselect.checks.check_hf_data_files` when the corpus is planned, then names
    the problem). A FIFO or device there is refused: reading it would wait forever."""
    check_regular_file(os.path.join(path, "state.json"))
    try:
        return check_hf_data_files(path)
    except InputError:
        return []


@lru_cache(maxsize=8)
def _hf_table(path: str) -> pa.Table:
    """The (memory-mapped) Arrow table behind an HF dataset saved with ``save_to_disk``:
    the data files ``state.json`` lists (checked to be files of the folder), each mapped
    with the features of ``dataset_info.json``, as ``datasets.load_from_disk`` maps them.
    Not ``load_from_disk`` itself: it also applies the split name, fingerprint and output
    format ``state.json`` records, none of which makes the rows (every column is read as
    Arrow), and an edited one (``"_split": "../../etc"``, ``"_format_columns": ["nope"]``)
    ended the job in a traceback: they are checked as it applies them
    (:func:`_check_state`), naming the key."""
    import datasets

    if os.path.isfile(os.path.join(path, DATASET_DICT)):
        raise InputError("point at one split folder of a DatasetDict", where=path)
    files = check_hf_data_files(path)
    if not files:
        raise InputError("lists no data files; a save_to_disk folder lists at least one: "
                         "restore it, or save the dataset again",
                         where=os.path.join(path, "state.json"), field="_data_files")
    info = _hf_info(path)
    try:
        dataset = datasets.concatenate_datasets(
            [datasets.Dataset.from_file(file, info=info) for file in files])
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"does not describe the columns of the data files ({_first_line(exc)})"
                         "; restore it, or save the dataset again",
                         where=os.path.join(path, "dataset_info.json"),
                         field="features") from None
    _check_state(path, dataset)
    return dataset.with_format("arrow")[:]


# the keys of state.json that load_from_disk reads
STATE_KEYS = ("_data_files", "_fingerprint", "_format_columns", "_format_kwargs",
              "_format_type", "_output_all_columns", "_split")


def _check_state(path: str, dataset: Any) -> None:
    """Refuse a ``state.json`` that ``datasets.load_from_disk`` would fail to apply to
    ``dataset``, naming the key: a folder every other reader of it refuses is damaged, so
    its rows are not taken as they are. Checked by applying each key as it does (a split
    name, then the output format: its type, columns and the rest)."""
    import datasets

    state = read_hf_state(path)
    where = os.path.join(path, "state.json")
    if (missing := next((key for key in STATE_KEYS if key not in state), None)) is not None:
        raise InputError("lacks this key, which save_to_disk writes; restore it, or save "
                         "the dataset again", where=where, field=missing)
    formats = {"type": state["_format_type"], "columns": state["_format_columns"],
               "format_kwargs": state["_format_kwargs"],
               "output_all_columns": state["_output_all_columns"]}
    steps = (("_split", lambda: state["_split"] is None or datasets.Split(state["_split"])),
             ("_format_type", lambda: dataset.with_format(type=formats["type"])),
             ("_format_columns", lambda: dataset.with_format(formats["type"],
                                                             formats["columns"])),
             ("_format_kwargs", lambda: dataset.with_format(**formats)))
    for key, step in steps:
        try:
            step()
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InputError(f"holds {shown(state[key])}, which datasets cannot load "
                             f"({_first_line(exc)}); restore it, or save the dataset again",
                             where=where, field=key) from None


def _hf_info(path: str) -> Any:
    """The ``datasets.DatasetInfo`` of ``dataset_info.json``, or one line naming it."""
    import datasets

    file = os.path.join(path, "dataset_info.json")
    check_regular_file(file)
    try:
        return datasets.DatasetInfo.from_directory(path)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"is not a Hugging Face dataset_info.json ({_first_line(exc)}); "
                         "restore it, or save the dataset again", where=file) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
