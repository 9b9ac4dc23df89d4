"""Combining the scores of several scorers into one.

Scores from different scorers live on different scales (a DSIR log weight, a ZIP-FIT
alignment in [0, 1], a classifier probability), so they are put on one scale first: z-scores
(mean 0, unit variance over eligible rows) or normalised ranks (0 = worst, 1 = best, ties
averaged). The combined score is their weighted mean; each input score is kept as
``score_<scorer>`` so a user can see why a row was chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.checks import check_weights
from dataselect.errors import InputError
from dataselect.execution import Runner, run_stage
from dataselect.output import jsonable
from dataselect.rank_scale import RankFiles, write_rank_files
from dataselect.scoring import FILTERED_BY, Scores, eligible_scores, merge_moments
from dataselect.summaries import collect_summaries

METHODS = ("zscore", "rank")


@dataclass(frozen=True)
class _Scale:
    """Maps raw scores of one scorer onto the common scale: z-scores from the pool's
    moments, or normalised ranks, read from the rank files written on the workers
    (``ranks``, :mod:`dataselect.rank_scale`) or, for scores without a store, looked up in
    every eligible score sorted (``sorted_scores``, 8 bytes a row)."""

    method: str
    mean: float = 0.0
    std: float = 1.0
    # mean and std are in units of 2**exponent (scoring.scaled_moments): the scores are
    # divided by it (exactly) before the mean is taken off, so neither scores of ~1e-200
    # nor of ~1e303 leave the float range on the way to their z-scores
    exponent: int = 0
    sorted_scores: np.ndarray | None = None
    ranks: RankFiles | None = None

    def __call__(self, score: np.ndarray, index: int) -> np.ndarray:
        if self.method == "zscore":
            return (np.ldexp(score, -self.exponent) - self.mean) / self.std
        if self.ranks is not None:
            return self.ranks.read(index, len(score))
        ref = self.sorted_scores
        below = np.searchsorted(ref, score, side="left")
        not_above = np.searchsorted(ref, score, side="right")
        return ((below + not_above - 1) / 2) / max(len(ref) - 1, 1)


@dataclass(frozen=True)
class _CombinedTask:
    tasks: tuple[Any, ...]
    names: tuple[str, ...]
    scales: tuple[_Scale, ...]
    weights: tuple[float, ...]

    def __call__(self, index: int) -> pa.Table:
        tables = [task(index) for task in self.tasks]
        ids = tables[0]["id"]
        total = np.zeros(len(ids))
        filtered = pa.nulls(len(ids), pa.string())
        columns = {}
        for name, column, table, scale, weight in zip(self.names, score_columns(self.names),
                                                      tables, self.scales, self.weights):
            if not pc.all(pc.equal(table["id"], ids)).as_py():
                raise InputError(f"scores of {name!r} are not aligned with the others")
            raw = table["score"].to_numpy().astype(np.float64)
            total += weight * scale(raw, index)
            columns[column] = raw
            if FILTERED_BY in table.column_names:
                filtered = pc.coalesce(filtered, table[FILTERED_BY].combine_chunks())
        out = {"id": ids, "score": total / sum(self.weights), **columns, FILTERED_BY: filtered}
        return pa.table(out)


def combine_scores(scores: list[Scores], method: str, weights: list[float] | None,
                   runner: Runner) -> Scores:
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}", field="method")
    if not scores:
        raise InputError("nothing to combine")
    weights = [1.0] * len(scores) if weights is None else check_weights(weights)
    if len(weights) != len(scores):
        raise InputError("weights must be one per score set", field="weights")
    pool = scores[0].corpus
    for other in scores[1:]:
        if jsonable(other.corpus.fingerprint()) != jsonable(pool.fingerprint()):
            raise InputError("score sets to combine were computed on different pools")
    scales = []
    for s in scores:
        parts = collect_summaries(s, runner)
        if method == "zscore":
            count, mean, squares, exponent = merge_moments(p["moments"] for p in parts)
            std = math.sqrt(squares / count) if count else 0.0
            _check_spread(s.name, mean, std)
            # scores all equal (or none eligible) have no spread: their z-scores are all
            # 0 (score minus mean, divided by 1), never a division by zero
            scales.append(_Scale(method, mean, std or 1.0, exponent))
        elif (ranks := _rank_files(s, runner, parts)) is not None:
            scales.append(_Scale(method, ranks=ranks))
        else:  # scores without a store: every eligible score, on the client (8 bytes a row)
            eligible = run_stage(runner, f"ranks:{s.name}", s.delayed(_eligible_scores))
            scales.append(_Scale(method, sorted_scores=np.sort(np.concatenate(eligible))))
    names = _column_names([s.name for s in scores])
    task = _CombinedTask(tuple(s.task for s in scores), names, tuple(scales),
                         tuple(_normalised(weights)))
    description = {"scorer": "combined", "method": method, "weights": weights,
                   "inputs": [s.description for s in scores],
                   "pool": pool.fingerprint()}
    return _with_checked_ids(Scores("combined", pool, task, description), scores)


def _check_spread(name: str, mean: float, std: float) -> None:
    """Refuse scores whose (scaled) mean or spread is not a finite float: every z-score
    would be NaN, and the selection refused them as "score is nan" naming neither the
    scorer nor the combine. Moments are taken in units of the scores' largest power of
    two (:func:`~dataselect.scoring.scaled_moments`), so finite scores of any size pass;
    what is left is the moments of an earlier version's summaries, unscaled, of scores
    of ~1e303. Ranks need no moments, so they are the fix offered."""
    if math.isfinite(mean) and math.isfinite(std):
        return
    raise InputError(f"scores of {name!r} are too large to combine by z-score (their "
                     f"{'mean' if not math.isfinite(mean) else 'spread'} overflows a "
                     "64-bit float): rescale that scorer's scores, or combine by rank "
                     "(combine: {method: rank}; method=\"rank\" in Python)")


def _with_checked_ids(combined: Scores, inputs: list[Scores]) -> Scores:
    """``combined``, its ids known unique when its inputs' are: every read of a combined
    partition refuses inputs whose ids differ row for row, so it has the first input's ids.
    A combination is no store this process wrote, so checking it again would gather every
    id hash on the client."""
    combined.ids_checked = all(s.ids_checked for s in inputs)
    return combined


def _rank_files(scores: Scores, runner: Runner, parts: list[dict[str, Any]]
                ) -> RankFiles | None:
    """The folder of ``scores``' rank files, written on the workers into its store; None
    for scores that are not a store this process wrote (an input store is only read), or
    a store that cannot be written to."""
    store = getattr(scores.task, "folder", None)
    if not (isinstance(store, str) and scores.owned):
        return None
    return write_rank_files(store, scores, runner, parts)


def _normalised(weights: list[float]) -> list[float]:
    """``weights`` (:func:`~dataselect.checks.check_weights`) scaled by the power of two
    nearest the inverse of their sum: a weighted mean taken with them is the same to the
    last bit (scaling by a power of two is exact), but its products and sum neither
    underflow (weights of 5e-324 made every score 0, 1 or 2) nor overflow."""
    exponent = math.frexp(sum(weights))[1]
    return [math.ldexp(w, -exponent) for w in weights]


def _eligible_scores(table: pa.Table, index: int) -> np.ndarray:
    score, eligible, _ = eligible_scores(table)
    return score[eligible]


def score_columns(names: list[str]) -> tuple[str, ...]:
    """The ``score_<name>`` columns a combination of the inputs ``names`` (scorers, or the
    tasks of :func:`max_over_tasks`) adds to a selection beside ``score``: known before any
    work, so a pool column of one of these names is refused before it is scored."""
    return tuple(f"score_{name}" for name in _column_names(names))


def _column_names(names: list[str]) -> tuple[str, ...]:
    """One ``score_<name>`` column per input: a scorer given twice (two DSIR fits) gets
    ``dsir``, ``dsir_2``, ... in input order, where one column used to replace the other."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return tuple(unique)


