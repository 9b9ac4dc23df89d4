"""Round-robin over target examples (RDS-style), with client memory that does not grow
with the pool times k.

Each target example ranks the pool by its own score (a list column, one score per target
example); rounds go through the targets in order, each taking its best row not chosen yet,
until ``k`` rows are chosen or every eligible row is. Ties go to the earlier pool row.

A target takes about ``k / T`` rows of its ranking (``T`` targets), more where the others
took its best ones first, and never more than ``k``. So instead of every partition sending
its ``k`` best rows for every target (``P × T × k`` candidates on the client: 24 GB at 10⁸
rows, 100 targets and k = 10⁴), the client asks for each target's best ``m`` rows overall:

1. every partition sends, per target, a *ladder*: its best rows' scores at the ranks
   0, 1, 3, 7, … (doubling) up to ``k`` (``T × log₂ k`` numbers a partition);
2. from the ladders the client picks, per target, the highest score ``t`` that at least
   ``m`` rows surely reach, and every partition sends its rows scoring at least ``t``
   (at most about ``4 m`` a target in all: a rung's rank at most doubles to the next);
3. the rounds run on those rows. A target that runs out of rows while rows below its
   ``t`` remain gets ``m`` doubled, and steps 2–3 run again (a pass over the score store
   each time; ``m`` starts at twice its share, so a second pass is rare).

The rows chosen are exactly those of the whole-ranking loop (``tests/test_select.py``
checks them against a naive one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.errors import InputError
from dataselect.execution import Runner, run_stage
from dataselect.score_parts import eligible_scores

# a target's first request is this many times its share of k (k / targets), plus a few
FIRST_SHARE = 2
FIRST_EXTRA = 8

# per partition and target: the ladder's (ranks, scores), or None without eligible rows
Ladders = list[tuple[np.ndarray, np.ndarray]] | None


def _target_matrix(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The eligible rows' positions and their scores, one column per target example."""
    if column not in table.column_names:
        raise InputError(f"the score store has no {column!r} column (embed: set "
                         "per_target=true)", field=column)
    ok = eligible_scores(table)[1]
    rows = np.flatnonzero(ok)
    lists = table[column].combine_chunks().take(pa.array(rows))
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    widths = set(lengths.tolist())
    if len(widths) > 1:
        raise InputError(f"rows of {column!r} hold different numbers of target scores: "
                         f"{sorted(widths)}", field=column)
    width = widths.pop() if widths else 0
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.float64)
    return rows, values.reshape(len(rows), width)


def _ranked(rows: np.ndarray, scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """A target's best ``depth`` rows of a partition, best first (ties: earlier row)."""
    order = np.lexsort((rows, -scores))[:depth]
    return rows[order], scores[order]


def ladder_ranks(count: int) -> np.ndarray:
    """Ranks 0, 1, 3, 7, … below ``count``, and ``count - 1``."""
    if count <= 0:
        return np.zeros(0, np.int64)
    doubling = (1 << np.arange(int(count).bit_length(), dtype=np.int64)) - 1
    return np.unique(np.append(doubling[doubling < count], count - 1))


@dataclass(frozen=True)
class _Ladders:
    """Per partition: the width (targets), and per target its ladder to ``depth``."""

    column: str
    depth: int

    def __call__(self, table: pa.Table, index: int) -> tuple[int, Ladders]:
        rows, matrix = _target_matrix(table, self.column)
        if not len(rows):
            return -1, None
        ladders = []
        for scores in matrix.T:
            _, best = _ranked(rows, scores, self.depth)
            ranks = ladder_ranks(len(best))
            ladders.append((ranks, best[ranks]))
        return matrix.shape[1], ladders


@dataclass(frozen=True)
class _Above:
    """Per partition and target: its best ``depth`` rows scoring at least the target's
    threshold (positions, scores), or None without eligible rows."""

    column: str
    depth: int
    thresholds: tuple[float, ...]

    def __call__(self, table: pa.Table, index: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
        rows, matrix = _target_matrix(table, self.column)
        if not len(rows):
            return None
        found = []
        for scores, threshold in zip(matrix.T, self.thresholds):
            keep = scores >= threshold
            found.append(_ranked(rows[keep], scores[keep], self.depth))
        return found


def threshold_for(ladders: list[tuple[np.ndarray, np.ndarray]], need: int) -> float:
    """The highest score that at least ``need`` rows surely reach, from one target's
    ladders (one a partition); ``-inf`` when the ladders cannot promise ``need`` rows."""
    if not ladders:
        return -math.inf
    ranks = np.concatenate([r for r, _ in ladders])
    values = np.concatenate([v for _, v in ladders])
    # how many more rows each rung promises than its partition's rung before it
    previous = np.concatenate([np.concatenate([[-1], r[:-1]]) for r, _ in ladders])
    gained = ranks - previous
    order = np.lexsort((ranks, -values))  # best first; a partition's rungs in rank order
    promised = np.cumsum(gained[order])
    reached = np.flatnonzero(promised >= need)
    return float(values[order][reached[0]]) if len(reached) else -math.inf


def choose(scores: Any, runner: Runner, column: str, k: int, offsets: np.ndarray
           ) -> tuple[np.ndarray, int]:
    """The chosen rows (global positions, in the order chosen) and the number of targets."""
    if k == 0:
        return np.zeros(0, np.int64), 0
    found = run_stage(runner, f"ladders:{scores.name}", scores.delayed(_Ladders(column, k)))
    widths = {w for w, _ in found if w >= 0}
    if len(widths) > 1:
        raise InputError(f"rows of {column!r} hold different numbers of target scores: "
                         f"{sorted(widths)}", field=column)
    width = widths.pop() if widths else 0
    if width == 0:
        return np.zeros(0, np.int64), 0
    per_target = [[ladders[j] for _, ladders in found if ladders is not None]
                  for j in range(width)]
    need = [min(k, FIRST_SHARE * -(-k // width) + FIRST_EXTRA)] * width
    while True:
        thresholds = tuple(threshold_for(per_target[j], need[j]) for j in range(width))
        above = run_stage(runner, f"candidates:{scores.name}",
                          scores.delayed(_Above(column, k, thresholds)))
        rankings = []
        for j in range(width):
            rows = np.concatenate([part[j][0] + offset for part, offset
                                   in zip(above, offsets) if part is not None])
            values = np.concatenate([part[j][1] for part in above if part is not None])
            rankings.append(rows[np.lexsort((rows, -values))][:k])
        complete = [t == -math.inf for t in thresholds]
        chosen, short = _rounds(rankings, complete, k)
        if not short:
            return np.array(chosen, np.int64), width
        for j in short:
            need[j] = min(k, 2 * need[j])


def _rounds(rankings: list[np.ndarray], complete: list[bool], k: int
            ) -> tuple[list[int], list[int]]:
    """The rounds over the targets' rankings: the rows chosen, and the targets that ran
    out of rows before their ranking was complete (then nothing is chosen: their rankings
    must be longer first)."""
    chosen: list[int] = []
    taken: set[int] = set()
    pointers = [0] * len(rankings)
    while len(chosen) < k:
        progressed, short = False, []
        for j, ranking in enumerate(rankings):
            while pointers[j] < len(ranking) and int(ranking[pointers[j]]) in taken:
                pointers[j] += 1
            if pointers[j] < len(ranking):
                if len(chosen) < k:
                    row = int(ranking[pointers[j]])
                    chosen.append(row)
                    taken.add(row)
                    progressed = True
            elif not complete[j] and len(chosen) < k:
                short.append(j)
        if short:
            return [], short
        if not progressed:
            break
    return chosen, []
