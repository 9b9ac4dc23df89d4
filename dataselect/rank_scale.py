"""Exact normalised ranks of a score store's scores, computed on the workers.

``combine(method="rank")`` puts each scorer's scores on one scale by their normalised mid
rank among the pool's eligible scores: ``((below + not_above - 1) / 2) / (n - 1)``, where
``below`` and ``not_above`` count the eligible scores lower than, and not higher than, the
row's (ties share the mean of their ranks). Done on the client, that needs every eligible
score sorted in one array, 8 bytes a row, and the array went to every worker with the
combined scores. Here it is a sort through a hidden folder of the store (:data:`RANKS_DIR`),
with memory per task bounded by the bucket size, and the client holding counts only:

1. ``ranks``: each partition sorts its scores (every row's; only eligible rows count) and
   writes them with their rows, and returns a sample of its eligible scores at evenly
   spaced ranks;
2. the client picks bucket boundaries, score values splitting the pooled samples into
   about :data:`BUCKET_ROWS` rows each; a value never straddles two buckets, so ties stay
   together;
3. ``rank-cuts``: each partition finds where each bucket starts in its sorted scores and
   writes those cut points beside them;
4. ``rank-buckets``: each bucket reads its slice of every partition's files (two cut
   points, then the slice) and counts, for each row in it, the eligible scores of the
   bucket below and not above the row's; it writes those two counts in partition order,
   with where each partition's rows start, and returns its eligible count;
5. ``rank-rows``: each partition reads its slice of every bucket's file, adds the
   eligible rows of the buckets below (from the client), and writes each row's normalised
   rank in row order (``part-NNNNN.rank.f64``): what the combined scores read on every
   pass, 8 bytes a row.

Cut points and starts go through files, not the client: they are P x B numbers, which grow
with the square of the pool. The client holds a sample and a count per partition and a
count per bucket.

The ranks are the whole-array ones to the last bit (the same integer counts and the same
two float operations). The rank files stay in the store after the job (8 bytes a row; any
later combination rewrites them); the work files of steps 1-4 are removed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from dataselect import storage
from dataselect.errors import InputError
from dataselect.execution import Runner, partition_tasks, run_stage
from dataselect.output import part_name
from dataselect.raw_arrays import (
    fresh_folder,
    read_array,
    remove_folder,
    store_lock,
    write_array,
)
from dataselect.score_parts import eligible_scores

RANKS_DIR = ".ranks"
# the work files of a sort (removed after it, with their temporaries; a partition's rank
# file stays, and nothing else in the folder is touched). [0-9], never \d: \d matches
# any Unicode digit, so a user's file named with fullwidth digits would be deleted
WORK_FILES = re.compile(r"part-[0-9]{5,}\.(score\.f64|row\.i64|cuts\.i64)"
                        r"|bucket-[0-9]{5,}\.(i64|starts\.i64)")
# rows a bucket holds, about (its task holds about 40 bytes a row)
BUCKET_ROWS = 1 << 21
# eligible scores a partition samples at evenly spaced ranks, for the bucket boundaries
SAMPLE = 64


def ranks_names(npartitions: int) -> list[str]:
    """The files a combination may write in a store of ``npartitions`` partitions (for
    ``OutputFolder.expect``): per partition its sorted scores, rows and ranks, and at most
    one bucket file per partition."""
    return [os.path.join(RANKS_DIR, name) for i in range(npartitions)
            for name in (*_partition_files(i), _cuts_file(i), _rank_file(i),
                         *_bucket_files(i))]


def _stem(index: int) -> str:
    return part_name(index).rsplit(".", 1)[0]


def _partition_files(index: int) -> tuple[str, str]:
    return f"{_stem(index)}.score.f64", f"{_stem(index)}.row.i64"


def _cuts_file(index: int) -> str:
    return f"{_stem(index)}.cuts.i64"


def _rank_file(index: int) -> str:
    return f"{_stem(index)}.rank.f64"


def _bucket_files(bucket: int) -> tuple[str, str]:
    """A bucket's counts (two a row) and where each partition's rows start in them."""
    return f"bucket-{bucket:05d}.i64", f"bucket-{bucket:05d}.starts.i64"


def write_rank_files(store: str, scores: Any, runner: Runner,
                     parts: Sequence[dict[str, Any]]) -> RankFiles | None:
    """Write every partition's normalised ranks into ``store``'s :data:`RANKS_DIR` (see
    the module), under the store's lock; None where the folder cannot be used (a link, a
    FIFO or a file in its place; a store the user may only read): the caller then ranks
    on the client."""
    with store_lock(store):
        folder = fresh_folder(storage.join(store, RANKS_DIR), WORK_FILES)
        if folder is None:
            return None
        try:
            return _sorted_into(folder, scores, runner, parts)
        finally:
            remove_folder(folder, WORK_FILES, keep_folder=True)


@dataclass(frozen=True)
class RankFiles:
    """Where a store's rank files are, and a digest of each as written: a rank file is
    read on every pass over the combined scores, and one changed since (rewritten at the
    same length) is refused, not used."""

    folder: str
    digests: tuple[str, ...]

    def read(self, index: int, rows: int) -> np.ndarray:
        """Partition ``index``'s normalised ranks, in row order."""
        path = storage.join(self.folder, _rank_file(index))
        data = read_array(path, np.float64)
        if len(data) != rows or _digest(data) != self.digests[index]:
            raise InputError(f"{path} changed while the job ran: its ranks are not the ones "
                             "this job wrote (another job ranking this store?); rerun the job "
                             "alone")
        return data