BEST_TASK = "best_task"


@dataclass(frozen=True)
class _MaxOverTasks:
    tasks: tuple[Any, ...]
    names: tuple[str, ...]

    def __call__(self, index: int) -> pa.Table:
        tables = [task(index) for task in self.tasks]
        ids = tables[0]["id"]
        matrix = np.full((len(ids), len(tables)), -np.inf)
        for column, (name, table) in enumerate(zip(self.names, tables)):
            if not pc.all(pc.equal(table["id"], ids)).as_py():
                raise InputError(f"scores of task {name!r} are not aligned with the others")
            score = table["score"].to_numpy().astype(np.float64)
            if FILTERED_BY in table.column_names:
                score[~pc.is_null(table[FILTERED_BY]).to_numpy(zero_copy_only=False)] = -np.inf
            matrix[:, column] = score
        best = matrix.argmax(axis=1)
        top = matrix[np.arange(len(ids)), best]
        eligible = np.isfinite(top)
        columns = {name: matrix[:, i] for i, name in enumerate(score_columns(self.names))}
        return pa.table({
            "id": ids,
            "score": np.where(eligible, top, 0.0),
            BEST_TASK: pa.array([self.names[b] for b in best], pa.string()),
            **{k: np.where(np.isfinite(v), v, np.nan) for k, v in columns.items()},
            FILTERED_BY: pa.array([None if ok else "filtered_for_every_task"
                                   for ok in eligible], pa.string()),
        })


def max_over_tasks(scores: dict[str, Scores]) -> Scores:
    """One score per row for a budget shared by several target tasks: the row's best task
    score (LESS's aggregation across tasks), with that task in ``best_task``. A row is
    eligible while any task finds it eligible. Task scores must share a scale: the same
    scorer for every task, or combined z-scores or ranks."""
    if not scores:
        raise InputError("no task scores to aggregate")
    first = next(iter(scores.values()))
    for name, other in scores.items():
        if jsonable(other.corpus.fingerprint()) != jsonable(first.corpus.fingerprint()):
            raise InputError(f"scores of task {name!r} were computed on another pool")
    names = tuple(scores)
    task = _MaxOverTasks(tuple(s.task for s in scores.values()), names)
    description = {"scorer": "max_over_tasks", "tasks": {n: s.description
                                                         for n, s in scores.items()},
                   "pool": first.corpus.fingerprint()}
    return _with_checked_ids(Scores("max_over_tasks", first.corpus, task, description),
                             list(scores.values()))
