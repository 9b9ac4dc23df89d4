"""Hugging Face dataset folders written by ``Dataset.save_to_disk``: the memory-mapped table
behind the folder, cut into row ranges of about the partition size."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from dataselect.checks import check_hf_data_files, check_regular_file
from dataselect.errors import InputError
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
    """The (memory-mapped) Arrow table behind an HF dataset saved with ``save_to_disk``."""
    import datasets

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        raise InputError("point at one split folder of a DatasetDict", where=path)
    return dataset.with_format("arrow")[:]
