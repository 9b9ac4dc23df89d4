"""The duplicate-id check of a score store, on the workers with bounded memory.

Ids repeated across partitions are refused (a partition checks its own when read). The
whole-array way (every id hash concatenated and sorted on the client) holds 8 bytes a
row; here each partition writes its id hashes, sorted, to a hidden folder of the score
store (:data:`IDS_DIR`, listed by ``Scores.write`` so that ``--overwrite`` deletes what a
killed job left), then hash-range *buckets* of about :data:`BUCKET_ROWS` rows each read
their slice of every partition's file (memory-mapped, cut with a binary search) and
report the hashes held twice, with the first two places. The client holds the
duplicates only, and names both places as :meth:`Corpus.check_unique_ids` does (same
error). Scores that are not a store (lazy ``scorer.score(pool)`` in Python) have no folder
to write to, and a store in an object store or one the user may only read is not written
to: their hashes are checked on the client, 8 bytes a row.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dataselect import storage
from dataselect.execution import Runner, partition_tasks
from dataselect.output import part_name
from dataselect.sampling import id_hashes

IDS_DIR = ".ids"
BUCKET_ROWS = 1 << 21

# places of one repeated hash: its first two (partition, position), in pool order
Places = list[tuple[int, int]]


def ids_names(npartitions: int) -> list[str]:
    """The files the check writes in a store (for ``OutputFolder.expect``)."""
    return [os.path.join(IDS_DIR, name) for i in range(npartitions)
            for name in _file_names(i)]


def _file_names(index: int) -> tuple[str, str]:
    stem = part_name(index).rsplit(".", 1)[0]
    return f"{stem}.hash.npy", f"{stem}.row.npy"


def check_unique_ids(scores: Any, runner: Runner) -> None:
    """Refuse ids repeated across the partitions of ``scores`` (see the module); once per
    Scores object, which several policies may select from."""
    if getattr(scores, "ids_checked", False):
        return
    folder = _store_folder(scores.task)
    ids = _ids_folder(folder) if folder is not None else None
    if ids is None:
        hashes = runner(f"ids:{scores.name}", scores.delayed(_hashes))
        scores.corpus.check_unique_ids(hashes)
        scores.ids_checked = True
        return
    try:
        counts = runner(f"ids:{scores.name}", scores.delayed(_WriteHashes(ids)))
        buckets = max(1, -(-sum(counts) // BUCKET_ROWS))
        found = runner(f"duplicates:{scores.name}", partition_tasks(
            "duplicates", _Bucket(ids, tuple(counts), buckets), buckets))
    finally:
        shutil.rmtree(ids, ignore_errors=True)
    for places in (p for bucket in found for p in bucket):  # in hash order, as on the client
        scores.corpus.refuse_repeated(places)
    scores.ids_checked = True


def _store_folder(task: Any) -> str | None:
    """The score store a task reads, or the first store of scores it combines (their ids
    are checked to be the same, row for row); None for scores computed on the fly."""
    if isinstance(getattr(task, "folder", None), str):
        return task.folder
    return next((f for t in getattr(task, "tasks", ()) if (f := _store_folder(t))), None)


def _ids_folder(store: str) -> str | None:
    """The store's hidden folder of id hashes, made empty; None where it cannot be made
    (a store the user may only read, or one in an object store, where a bucket could not
    memory-map the files: the check then runs on the client)."""
    if storage.is_remote(store):
        return None
    path = os.path.join(store, IDS_DIR)
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.makedirs(path)
    except OSError:
        return None
    return path


def _hashes(table: pa.Table, index: int) -> np.ndarray:
    return id_hashes(table["id"])


@dataclass(frozen=True)
class _WriteHashes:
    """Per partition: write its id hashes sorted, and their rows; return the row count."""

    folder: str

    def __call__(self, table: pa.Table, index: int) -> int:
        hashes = id_hashes(table["id"])
        order = np.argsort(hashes, kind="stable")
        for name, values in zip(_file_names(index), (hashes[order], order.astype(np.int64))):
            np.save(os.path.join(self.folder, name), values)
        return len(hashes)


@dataclass(frozen=True)
class _Bucket:
    """Bucket ``b`` of ``buckets`` equal hash ranges: the places of each hash in its range
    that two partitions hold."""

    folder: str
    counts: tuple[int, ...]
    buckets: int

    def __call__(self, bucket: int) -> list[Places]:
        low, high = (((bucket + i) << 64) // self.buckets for i in (0, 1))
        hashes, partitions, rows = [], [], []
        for index, count in enumerate(self.counts):
            if not count:
                continue
            hash_name, row_name = (os.path.join(self.folder, n) for n in _file_names(index))
            mine = np.load(hash_name, mmap_mode="r")
            start = int(np.searchsorted(mine, np.uint64(low)))
            stop = count if high >> 64 else int(np.searchsorted(mine, np.uint64(high)))
            if stop > start:
                hashes.append(np.array(mine[start:stop]))
                rows.append(np.array(np.load(row_name, mmap_mode="r")[start:stop]))
                partitions.append(np.full(stop - start, index, np.int64))
        return _repeated(hashes, partitions, rows)


def _repeated(hashes: list[np.ndarray], partitions: list[np.ndarray],
              rows: list[np.ndarray]) -> list[Places]:
    """The first two places of every hash that occurs more than once."""
    if not hashes:
        return []
    values = np.concatenate(hashes)
    order = np.argsort(values, kind="stable")  # stable: places stay in pool order
    values = values[order]
    partition, row = np.concatenate(partitions)[order], np.concatenate(rows)[order]
    first = np.flatnonzero(np.diff(values) == 0)
    starts = first[np.concatenate([[True], values[first[1:]] != values[first[:-1]]])] \
        if len(first) else first
    return [[(int(partition[i]), int(row[i])), (int(partition[i + 1]), int(row[i + 1]))]
            for i in starts]
