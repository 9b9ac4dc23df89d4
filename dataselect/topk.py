"""Exact distributed top-k: the ``k`` best rows of a pool, with client memory O(k + P).

Rows are ranked by a key (the score, or the score plus Gumbel noise), larger first, ties
going to the earlier pool row: a strict order on (key, global position), so the ``k``
best rows are one set whatever the partitioning, and the same set the whole-array rule
(the rows above the k-th key, then the earliest rows tied with it) picks.

No per-row array reaches the client. Each partition sends a *ladder*: its candidate rows
sorted best first, sampled at about :data:`RUNGS` geometrically spaced ranks (rank 0 and the
last rank included), with their ranks. From the ladders of every partition the client
bounds, for every rung ``t``, how many rows rank at least as high as ``t``
(:func:`_bounds`); it then either fetches the rows at least as good as a rung that
surely lies at or below the k-th row, when at most ``k + budget`` rows can be that good
(one more pass), or narrows the window of ranks that holds the k-th row and asks every
partition for a finer ladder of that window (a pass each, shrinking the window about
thirtyfold). Each pass reads the score store's score and id columns on the workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dataselect.execution import Runner, run_stage
from dataselect.sampling import gumbel_noise, id_hashes
from dataselect.score_parts import eligible_scores

RUNGS = 64  # rungs a ladder holds at most (:func:`rung_ranks`)
# rows a fetch may bring beyond k (it brings at most k + max(k, FETCH_BUDGET) rows)
FETCH_BUDGET = 1 << 16

# a row of the strict order: (key, global position); None is "no bound"
Bound = tuple[float, int] | None


@dataclass(frozen=True)
class KeySpec:
    """Which rows are candidates and how they rank: eligible rows (``filtered_by``
    null), scoring at least ``min_score`` when given, ranked by the score plus Gumbel
    noise of (seed, id) when ``seed`` is given (the arithmetic the whole-array selection
    used, so the keys are the same floats)."""

    seed: int | None = None
    min_score: float | None = None

    def ranked(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The candidate rows' positions and keys, best first."""
        score, eligible, _ = eligible_scores(table)
        if self.min_score is not None:
            eligible = eligible & (score >= self.min_score)
        positions = np.flatnonzero(eligible)
        keys = score[positions]
        if self.seed is not None:
            keys = keys + gumbel_noise(id_hashes(table["id"].take(positions)), self.seed)
        order = np.lexsort((positions, -keys))
        return positions[order], keys[order]


@dataclass(frozen=True)
class Ladder:
    """Partition's candidates in a window of the order: how many rank at least as high as
    the window's upper bound (``above``), how many lie in it (``size``), and the window's
    rows at the rung ranks (window-relative ``ranks``, ``keys``, local ``positions``)."""

    above: int
    size: int
    ranks: np.ndarray
    keys: np.ndarray
    positions: np.ndarray


def _at_least(positions: np.ndarray, keys: np.ndarray, bound: Bound, offset: int) -> int:
    """How many of a partition's ranked rows rank at least as high as ``bound``."""
    if bound is None:
        return 0
    key, position = bound
    descending = -keys
    left = int(np.searchsorted(descending, -key, "left"))
    right = int(np.searchsorted(descending, -key, "right"))
    return left + int(np.searchsorted(positions[left:right] + offset, position, "right"))


def ladder_of(positions: np.ndarray, keys: np.ndarray, above: int = 0) -> Ladder:
    """The ladder of ranked rows (best first): about :data:`RUNGS` rungs at geometrically
    spaced ranks, every rank near the top and ever sparser below (rank 0 and the last
    included; :func:`rung_ranks`)."""
    ranks = rung_ranks(len(keys))
    return Ladder(above, len(keys), ranks, keys[ranks], positions[ranks])


def rung_ranks(size: int) -> np.ndarray:
    """The ranks a ladder of ``size`` rows samples: ``geomspace(1, size, RUNGS) - 1``,
    rounded.

    Why geometric: the rows a selection wants lie at the top of every partition (a
    partition holds about k / P of the k best). With rungs evenly spaced, the bounds of
    :func:`_bounds` around the k-th row are a whole rung apart in each partition, about
    rows / RUNGS in all (1.5·10⁶ at 10⁸ rows), far more than a fetch may bring, so every
    top-k took a narrowing pass. With rungs a factor ``size ** (1 / (RUNGS - 1))`` apart
    (1.19 for 65,536 rows), a partition's bounds at its rank ``x`` are at most about
    0.2 x + 1 apart, so in all about 0.2 k + P: the first ladders already bound the
    k-th row within a fetch's budget, and a top-k reads the scores once more, not twice.
    """
    if size <= RUNGS:
        return np.arange(size, dtype=np.int64)
    return np.unique(np.geomspace(1, size, RUNGS).round().astype(np.int64) - 1)


