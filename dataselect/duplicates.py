"""The duplicate-id check of a score store, on the workers with bounded memory.

Ids repeated across partitions are refused (a partition checks its own when read). The
whole-array way (every id hash concatenated and sorted on the client) holds 8 bytes a
row; here it is a two-level shuffle through a hidden folder of the score store
(:data:`IDS_DIR`, listed by ``Scores.write`` so that ``--overwrite`` deletes what a killed
job left):

1. each partition writes its id hashes, sorted, and their rows: in the pass that writes
   the score store, where a job has one (``Scores.write``), else in a pass of its own
   (``ids``), into a store this process wrote (``Scores.owned``);
2. runs of consecutive partitions of about :data:`BUCKET_ROWS` rows in all are merged into
   one *group* file each, sorted by hash, with each hash's partition and row
   (``group-ids``);
3. hash-range *buckets* of about :data:`BUCKET_ROWS` rows each read their slice of every
   group file and report the hashes held twice, with their first two places
   (``duplicates``).

Whoever writes a sorted file also finds where each bucket's range starts in it (a binary
search in memory) and writes those cut points beside it, so a bucket reads exactly its
bytes of each file: one range read, the same on a disk and in an object store, where the
folder lives under the store's URL. The cut points never reach the client: there they
were P x B numbers, which grow with the square of the pool.

Buckets reading every partition's files take 3 P B range reads (cut points, hashes, rows),
which grows with the square of the pool (219,744 at 10⁸ rows, 2.2·10⁷ at 10⁹); through
groups it is 2 P + 4 G B, with G and B both about rows / :data:`BUCKET_ROWS` (12,268 at
10⁸ rows). The merge costs a pass over the hashes, so groups are made only past
:data:`GROUP_FROM_READS` reads. The client holds the duplicates only, and names both places
as :meth:`Corpus.check_unique_ids` does (same error). Scores that are not a store (lazy
``scorer.score(pool)`` in Python) have no folder to write to, and a store given as an input
(``Scores.from_store``, not written by this process) is only read: their hashes are checked
on the client, 8 bytes a row.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dataselect import storage
from dataselect.execution import Runner, partition_tasks, run_stage
from dataselect.output import part_name
from dataselect.raw_arrays import (
    fresh_folder,
    read_array,
    remove_files,
    remove_folder,
    store_lock,
    write_array,
)
from dataselect.sampling import id_hashes

IDS_DIR = ".ids"
# the names the check writes in IDS_DIR (and removes, with their temporaries; nothing else);
# ASCII digits only ([0-9], not \d, which takes any Unicode digit: a user's file named with
# Arabic-Indic digits is not ours to delete)
WORK_FILES = re.compile(r"(part-[0-9]{5,}\.(hash\.u64|row\.i64|cuts\.i64)"
                        r"|group-[0-9]{5,}\.(hash\.u64|part\.i64|row\.i64|cuts\.i64))")
BUCKET_ROWS = 1 << 21
# Partitions are merged into groups first once buckets reading every partition would
# take more than this many range reads (3 a partition and bucket). The per-partition way
# grows with the square of the pool, the merge with the pool. Fitted on a local disk
# (benchmarks/bench_duplicates.py at 2*10^7 and 10^8 rows, 2 reads a partition and bucket
# then: 5.2e-8 s a row plus 27 us a read, against 1.3e-7 s a row merged), the two crossed
# near 2*10^8 rows (600,000 reads). With the cut points read from files too (a third read
# of the same cost, an open), the model puts the crossing near 1.3*10^8 rows, about
# 400,000 reads. An object store answers a range read in milliseconds, not microseconds:
# there grouping pays from about a hundredth of that.
GROUP_FROM_READS = 400_000
GROUP_FROM_READS_REMOTE = 4_000

# places of one repeated hash: its first two (partition, position), in pool order
Places = list[tuple[int, int]]


def ids_names(npartitions: int) -> list[str]:
    """The files the check may write in a store (for ``OutputFolder.expect``): a
    partition's and, at most one a partition, a group's."""
    return [os.path.join(IDS_DIR, name) for i in range(npartitions)
            for name in (*_file_names(i), *_group_names(i), _cuts_name(i, False),
                         _cuts_name(i, True))]


def _file_names(index: int) -> tuple[str, str]:
    stem = part_name(index).rsplit(".", 1)[0]
    return f"{stem}.hash.u64", f"{stem}.row.i64"


def _group_names(index: int) -> tuple[str, str, str]:
    stem = f"group-{index:05d}"
    return f"{stem}.hash.u64", f"{stem}.part.i64", f"{stem}.row.i64"


def _cuts_name(index: int, grouped: bool) -> str:
    """The file of a partition's (or a group's) cut points: where each bucket starts in
    its sorted hashes, and the end (``buckets + 1`` int64)."""
    stem = f"group-{index:05d}" if grouped else part_name(index).rsplit(".", 1)[0]
    return f"{stem}.cuts.i64"


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


def check_unique_ids(scores: Any, runner: Runner,
                     parts: Sequence[dict[str, Any]] | None = None) -> None:
    """Refuse ids repeated across the partitions of ``scores`` (see the module); once per
    Scores object, which several policies may select from. ``parts``: the partitions'
    summaries (their ``rows`` size the buckets), else the ones ``scores`` holds.

    A store written in this process by ``Scores.write`` already holds every partition's
    sorted hashes (``scores.ids_folder``, written by the scoring pass, which has the ids
    in hand): the check then starts from them, and no pass reads the score parts again."""
    if getattr(scores, "ids_checked", False):
        return
    folder = _store_folder(scores.task) if getattr(scores, "owned", False) else None
    parts = parts if parts is not None else getattr(scores, "summaries", None)
    if folder is None or parts is None:
        _check_on_client(scores, runner)
        return
    with store_lock(folder):  # a second job shuffling this store at once is refused
        prewritten = getattr(scores, "ids_folder", None)
        ids = prewritten or ids_folder(folder)
        if ids is None:
            _check_on_client(scores, runner)
            return
        try:
            found = _repeats_on_workers(scores, runner, parts, ids, prewritten is not None)
        finally:
            remove_folder(ids, WORK_FILES)
            scores.ids_folder = None  # gone: a second check (after a refusal) writes them
    for places in (p for bucket in found for p in bucket):  # in hash order, as on the client
        scores.corpus.refuse_repeated(places)
    scores.ids_checked = True


def _check_on_client(scores: Any, runner: Runner) -> None:
    """Every id hash gathered on the client (8 bytes a row): scores without a store this
    process wrote."""
    hashes = run_stage(runner, f"ids:{scores.name}", scores.delayed(_hashes))
    scores.corpus.check_unique_ids(hashes)
    scores.ids_checked = True


def _repeats_on_workers(scores: Any, runner: Runner, parts: Sequence[dict[str, Any]],
                        ids: str, prewritten: bool) -> list[list[Places]]:
    """The shuffle of the module's steps through ``ids``: each bucket's repeated hashes."""
    buckets = max(1, -(-sum(int(p["rows"]) for p in parts) // BUCKET_ROWS))
    reads = 3 * len(parts) * buckets  # a bucket's cut points, hashes and rows of each
    grouped = reads > (GROUP_FROM_READS_REMOTE if storage.is_remote(ids) else GROUP_FROM_READS)
    if prewritten and grouped:  # the merge reads the files whole: counts suffice
        counts = [int(p["rows"]) for p in parts]
    elif prewritten:  # each partition's cut points, from its hash file alone
        counts = run_stage(runner, f"ids:{scores.name}", partition_tasks(
            "id-cuts", _Cuts(ids, buckets), len(parts)))
    else:
        counts = run_stage(runner, f"ids:{scores.name}", scores.delayed(
            _WriteHashes(ids, 0 if grouped else buckets)))
    sources = len(counts)
    if grouped:
        groups = groups_of(counts)
        run_stage(runner, f"group-ids:{scores.name}", partition_tasks(
            "group-ids", _MergeGroup(ids, tuple(groups), buckets), len(groups)))
        sources = len(groups)
    return run_stage(runner, f"duplicates:{scores.name}", partition_tasks(
        "duplicates", _Bucket(ids, grouped, sources), buckets))


def _store_folder(task: Any) -> str | None:
    """The score store a task reads, or the first store of scores it combines (their ids
    are checked to be the same, row for row); None for scores computed on the fly."""
    if isinstance(getattr(task, "folder", None), str):
        return task.folder
    return next((f for t in getattr(task, "tasks", ()) if (f := _store_folder(t))), None)


def ids_folder(store: str) -> str | None:
    """The store's hidden folder of id hashes, made empty (:func:`fresh_folder`); None
    where it cannot be made: the check then runs on the client."""
    return fresh_folder(storage.join(store, IDS_DIR), WORK_FILES)


def _hashes(table: pa.Table, index: int) -> np.ndarray:
    return id_hashes(table["id"])


def cut_points(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Where each of ``buckets`` equal hash ranges starts in sorted ``hashes``, and the
    end: ``buckets + 1`` positions."""
    bounds = [(b << 64) // buckets for b in range(1, buckets)]
    inner = np.searchsorted(hashes, np.array(bounds, np.uint64)) if bounds else []
    return np.concatenate([[0], inner, [len(hashes)]]).astype(np.int64)


@dataclass(frozen=True)
class _WriteHashes:
    """Per partition: write its id hashes sorted, and their rows, and when ``buckets`` is
    set each bucket's cut points in the sorted hashes; return the row count."""

    folder: str
    buckets: int

    def __call__(self, table: pa.Table, index: int) -> int:
        ordered = write_id_hashes(self.folder, index, table["id"])
        if self.buckets:
            _write_cuts(self.folder, index, False, ordered, self.buckets)
        return len(ordered)


def _write_cuts(folder: str, index: int, grouped: bool, hashes: np.ndarray,
                buckets: int) -> None:
    """The cut points of sorted ``hashes`` go to a file beside them, not to the client:
    a bucket reads its two of every source's (P x B numbers in all, which grow with the
    square of the pool: 6.2 GB at 10^10 rows)."""
    write_array(storage.join(folder, _cuts_name(index, grouped)), cut_points(hashes, buckets))


def write_id_hashes(folder: str, index: int, ids: Any) -> np.ndarray:
    """Write partition ``index``'s id hashes, sorted, and their rows into ``folder`` (the
    check's first level); return the sorted hashes."""
    hashes = id_hashes(ids)
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    for name, values in zip(_file_names(index), (ordered, order.astype(np.int64))):
        write_array(storage.join(folder, name), values)
    return ordered


@dataclass(frozen=True)
class _Cuts:
    """Per partition: write its buckets' cut points, from the sorted hashes the scoring
    pass wrote (8 bytes a row read, not the score part); return its row count."""

    folder: str
    buckets: int

    def __call__(self, index: int) -> int:
        hashes = read_array(storage.join(self.folder, _file_names(index)[0]), np.uint64)
        _write_cuts(self.folder, index, False, hashes, self.buckets)
        return len(hashes)


@dataclass(frozen=True)
class _MergeGroup:
    """Group ``g``: its partitions' sorted hashes merged into one file sorted by hash,
    with each hash's partition and row (ties in pool order: partitions are taken in
    order and the sort is stable), and its buckets' cut points; the partitions' files are
    deleted."""

    folder: str
    groups: tuple[tuple[int, int], ...]
    buckets: int

    def __call__(self, group: int) -> None:
        start, stop = self.groups[group]
        names = [[storage.join(self.folder, n) for n in _file_names(index)]
                 for index in range(start, stop)]
        # one column at a time, each written and let go before the next is gathered: the
        # whole group at once held about 70 bytes a row, twice a bucket's
        hashes = [read_array(hash_name, np.uint64) for hash_name, _ in names]
        sizes = [len(h) for h in hashes]
        values = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        del hashes
        order = np.argsort(values, kind="stable")
        values = values[order]
        hash_file, part_file, row_file = (storage.join(self.folder, name)
                                          for name in _group_names(group))
        write_array(hash_file, values)
        _write_cuts(self.folder, group, True, values, self.buckets)
        del values
        write_array(part_file, np.repeat(np.arange(start, stop, dtype=np.int64), sizes)[order])
        rows = [read_array(row_name, np.int64) for _, row_name in names]
        write_array(row_file, (np.concatenate(rows) if rows else np.zeros(0, np.int64))[order])
        remove_files([storage.join(self.folder, name) for index in range(start, stop)
                      for name in _file_names(index)])


@dataclass(frozen=True)
class _Bucket:
    """Bucket ``b`` of equal hash ranges: the places of each hash in its range that two
    partitions hold, read from each of the ``sources`` groups' files (``grouped``) or
    partitions', at the cut points written beside them."""

    folder: str
    grouped: bool
    sources: int

    def __call__(self, bucket: int) -> list[Places]:
        slices = []  # (hash file, partition file or source, row file, start, stop)
        for source in range(self.sources):
            start, stop = read_array(storage.join(self.folder, _cuts_name(
                source, self.grouped)), np.int64, bucket, bucket + 2).tolist()
            if stop <= start:
                continue
            names = _group_names(source) if self.grouped else _file_names(source)
            hash_name, row_name = (storage.join(self.folder, names[0]),
                                   storage.join(self.folder, names[-1]))
            where = storage.join(self.folder, names[1]) if self.grouped else source
            slices.append((hash_name, where, row_name, start, stop))
        if not slices:
            return []
        # a pool without duplicates (the usual case) needs its hashes only, sorted in place:
        # 8 bytes a row, where gathering every place first held about 60 (83 MB over a
        # worker's peak for a bucket of 2^21 rows at 10^7 rows)
        values = np.concatenate([read_array(h, np.uint64, a, b) for h, _, _, a, b in slices])
        values.sort()
        twice = values[1:] == values[:-1]
        if not twice.any():
            return []
        held = np.unique(values[1:][twice])
        del values, twice
        return _repeated(*zip(*(self._places_of(held, *piece) for piece in slices),
                              strict=True))

    def _places_of(self, held: np.ndarray, hash_name: str, where: str | int, row_name: str,
                   start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The hashes of one source's slice that are in ``held``, with their partitions and
        rows, in the slice's order (so a stable sort keeps places in pool order)."""
        hashes = read_array(hash_name, np.uint64, start, stop)
        keep = np.flatnonzero(np.isin(hashes, held))
        rows = read_array(row_name, np.int64, start, stop)[keep]
        partitions = (read_array(where, np.int64, start, stop)[keep] if isinstance(where, str)
                      else np.full(len(keep), where, np.int64))
        return hashes[keep], partitions, rows


def _repeated(hashes: Sequence[np.ndarray], partitions: Sequence[np.ndarray],
              rows: Sequence[np.ndarray]) -> list[Places]:
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
