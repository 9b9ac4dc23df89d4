"""The duplicate-id check of a score store, on the workers with bounded memory.

Ids repeated across partitions are refused (a partition checks its own when read). The
whole-array way (every id hash concatenated and sorted on the client) holds 8 bytes a
row; here it is a two-level shuffle through a hidden folder of the score store
(:data:`IDS_DIR`, listed by ``Scores.write`` so that ``--overwrite`` deletes what a killed
job left):

1. each partition writes its id hashes, sorted, and their rows (``ids``);
2. runs of consecutive partitions of about :data:`BUCKET_ROWS` rows in all are merged into
   one *group* file each, sorted by hash, with each hash's partition and row
   (``duplicates``, first half);
3. hash-range *buckets* of about :data:`BUCKET_ROWS` rows each read their slice of every
   group file (memory-mapped, cut with a binary search) and report the hashes held twice,
   with their first two places.

Buckets used to read every partition's files: P × B opens, 56 s of a 10⁸-row job and,
growing with the square of the pool, most of a 10⁹-row one. Through groups it is
P + G × B opens, with G and B both about rows / :data:`BUCKET_ROWS` (48 × 48 at 10⁸ rows
instead of 1,530 × 48 × 2). The client holds the duplicates only, and names both places
as :meth:`Corpus.check_unique_ids` does (same error). Scores that are not a store (lazy
``scorer.score(pool)`` in Python) have no folder to write to, and a store in an object
store or one the user may only read is not written to: their hashes are checked on the
client, 8 bytes a row.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
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
# from this many buckets on, partitions are merged into groups first: below it, the merge
# pass costs more than the opens it saves (0.6x at 2*10^6 rows, 1 bucket; 1.7x faster at
# 2*10^7 rows, 10 buckets; benchmarks/bench_duplicates.py)
GROUP_FROM_BUCKETS = 4

# places of one repeated hash: its first two (partition, position), in pool order
Places = list[tuple[int, int]]


def ids_names(npartitions: int) -> list[str]:
    """The files the check may write in a store (for ``OutputFolder.expect``): a
    partition's and, at most one a partition, a group's."""
    return [os.path.join(IDS_DIR, name) for i in range(npartitions)
            for name in (*_file_names(i), *_group_names(i))]


def _file_names(index: int) -> tuple[str, str]:
    stem = part_name(index).rsplit(".", 1)[0]
    return f"{stem}.hash.npy", f"{stem}.row.npy"


def _group_names(index: int) -> tuple[str, str, str]:
    stem = f"group-{index:05d}"
    return f"{stem}.hash.npy", f"{stem}.part.npy", f"{stem}.row.npy"


def groups_of(counts: Sequence[int], rows: int | None = None) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of consecutive partitions holding about ``rows`` rows in
    all: a run closes once it reaches ``rows`` (so one partition larger than that is a
    group of its own), and empty partitions join the run they fall in."""
    rows = BUCKET_ROWS if rows is None else rows
    groups, start, held = [], 0, 0
    for index, count in enumerate(counts):
        held += count
        if held >= rows:
            groups.append((start, index + 1))
            start, held = index + 1, 0
    if start < len(counts):
        groups.append((start, len(counts)))
    return groups


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
        if buckets >= GROUP_FROM_BUCKETS:
            groups = groups_of(counts)
            held = runner(f"group-ids:{scores.name}", partition_tasks(
                "group-ids", _MergeGroup(ids, tuple(groups)), len(groups)))
            bucket: _Bucket = _Bucket(ids, tuple(held), buckets)
        else:
            bucket = _PartitionsBucket(ids, tuple(counts), buckets)
        found = runner(f"duplicates:{scores.name}", partition_tasks(
            "duplicates", bucket, buckets))
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
class _MergeGroup:
    """Group ``g``: its partitions' sorted hashes merged into one file sorted by hash,
    with each hash's partition and row (ties in pool order: partitions are taken in
    order and the sort is stable); the partitions' files are deleted. Returns the
    group's row count."""

    folder: str
    groups: tuple[tuple[int, int], ...]

    def __call__(self, group: int) -> int:
        start, stop = self.groups[group]
        hashes, partitions, rows = [], [], []
        for index in range(start, stop):
            hash_name, row_name = (os.path.join(self.folder, n) for n in _file_names(index))
            hashes.append(np.load(hash_name))
            rows.append(np.load(row_name))
            partitions.append(np.full(len(hashes[-1]), index, np.int64))
        values = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        order = np.argsort(values, kind="stable")
        columns = (values[order], np.concatenate(partitions)[order],
                   np.concatenate(rows)[order])
        for name, column in zip(_group_names(group), columns):
            np.save(os.path.join(self.folder, name), column)
        for index in range(start, stop):
            for name in _file_names(index):
                os.remove(os.path.join(self.folder, name))
        return len(values)


@dataclass(frozen=True)
class _Bucket:
    """Bucket ``b`` of ``buckets`` equal hash ranges: the places of each hash in its range
    that two partitions hold, read from every group's file (``counts``: rows per group)."""

    folder: str
    counts: tuple[int, ...]
    buckets: int

    def __call__(self, bucket: int) -> list[Places]:
        low, high = (((bucket + i) << 64) // self.buckets for i in (0, 1))
        hashes, partitions, rows = [], [], []
        for group, count in enumerate(self.counts):
            names = [os.path.join(self.folder, n) for n in _group_names(group)]
            cut = _cut(names[0], count, low, high)
            if cut is not None:
                hashes.append(cut[0])
                partitions.append(_slice_of(names[1], cut[1]))
                rows.append(_slice_of(names[2], cut[1]))
        return _repeated(hashes, partitions, rows)


@dataclass(frozen=True)
class _PartitionsBucket(_Bucket):
    """:class:`_Bucket` reading every partition's files instead of groups' (``counts``:
    rows per partition): for a few buckets, where merging would cost more."""

    def __call__(self, bucket: int) -> list[Places]:
        low, high = (((bucket + i) << 64) // self.buckets for i in (0, 1))
        hashes, partitions, rows = [], [], []
        for index, count in enumerate(self.counts):
            hash_name, row_name = (os.path.join(self.folder, n) for n in _file_names(index))
            cut = _cut(hash_name, count, low, high)
            if cut is not None:
                hashes.append(cut[0])
                rows.append(_slice_of(row_name, cut[1]))
                partitions.append(np.full(len(cut[0]), index, np.int64))
        return _repeated(hashes, partitions, rows)


def _cut(path: str, count: int, low: int, high: int) -> tuple[np.ndarray, slice] | None:
    """The hashes in ``[low, high)`` of a sorted hash file of ``count`` rows, read from a
    memory map after a binary search, and where they lie; None when there are none."""
    if not count:
        return None
    mine = np.load(path, mmap_mode="r")
    start = int(np.searchsorted(mine, np.uint64(low)))
    stop = count if high >> 64 else int(np.searchsorted(mine, np.uint64(high)))
    if stop <= start:
        return None
    return np.array(mine[start:stop]), slice(start, stop)


def _slice_of(path: str, where: slice) -> np.ndarray:
    return np.array(np.load(path, mmap_mode="r")[where])


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
