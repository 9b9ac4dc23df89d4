"""Seeded per-row randomness that depends on (seed, id) only.

Samples and Gumbel noise drawn this way do not change when the pool is re-partitioned, read
by more workers or resumed halfway: a row's coin flip travels with its id. An id is hashed
once to 64 bits (pandas' vectorised ``hash_array``, stable across runs and machines); each
draw mixes that hash with a key derived from the seed and the use (``stream``) and takes
the top 53 bits as a uniform number in (0, 1). Working from the hashes lets selection draw
its noise from the 8-byte id hashes it already holds, without reading ids again.

Seeds are any unsigned 64-bit integer. The key first made of a seed kept only its low 48
bits, so seeds 0 and 2**48 drew alike; seeds below 2**48 still draw exactly as they did (a
user's selection stays reproducible across versions), and the high 16 bits of a larger seed
go into a second mixing round. The mixing function (pandas' splitmix64 finaliser) is a
bijection of 64-bit words, so two seeds that differ only in their high bits give different
numbers for every single row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dataselect.checks import check_count, check_number, check_seed
from dataselect.errors import EmptyCorpusError
from dataselect.execution import partition_tasks, run_stage

# LENGTH_STREAM: the score-length sample of a score store (scoring.length_sample)
SAMPLE_STREAM, GUMBEL_STREAM, LENGTH_STREAM = 1, 2, 3
LEGACY_SEED_BITS = 48


def id_hashes(ids: Any) -> np.ndarray:
    """64-bit hashes of string ids (the same id always gives the same hash)."""
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        # Arrow makes the Python strings in C: a fifth faster than a list of them
        values = ids.to_numpy(zero_copy_only=False)
    else:
        values = np.asarray(ids.to_pylist() if hasattr(ids, "to_pylist") else list(ids),
                            dtype=object)
    return pd.util.hash_array(values, categorize=False)


def uniform(id_hash: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """One uniform (0, 1) number per id hash; ``stream`` separates independent uses."""
    seed = check_seed(seed)
    low_key = _mix_word((seed & (2**LEGACY_SEED_BITS - 1)) << 8 | stream)
    bits = pd.util.hash_array(np.asarray(id_hash, dtype=np.uint64) ^ low_key)
    high = seed >> LEGACY_SEED_BITS
    if high:  # only seeds >= 2**48 take the second round: smaller ones draw as they always did
        bits = pd.util.hash_array(bits ^ _mix_word(high))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _mix_word(value: int) -> np.uint64:
    """pandas' 64-bit mixing of one word; a bijection, and nonzero for a nonzero word."""
    return pd.util.hash_array(np.array([value], dtype=np.uint64))[0]


def sample_mask(ids: Any, fraction: float, seed: int) -> np.ndarray:
    """A seeded Bernoulli(``fraction``) sample of the rows with these ids (a ``fraction`` of
    0 or less samples nothing, 1 or more everything; NaN, which would silently sample
    nothing, is refused)."""
    check_number(fraction, "fraction")
    if fraction >= 1:
        return np.ones(len(ids), bool)
    if fraction <= 0:
        return np.zeros(len(ids), bool)
    return uniform(id_hashes(ids), seed, SAMPLE_STREAM) < fraction


def gumbel_noise(id_hash: np.ndarray, seed: int) -> np.ndarray:
    """Standard Gumbel variates, -log(-log(u)), for Gumbel top-k sampling."""
    return -np.log(-np.log(uniform(id_hash, seed, GUMBEL_STREAM)))


def sample_keys(ids: Any, seed: int, stream: int = SAMPLE_STREAM) -> np.ndarray:
    """The uniform number behind each row's coin flip in :func:`sample_mask`; a fixed-size
    seeded sample is the rows with the smallest keys (:func:`bottom_k`). Another
    ``stream`` draws a sample independent of the default one."""
    return uniform(id_hashes(ids), seed, stream)


def bottom_k(table: Any, k: int, seed: int, stream: int = SAMPLE_STREAM) -> Any:
    """A seeded sample of exactly ``k`` rows (all if fewer) of a pyarrow table with an
    ``id`` column: the rows with the smallest :func:`sample_keys`, in key order.

    It merges: ``bottom_k(concat(bottom_k(a), bottom_k(b)))`` equals ``bottom_k(concat(a,
    b))``, so a sample of a whole corpus can be folded from per-partition samples, holding
    at most ``k`` rows per partition, and the result depends on the ids and the seed only.
    """
    check_count(k, "sample size")
    keys = sample_keys(table["id"], seed, stream)
    order = np.argsort(keys, kind="stable")[:k]
    return table.take(order)


def sample_corpus(corpus: Any, k: int, seed: int) -> pa.Table:
    """A seeded sample of ``k`` rows (all if fewer) of a :class:`~dataselect.corpus.Corpus`,
    in key order, folded from per-partition :func:`bottom_k` samples: memory holds at most
    ``k`` rows plus one partition, and the draw does not depend on how the corpus is split
    into files. A prefix of the sample is the sample of that smaller size."""
    kept: pa.Table | None = None
    for table in corpus.iter_tables():
        sample = bottom_k(table, k, seed)
        kept = sample if kept is None else bottom_k(
            pa.concat_tables([kept, sample], promote_options="default"), k, seed)
    if kept is None:
        raise EmptyCorpusError("corpus holds no records", where=", ".join(corpus.files))
    return kept