def _digest(ranks: np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(ranks).tobytes())


def _sorted_into(folder: str, scores: Any, runner: Runner,
                 parts: Sequence[dict[str, Any]]) -> RankFiles:
    count = len(parts)
    buckets = max(1, min(count, -(-sum(int(p["rows"]) for p in parts) // BUCKET_ROWS)))
    sorted_ = run_stage(runner, f"ranks:{scores.name}", scores.delayed(_SortScores(folder)))
    bounds = _boundaries([s for s, _ in sorted_], [n for _, n in sorted_], buckets)
    run_stage(runner, f"rank-cuts:{scores.name}", partition_tasks(
        "rank-cuts", _Cuts(folder, tuple(bounds)), count))
    eligible = run_stage(runner, f"rank-buckets:{scores.name}", partition_tasks(
        "rank-buckets", _Bucket(folder, count), len(bounds) + 1))
    below = tuple(int(b) for b in np.concatenate([[0], np.cumsum(eligible)[:-1]]))
    digests = run_stage(runner, f"rank-rows:{scores.name}", partition_tasks(
        "rank-rows", _Gather(folder, below, int(sum(eligible))), count))
    return RankFiles(folder, tuple(digests))


def _boundaries(samples: list[np.ndarray], counts: list[int], buckets: int) -> list[float]:
    """Up to ``buckets - 1`` distinct score values that split the pooled eligible scores
    into about equal buckets: weighted quantiles of the partitions' samples (a sampled
    score stands for ``count / len(sample)`` rows of its partition)."""
    held = [(s, c) for s, c in zip(samples, counts) if len(s)]
    if buckets <= 1 or not held:
        return []
    values = np.concatenate([s for s, _ in held])
    weights = np.concatenate([np.full(len(s), c / len(s)) for s, c in held])
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    wanted = cumulative[-1] * np.arange(1, buckets) / buckets
    picked = values[np.minimum(np.searchsorted(cumulative, wanted), len(values) - 1)]
    return [float(v) for v in np.unique(picked)]


@dataclass(frozen=True)
class _SortScores:
    """Per partition: write every row's score, sorted, and its row (``-1 - row`` for a row
    that is not eligible); return the eligible scores at :data:`SAMPLE` evenly spaced
    ranks and their count."""

    folder: str

    def __call__(self, table: pa.Table, index: int) -> tuple[np.ndarray, int]:
        score, eligible, _ = eligible_scores(table)
        order = np.argsort(score, kind="stable")
        rows = np.where(eligible[order], order, -1 - order).astype(np.int64)
        for name, values in zip(_partition_files(index), (score[order], rows)):
            write_array(storage.join(self.folder, name), values)
        kept = score[order][eligible[order]]
        if not len(kept):
            return np.zeros(0), 0
        at = np.unique(np.linspace(0, len(kept) - 1, min(len(kept), SAMPLE)).round()
                       .astype(np.int64))
        return kept[at].copy(), len(kept)


@dataclass(frozen=True)
class _Cuts:
    """Per partition: write where each bucket (scores below the first boundary, then
    between boundaries, the last from the last boundary on) starts in its sorted scores,
    and the end."""

    folder: str
    bounds: tuple[float, ...]

    def __call__(self, index: int) -> None:
        score = read_array(storage.join(self.folder, _partition_files(index)[0]), np.float64)
        inner = np.searchsorted(score, np.array(self.bounds, np.float64), "left")
        write_array(storage.join(self.folder, _cuts_file(index)),
                    np.array([0, *inner.tolist(), len(score)], np.int64))


@dataclass(frozen=True)
class _Bucket:
    """Bucket ``b``: for each row in it, in partition order, how many of the bucket's
    eligible scores lie below its score and how many not above it, and where each of the
    ``partitions`` starts in them; returns the bucket's eligible count."""

    folder: str
    partitions: int

    def __call__(self, bucket: int) -> int:
        scores, eligible, sizes = [], [], []
        for index in range(self.partitions):
            start, stop = read_array(storage.join(self.folder, _cuts_file(index)), np.int64,
                                     bucket, bucket + 2).tolist()
            sizes.append(max(stop - start, 0))
            if stop <= start:
                continue
            score_name, row_name = (storage.join(self.folder, n) for n in
                                    _partition_files(index))
            scores.append(read_array(score_name, np.float64, start, stop))
            eligible.append(read_array(row_name, np.int64, start, stop) >= 0)
        values = np.concatenate(scores) if scores else np.zeros(0)
        counted = values[np.concatenate(eligible)] if scores else values
        distinct, counts = np.unique(counted, return_counts=True)
        cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        counts = np.stack([cumulative[np.searchsorted(distinct, values, "left")],
                           cumulative[np.searchsorted(distinct, values, "right")]], axis=1)
        counts_name, starts_name = _bucket_files(bucket)
        write_array(storage.join(self.folder, counts_name), counts)
        write_array(storage.join(self.folder, starts_name),
                    np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        return len(counted)


@dataclass(frozen=True)
class _Gather:
    """Per partition: its rows' normalised ranks, in row order, from its slice of every
    bucket's counts plus the eligible rows of the buckets below (``below``, one number a
    bucket)."""

    folder: str
    below: tuple[int, ...]
    eligible: int

    def __call__(self, index: int) -> str:
        below, not_above = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for bucket in range(len(self.below)):
            counts_name, starts_name = (storage.join(self.folder, n)
                                        for n in _bucket_files(bucket))
            start, stop = read_array(starts_name, np.int64, index, index + 2).tolist()
            size = stop - start
            if not size:
                continue
            counts = read_array(counts_name, np.int64, 2 * start, 2 * stop).reshape(size, 2)
            below.append(counts[:, 0] + self.below[bucket])
            not_above.append(counts[:, 1] + self.below[bucket])
        rows = read_array(storage.join(self.folder, _partition_files(index)[1]), np.int64)
        rows = np.where(rows >= 0, rows, -1 - rows)
        ranks = np.empty(len(rows))
        ranks[rows] = ((np.concatenate(below) + np.concatenate(not_above) - 1) / 2
                       ) / max(self.eligible - 1, 1)
        write_array(storage.join(self.folder, _rank_file(index)), ranks)
        return _digest(ranks)