@dataclass(frozen=True)
class _Window:
    """Per partition: the ladder of its candidates ranking at least as high as ``low``
    and below ``high`` (``None``: unbounded)."""

    spec: KeySpec
    offsets: tuple[int, ...]
    low: Bound
    high: Bound

    def __call__(self, table: pa.Table, index: int) -> Ladder:
        positions, keys = self.spec.ranked(table)
        offset = self.offsets[index]
        start = _at_least(positions, keys, self.high, offset)
        stop = len(keys) if self.low is None else _at_least(positions, keys, self.low, offset)
        return ladder_of(positions[start:stop], keys[start:stop], start)


@dataclass(frozen=True)
class _Fetch:
    """Per partition: positions and keys of its candidates ranking at least as high as
    ``low`` (all of them for ``None``)."""

    spec: KeySpec
    offsets: tuple[int, ...]
    low: Bound

    def __call__(self, table: pa.Table, index: int) -> tuple[np.ndarray, np.ndarray]:
        positions, keys = self.spec.ranked(table)
        stop = (len(keys) if self.low is None
                else _at_least(positions, keys, self.low, self.offsets[index]))
        # copies: a view would keep the partition's whole arrays alive on a threaded client
        return positions[:stop].copy(), keys[:stop].copy()


def _bounds(ladders: list[Ladder], offsets: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every rung of every ladder, best first (keys, global positions), with a lower and
    an upper bound on the rows of the window ranking at least as high as it.

    For partition p with rungs at ranks r_0 = 0 < ... < r_m = n_p - 1, at least r_j + 1
    of its rows rank as high as a row t when rung j does (the last such j), and at most
    r_{j+1} (n_p past its last rung); summed over partitions along the merged rungs,
    these are cumulative sums of per-rung increments."""
    keys, positions, lower, upper = [], [], [], []
    for ladder, offset in zip(ladders, offsets):
        if not ladder.size:
            continue
        ranks = ladder.ranks
        keys.append(ladder.keys)
        positions.append(ladder.positions + offset)
        lower.append(np.diff(ranks, prepend=-1))
        upper.append(np.diff(np.append(ranks, ladder.size)))
    keys, positions = np.concatenate(keys), np.concatenate(positions)
    order = np.lexsort((positions, -keys))
    return (keys[order], positions[order], np.cumsum(np.concatenate(lower)[order]),
            np.cumsum(np.concatenate(upper)[order]))


def top_rows(scores: Any, runner: Runner, spec: KeySpec, k: int, sizes: list[int],
             ladders: list[Ladder] | None = None, budget: int | None = None) -> np.ndarray:
    """Global positions of the ``k`` best candidates (all of them if fewer), best first.

    ``ladders`` are the partitions' ladders of all their candidates when a pass already
    made them (the scoring pass, for the score); else one pass makes them.
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    shared = tuple(int(o) for o in offsets)
    budget = max(k, FETCH_BUDGET) if budget is None else budget
    if ladders is None:
        ladders = run_stage(runner, f"rank:{scores.name}",
                            scores.delayed(_Window(spec, shared, None, None)))
    k = min(k, sum(ladder.size for ladder in ladders))
    if k == 0:
        return np.zeros(0, np.int64)
    low: Bound = None
    high: Bound = None
    above = 0
    while True:
        need = k - above
        keys, positions, lower, upper = _bounds(ladders, offsets)
        first = int(np.searchsorted(lower, need, "left"))
        if upper[first] <= need + budget:
            low = (float(keys[first]), int(positions[first]))
            break
        last = int(np.searchsorted(upper, need, "left")) - 1
        if last >= 0:
            high = (float(keys[last]), int(positions[last]))
        low = (float(keys[first]), int(positions[first]))
        ladders = run_stage(runner, f"rank:{scores.name}",
                            scores.delayed(_Window(spec, shared, low, high)))
        above = sum(ladder.above for ladder in ladders)
    found = run_stage(runner, f"fetch:{scores.name}", scores.delayed(_Fetch(spec, shared, low)))
    return best_of(found, offsets, k)


def all_rows(scores: Any, runner: Runner, spec: KeySpec, sizes: list[int]) -> np.ndarray:
    """Global positions of every candidate, best first (a threshold's selection)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    found = run_stage(runner, f"fetch:{scores.name}",
                      scores.delayed(_Fetch(spec, tuple(int(o) for o in offsets), None)))
    return best_of(found, offsets, None)


def best_of(found: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray,
            k: int | None) -> np.ndarray:
    """The best ``k`` (or all) of fetched rows, as global positions best first."""
    rows = np.concatenate([np.zeros(0, np.int64)] + [p + o for (p, _), o in zip(found, offsets)])
    keys = np.concatenate([np.zeros(0)] + [key for _, key in found])
    # lexsort sorts by the last key first: descending key, then ascending position
    return rows[np.lexsort((rows, -keys))[:k]]


def merge_dropped(summaries: list[dict[str, Any]]) -> dict[str, int]:
    """Rows removed per filter over every partition, by filter name."""
    dropped: Counter = Counter()
    for summary in summaries:
        dropped.update(summary["dropped"])
    return dict(sorted(dropped.items()))