@dataclass(frozen=True)
class PartitionSample:
    """A stage task: partition ``index``'s :func:`bottom_k` sample and its row count; fold
    the results with :class:`MergeSamples` for a corpus-wide sample drawn in one pass on
    the cluster. ``view``: the rows as scorers see them (``id``, ``text``), else whole."""

    corpus: Any
    k: int
    seed: int
    view: bool = False
    stream: int = SAMPLE_STREAM

    def __call__(self, index: int) -> tuple[pa.Table, int]:
        table = self.corpus.read_partition(index)
        view = self.corpus.scoring_view(table) if self.view else table
        return bottom_k(view, self.k, self.seed, self.stream), table.num_rows


@dataclass(frozen=True)
class MergeSamples:
    """Folds two (sample, row count) results into one (bottom_k merges, see there)."""

    k: int
    seed: int
    stream: int = SAMPLE_STREAM

    def __call__(self, left: tuple[pa.Table, int], right: tuple[pa.Table, int]
                 ) -> tuple[pa.Table, int]:
        both = pa.concat_tables([left[0], right[0]], promote_options="permissive")
        return bottom_k(both, self.k, self.seed, self.stream), left[1] + right[1]


# a sampled row found by its key: the key, then where the row is (which breaks ties)
KEYED_ROW = np.dtype([("key", np.float64), ("partition", np.int64), ("row", np.int64)])


@dataclass(frozen=True)
class PartitionKeys:
    """A stage task: the ``k`` smallest sample keys of partition ``index``'s rows with
    their rows (:data:`KEYED_ROW`, in key order) and its row count, from its ids alone;
    fold with :class:`MergeKeys`."""

    corpus: Any
    k: int
    seed: int
    stream: int = SAMPLE_STREAM

    def __call__(self, index: int) -> tuple[np.ndarray, int]:
        keys = sample_keys(self.corpus.read_ids(index), self.seed, self.stream)
        order = np.argsort(keys, kind="stable")[:self.k]
        found = np.empty(len(order), KEYED_ROW)
        found["key"], found["partition"], found["row"] = keys[order], index, order
        return found, len(keys)


@dataclass(frozen=True)
class MergeKeys:
    """Folds two (smallest keyed rows, row count) results into one."""

    k: int

    def __call__(self, left: tuple[np.ndarray, int], right: tuple[np.ndarray, int]
                 ) -> tuple[np.ndarray, int]:
        both = np.concatenate([left[0], right[0]])
        return np.sort(both, order=["key", "partition", "row"])[:self.k], left[1] + right[1]


@dataclass(frozen=True)
class ChosenRows:
    """A stage task of :func:`sample_rows`'s second pass: task ``task`` reads the sampled
    rows of the ``task``-th partition holding any (``chosen``: (partition, its sorted
    rows)) and gives their :func:`bottom_k`, as :class:`PartitionSample` would (the row
    count is the first pass's); fold with :class:`MergeSamples`."""

    corpus: Any
    chosen: tuple[tuple[int, np.ndarray], ...]
    k: int
    seed: int
    view: bool = False
    stream: int = SAMPLE_STREAM

    def __call__(self, task: int) -> tuple[pa.Table, int]:
        index, rows = self.chosen[task]
        table = self.corpus.read_rows(index, rows)
        view = self.corpus.scoring_view(table) if self.view else table
        return bottom_k(view, self.k, self.seed, self.stream), 0


def sample_rows(corpus: Any, k: int, seed: int, runner: Any, stage: str, label: str,
                view: bool = False, stream: int = SAMPLE_STREAM) -> tuple[pa.Table, int]:
    """The seeded sample of ``k`` rows that one pass of :class:`PartitionSample` draws,
    and the corpus's row count, in two passes that read less: the first reads every
    partition's ids only (a Parquet id column, or nothing for ids derived from row
    numbers) and keeps the ``k`` smallest keys with their partitions and rows; the second
    reads those rows, only in the partitions that hold one, from the row groups that hold
    them, each decoded up to its last sampled row. The sample is the same rows in the same
    order, since a row's key depends on (seed, id) alone. Where ids cannot be read apart
    (JSONL, a cut row group) both passes read the partition.

    Why the rows, not a cutoff: the second pass found the sampled rows again by reading
    every partition's ids and hashing them a second time, which at 10⁸ rows was about as
    long as the first pass.

    With ``k`` at least the number of partitions, most partitions hold a sampled row and
    the second pass would read about all of them again (measured: up to 1.8x slower on a
    one-row-group pool), so the sample is then drawn in one pass, as before."""
    def one_pass() -> tuple[pa.Table, int]:
        return run_stage(runner, stage, partition_tasks(label, PartitionSample(
            corpus, k, seed, view, stream), corpus.npartitions), MergeSamples(k, seed, stream))

    if k >= corpus.npartitions:
        return one_pass()
    found, rows = run_stage(runner, stage, partition_tasks(f"{label}-ids", PartitionKeys(
        corpus, k, seed, stream), corpus.npartitions), MergeKeys(k))
    if not len(found):  # no row at all: one pass over the empty partitions gives the columns
        return one_pass()
    chosen = tuple((int(index), np.sort(found["row"][found["partition"] == index]))
                   for index in np.unique(found["partition"]))
    sample, _ = run_stage(runner, stage, partition_tasks(label, ChosenRows(
        corpus, chosen, k, seed, view, stream), len(chosen)), MergeSamples(k, seed, stream))
    return sample, rows
