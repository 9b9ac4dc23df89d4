"""``--scorer auto``: choose the scorer (or a weighted mix) by held-out validation.

No scorer wins on every task, and which one wins is not predictable from the task's
description, so this one measures it. Fit:

1. Read the target (small by nature) and deal its rows into ``folds`` folds by a seeded
   key of their ids (:func:`~scorers.auto.validation.fold_numbers`): the folds do not
   depend on file order or partitioning.
2. Draw a seeded sample of pool rows in one pass over the pool, by id (a second pass when
   the share, known from the pool's row count, needs a larger validation sample).
   Alternate rows of its first ``2 × pool_sample`` become the *validation* sample and a
   *stand-in pool* that the candidates fit on (DSIR's raw distribution, fastText's
   negatives), and the rest join the validation sample, so no candidate is validated on
   rows it was trained against, and no fold fit reads the whole pool.
3. For every fold and candidate: fit on the other folds and the stand-in pool, in this
   process (the rows are few), and score the held-out rows and the validation sample.
4. Measure ROC AUC and recall within the budget's top share (with bootstrap standard
   errors; the validation sample is sized to the share), and choose the best candidate
   or a convex combination of standardised scores that validates clearly better
   (:func:`~scorers.auto.validation.choose_weights`).
5. Refit the chosen candidates on the whole target and the real pool (with the job's
   runner, like any scorer), and standardise each by its scores on the validation sample.
   A candidate that trains in the background (fastText) starts first, so that its
   training overlaps the others' fits.

The score is the weighted sum of the chosen candidates' standardised scores: for a single
candidate, a monotone transform of its own score, so the same rows rank first. What the
validation measures is how well a scorer tells the target from the pool, not how good a
model trained on the selection will be.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from dataselect import checks
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import (
    Runner,
    compute_here,
    default_runner,
    fold_all,
    step_progress,
)
from dataselect.params import field_types
from dataselect.sampling import sample_rows as sample_pool_rows
from dataselect.scoring import (
    FILTERED_BY,
    Scorer,
    checked_scores,
    mean_and_std,
    needs_warmup,
)
from dataselect.table_corpus import table_corpus
from dataselect.temporary import checked_temporary_folder
from scorers import SCORERS
from scorers.auto.validation import (
    POOL_STREAM,
    Choice,
    FoldScores,
    choose_weights,
    fold_numbers,
    sample_order,
    standard_errors,
    validation_rows,
)

CHEAP_CANDIDATES = ("dsir", "fasttext", "zipfit")
# settings a candidate gets inside auto (ZIP-FIT's exact mode costs |pool| × |sample|
# compressions of both texts; fast mode is the one meant for pools)
CANDIDATE_SETTINGS: dict[str, dict[str, Any]] = {"zipfit": {"mode": "fast"}}
# Fewer pool rows than this cannot be split into a validation sample and a stand-in pool
# that measure anything (1 row left nothing to fit on); auto then uses FALLBACK unvalidated.
MIN_POOL_ROWS = 10
# ZIP-FIT fits on the target alone, so it is the candidate that any pool size allows
FALLBACK = "zipfit"
STATEMENT = ("AUC and recall measure how well a scorer tells held-out target rows from a "
             "pool sample, not the quality of a model trained on the selection.")


@dataclass
class Auto(Scorer):
    """The candidate (or weighted mix of candidates) that best separates held-out target
    rows from a pool sample."""

    name: ClassVar[str] = "auto"
    takes_budget: ClassVar[bool] = True

    candidates: list[str] | None = None
    model: str | None = None
    folds: int = 3
    pool_sample: int = 2000
    validation_sample: int = 20000
    combine: bool = True
    k: int | None = None
    fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks.check_count(self.folds, "folds", minimum=2, maximum=20)
        checks.check_count(self.pool_sample, "pool_sample", minimum=10)
        checks.check_count(self.validation_sample, "validation_sample", minimum=10)
        checks.optional(checks.check_count, self.k, "k")
        checks.optional(checks.check_fraction, self.fraction, "fraction")
        checks.check_seed(self.seed)
        names = list(self._default_candidates() if self.candidates is None
                     else self.candidates)
        unknown = [n for n in names if n not in SCORERS.names() or n == self.name]
        if unknown or not names or len(set(names)) != len(names):
            raise InputError(f"candidates must be distinct registered scorers other than auto, "
                             f"got {names}", field="candidates")
        self.names = names
        self.chosen_: dict[str, float] = {}
        self.fitted_: dict[str, Scorer] = {}
        self.scales_: dict[str, tuple[float, float]] = {}
        self.validation_: dict[str, Any] = {}
        self.fit_stats_: dict[str, Any] = {}
        # built now, so that bad settings (a model path) fail before any work
        self._prototypes = [self._candidate(n) for n in names]

    def _default_candidates(self) -> list[str]:
        names = list(CHEAP_CANDIDATES)
        if self.model is not None:  # model scorers join when a model is given
            names += [n for n in SCORERS if n != self.name and SCORERS[n].needs_model
                      and not needs_warmup(SCORERS[n])]
        return names

    def _candidate(self, name: str) -> Scorer:
        cls = SCORERS[name]
        params = dict(CANDIDATE_SETTINGS.get(name, {}))
        if "seed" in field_types(cls):
            params["seed"] = self.seed
        if cls.needs_model:
            if self.model is None:
                raise InputError(f"candidate {name} needs a model: give -p model=PATH",
                                 field="model")
            params["model"] = self.model
        return cls(**params)

    @property
    def local_workers(self) -> str:
        kinds = {c.local_workers for c in self._prototypes}
        return "threads" if kinds == {"threads"} else "processes"

    def config(self) -> dict[str, Any]:
        return {**asdict(self), "candidates": self.names, "chosen": dict(self.chosen_),
                "validation": {k: v for k, v in self.validation_.items() if k != "seconds"}}

    # ------------------------------------------------------------------ fit

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Auto:
        v = self.validate(target, pool, runner)
        if v is None:  # too few pool rows to validate on: one candidate was fitted
            return self
        best, singles = choose_weights(v.fold_scores, len(v.compared), v.share, self.combine)
        self._record(v, best, singles)
        self._refit(target, pool, v.rows, v.validation, runner)
        return self

    def validate(self, target: Corpus, pool: Corpus | None, runner: Runner = default_runner
                 ) -> Validated | None:
        """Every candidate's held-out and pool-sample scores, fold by fold (steps 1-3);
        None when the pool has too few rows to validate on, after fitting the fallback
        candidate (:meth:`_fall_back`)."""
        if pool is None:
            raise InputError("auto validates against a pool sample: pass pool=")
        # before any fold: a candidate's refusal of a fold's rows leaves it out, and a
        # temporary folder inside the pool (fastText's training files) was taken for one,
        # silently changing the choice (pass 20, g11); the command line refuses it too
        checked_temporary_folder()
        rows = _ordered(target.to_table("target"), self.seed)
        if rows.num_rows < 2:
            raise EmptyCorpusError("auto needs at least 2 target rows to hold some out",
                                   where=", ".join(target.files))
        validation, stand_in, pool_rows, share = self._samples(pool, rows.num_rows, runner)
        if pool_rows < MIN_POOL_ROWS:
            self._fall_back(target, pool, rows, validation, pool_rows, runner)
            return None
        folds = min(self.folds, rows.num_rows)
        numbers = fold_numbers(rows["id"], folds, self.seed)
        jobs = [(fold, name) for fold in range(folds) for name in self.names]
        validate = _Validate(self, target, pool, rows, numbers, validation, stand_in)
        with step_progress(runner, "validate:auto", len(jobs)) as advance:
            results = dict(zip(jobs, _run_threads(validate, jobs, advance)))
        seconds = np.array([sum(results[fold, name].seconds for fold in range(folds))
                            for name in self.names])
        compared, used, left_out = _comparable(results, self.names, folds, target)
        fold_scores = [FoldScores(np.array([results[fold, n].held_out for n in compared]),
                                  np.array([results[fold, n].pool for n in compared]))
                       for fold in used]
        return Validated(rows, validation, stand_in, pool_rows, share, folds, compared, used,
                         left_out, fold_scores, seconds)

    def _samples(self, pool: Corpus, target_rows: int, runner: Runner
                 ) -> tuple[pa.Table, pa.Table, int, float]:
        """(validation sample, stand-in pool, pool rows, top share).

        The stand-in pool has up to ``pool_sample`` rows; the validation sample is sized to
        the share (:func:`~scorers.auto.validation.validation_rows`), so that enough of its
        rows lie above the cutoff recall is measured at. A seeded sample in key order
        holds every smaller one as its first rows, so the first ``2 × pool_sample`` rows
        are dealt alternately as before and the rest join the validation sample. Where
        the share is known only from the pool's row count (``k``), a second pass draws the
        larger sample, and only where the share needs it."""
        small = 2 * self.pool_sample
        wanted = (validation_rows(self.fraction, self.pool_sample, self.validation_sample)
                  if self.fraction is not None else self.pool_sample)
        sample, pool_rows = _pool_sample(pool, self.pool_sample + max(wanted, self.pool_sample),
                                         self.seed, runner)
        share = self._top_share(pool_rows, target_rows)
        wanted = validation_rows(share, self.pool_sample, self.validation_sample)
        if self.pool_sample + wanted > sample.num_rows and pool_rows > sample.num_rows:
            sample, _ = _pool_sample(pool, self.pool_sample + wanted, self.seed, runner)
        first = np.arange(min(small, sample.num_rows))
        validation = sample.take(np.concatenate([first[0::2], np.arange(
            len(first), min(sample.num_rows, len(first) + wanted - len(first[0::2])))]))
        return validation, sample.take(first[1::2]), pool_rows, share

    def _fall_back(self, target: Corpus, pool: Corpus, rows: pa.Table, sample: pa.Table,
                   pool_rows: int, runner: Runner) -> Auto:
        """Too few pool rows to validate on: one candidate, unvalidated, and a note that
        says so (a tiny pool's selection hardly depends on the scorer, and refusing it
        would make a user pick one for no gain)."""
        name = FALLBACK if FALLBACK in self.names else self.names[0]
        rows_text = "1 row" if pool_rows == 1 else f"{pool_rows} rows"
        reason = (f"the pool has {rows_text}, too few to validate candidates on (auto needs "
                  f"at least {MIN_POOL_ROWS}), so it used {name} without validation")
        self.chosen_ = {name: 1.0}
        self.validation_ = {
            "table": [{"candidate": n, "auc": None, "auc_se": None, "recall": None,
                       "recall_se": None, "weight": 1.0 if n == name else 0.0}
                      for n in self.names],
            "chosen": dict(self.chosen_), "fallback": reason, "folds": 0,
            "folds_compared": 0, "left_out": [], "target_rows": rows.num_rows,
            "pool_rows": pool_rows, "seed": self.seed, "statement": STATEMENT,
            "seconds": {n: 0.0 for n in self.names}}
        self._refit(target, pool, rows, sample, runner)
        return self

    def _top_share(self, pool_rows: int, target_rows: int) -> float:
        """The share of the pool the budget takes; without one (a threshold, or scoring
        only), as many rows as the target has, the share a perfect scorer would fill."""
        if self.fraction is not None:
            return float(self.fraction)
        wanted = self.k if self.k is not None else target_rows
        return min(1.0, wanted / max(pool_rows, 1))

    def _record(self, v: Validated, best: Choice, singles: list[Choice]) -> None:
        self.chosen_ = {n: round(float(w), 4) for n, w in zip(v.compared, best.weights) if w}
        measured = {n: (c, float(best.weights[i]))
                    for i, (n, c) in enumerate(zip(v.compared, singles))}
        table = [_table_row(n, measured[n][0], measured[n][1], v, self.seed)
                 if n in measured else
                 {"candidate": n, "auc": None, "auc_se": None, "recall": None,
                  "recall_se": None, "weight": 0.0}
                 for n in self.names]
        if len(self.chosen_) > 1:
            table.append(_table_row("combination", best, None, v, self.seed))
        self.validation_ = {
            "table": table, "chosen": dict(self.chosen_), "top_share": round(v.share, 6),
            "top_share_from": ("fraction" if self.fraction is not None else
                               "k" if self.k is not None else "target rows"),
            "rule": best.rule, "separated": best.separated,
            "tied": [v.compared[i] for i in best.tied],
            "folds": v.folds, "folds_compared": len(v.used), "left_out": v.left_out,
            "target_rows": v.rows.num_rows, "pool_rows": v.pool_rows,
            "pool_sample_rows": v.validation.num_rows, "pool_sample_cap": self.pool_sample,
            "validation_sample_cap": self.validation_sample,
            "stand_in_pool_rows": v.stand_in.num_rows, "seed": self.seed,
            "statement": STATEMENT,
            "seconds": {n: round(float(s), 3) for n, s in zip(self.names, v.seconds)},
        }

    def _refit(self, target: Corpus, pool: Corpus, rows: pa.Table, validation: pa.Table,
               runner: Runner) -> None:
        """Fit the chosen candidates on the whole target (in key order, so the fit does not
        depend on file order) and the real pool; standardise on the validation sample."""
        whole = table_corpus(target, [rows])
        candidates = {name: self._candidate(name) for name in self.chosen_}
        references = _refit_all(candidates, whole, pool, validation, runner)
        self.fitted_, self.scales_, stats = {}, {}, {}
        for name, candidate in candidates.items():  # the chosen order: the score sums in it
            reference = references[name]
            center, spread = mean_and_std(reference)  # at any scale of score
            self.fitted_[name] = candidate
            self.scales_[name] = (center, spread if spread > 0 else 1.0)
            stats[name] = candidate.fit_stats_
        digest = hashlib.sha256(repr((self.config(), self.scales_)).encode())
        for name, candidate in self.fitted_.items():
            digest.update(f"{name}:{candidate.fit_fingerprint()}".encode())
        self.fingerprint_ = digest.hexdigest()[:16]
        self.fit_stats_ = {"validation": self.validation_, "chosen": dict(self.chosen_),
                           "candidates": stats, "tables": [self._summary_table()],
                           "notes": [self._bounds(), STATEMENT] + [
                               note for s in stats.values() for note in s.get("notes", [])]}

    def _bounds(self) -> str:
        """What the validation cost and measured, in one line."""
        v = self.validation_
        if "fallback" in v:
            return f"auto: {v['fallback']}"
        folds = (f"{v['folds']}" if v["folds_compared"] == v["folds"] else
                 f"{v['folds_compared']} of {v['folds']}")
        return (f"auto validated {len(self.names)} candidates on {folds} folds of "
                f"{v['target_rows']} target rows against a sample of {v['pool_sample_rows']} "
                f"of {v['pool_rows']} pool rows (fitting on {v['stand_in_pool_rows']} others); "
                f"recall is within the top {v['top_share']:.4g} of the pool "
                f"(from {v['top_share_from']}); chose {v['chosen']}" + "".join(
                    f"; fold {item['fold']} was left out for every candidate: "
                    f"{item['candidate']} refused its fit rows ({item['reason']})"
                    if item["fold"] is not None else
                    f"; {item['candidate']} was not compared ({item['reason']})"
                    for item in v["left_out"]) + _separation(v))

    def _summary_table(self) -> dict[str, Any]:
        """The validation table as the end-of-job summary and the report show it."""
        v = self.validation_
        rows = [[r["candidate"], _cell(r["auc"], r.get("auc_se")),
                 _cell(r["recall"], r.get("recall_se")),
                 f"{v['seconds'].get(r['candidate'], 0):.2f}" if r["weight"] is not None else "",
                 "" if r["weight"] is None else f"{r['weight']:g}"] for r in v["table"]]
        return {"title": "auto: validation",
                "columns": ["candidate", "AUC", "recall", "seconds", "weight"], "rows": rows}

    # ------------------------------------------------------------------ score

    def score_batch(self, batch: pa.Table) -> pa.Table:
        if not self.fitted_:
            raise RuntimeError("Auto.score_batch called before fit")
        total = np.zeros(batch.num_rows)
        filtered: pa.Array | None = None
        for name, candidate in self.fitted_.items():
            scores = checked_scores(name, batch, candidate.score_batch(batch))
            mean, spread = self.scales_[name]
            total += self.chosen_[name] * (_finite(scores) - mean) / spread
            if FILTERED_BY in scores.column_names:
                reasons = scores[FILTERED_BY].combine_chunks()
                filtered = reasons if filtered is None else pa.array(
                    [a if a is not None else b for a, b in
                     zip(filtered.to_pylist(), reasons.to_pylist())], pa.string())
        columns = {"id": batch["id"], "score": total}
        if filtered is not None:
            columns[FILTERED_BY] = filtered
        return pa.table(columns)


def _separation(v: dict[str, Any]) -> str:
    """The note's clause on whether the held-out rows told the candidates apart."""
    if v["separated"]:
        return ""
    kept = ("mixed them equally" if v["rule"].startswith("equal mix") else
            "kept the best-validated one alone: their equal mix validated worse")
    return (f"; the validation could not separate {', '.join(v['tied'])} (their row-by-row "
            f"differences are within Student's t 5 % point of their standard error): {kept}; "
            f"their precision may differ more than the table says")


def _cell(value: float | None, error: float | None) -> str:
    if value is None:
        return "not compared"
    return f"{value:.4f}" if error is None else f"{value:.4f} ± {error:.4f}"


def _table_row(name: str, choice: Choice, weight: float | None, v: Validated, seed: int
               ) -> dict[str, Any]:
    """One row of the validation table: AUC and recall with their bootstrap standard
    errors (:func:`~scorers.auto.validation.standard_errors`)."""
    auc_se, recall_se = standard_errors(v.fold_scores, choice.weights, v.share, seed)
    return {"candidate": name, "auc": round(choice.auc, 4), "auc_se": round(auc_se, 4),
            "recall": round(choice.recall, 4), "recall_se": round(recall_se, 4),
            "weight": None if weight is None else round(weight, 4)}


@dataclass(frozen=True)
class Validated:
    """What the validation measured: the samples, the folds compared and, per fold, every
    compared candidate's scores of its held-out rows and of the validation sample."""

    rows: pa.Table
    validation: pa.Table
    stand_in: pa.Table
    pool_rows: int
    share: float
    folds: int
    compared: list[str]
    used: list[int]
    left_out: list[dict[str, Any]]
    fold_scores: list[FoldScores]
    seconds: np.ndarray


def _ordered(table: pa.Table, seed: int) -> pa.Table:
    """Rows in the order of their seeded keys: independent of file order."""
    return table.take(sample_order(table["id"], seed, POOL_STREAM))


def _finite(scores: pa.Table) -> np.ndarray:
    values = scores["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    return np.nan_to_num(values, nan=-1e300, neginf=-1e300, posinf=1e300)


def _scores(candidate: Scorer, corpus: Corpus, rows: pa.Table) -> np.ndarray:
    """The candidate's scores of ``rows`` (read from ``corpus``), as floats."""
    if rows.num_rows == 0:
        return np.zeros(0)
    view = corpus.scoring_view(rows, candidate.uses_response_spans)
    return _finite(checked_scores(candidate.name, view, candidate.score_batch(view)))


@dataclass(frozen=True)
class _Validate:
    """One (fold, candidate) of the validation: fit on the other folds and the stand-in
    pool, score the fold's held-out rows and the validation sample; with the seconds."""

    auto: Auto
    target: Corpus
    pool: Corpus
    rows: pa.Table
    numbers: np.ndarray
    validation: pa.Table
    stand_in: pa.Table

    def __call__(self, job: tuple[int, str]) -> _FoldResult:
        fold, name = job
        started = time.perf_counter()
        held = self.rows.filter(pa.array(self.numbers == fold))
        fit_rows = self.rows.filter(pa.array(self.numbers != fold))
        try:
            candidate = self.auto._candidate(name).fit(
                table_corpus(self.target, [fit_rows]), table_corpus(self.pool, [self.stand_in]),
                runner=_in_process)
        except InputError as refusal:  # the fold's few rows, not the user's input
            return _FoldResult(None, None, time.perf_counter() - started, refusal.message)
        return _FoldResult(_scores(candidate, self.target, held),
                           _scores(candidate, self.pool, self.validation),
                           time.perf_counter() - started)


@dataclass(frozen=True)
class _FoldResult:
    """One (fold, candidate): scores of the held-out rows and of the validation sample, or
    why the candidate refused to fit the fold's rows."""

    held_out: np.ndarray | None
    pool: np.ndarray | None
    seconds: float
    refusal: str | None = None


def _comparable(results: dict[tuple[int, str], _FoldResult], names: list[str], folds: int,
                target: Corpus) -> tuple[list[str], list[int], list[dict[str, Any]]]:
    """The candidates and folds to compare, and what was left out and why.

    A candidate can refuse a fold's few fit rows that the whole target would satisfy (six
    short chat records that no zstd level shrinks, where ten do). Comparing candidates on
    different held-out rows would not be fair, so such a fold is left out for every
    candidate; a candidate that refuses every fold is left out instead. Nothing left to
    compare is the user's problem and is said so."""
    refused = {(fold, name): r.refusal for (fold, name), r in results.items() if r.refusal}
    if not refused:
        return list(names), list(range(folds)), []
    whole_folds = [f for f in range(folds) if not any((f, n) in refused for n in names)]
    if whole_folds:
        left = [{"fold": f, "candidate": n, "reason": why}
                for (f, n), why in sorted(refused.items())]
        return list(names), whole_folds, left
    kept = [n for n in names if not any((f, n) in refused for f in range(folds))]
    if not kept:
        reasons = "; ".join(f"{n} on fold {f}: {why}" for (f, n), why in sorted(refused.items()))
        raise InputError(f"no auto candidate could be fitted on every fold of the target's "
                         f"rows ({reasons}); give more target rows or other candidates",
                         where=", ".join(target.files), field="candidates")
    left = [{"fold": None, "candidate": n, "reason": next(
        why for (f, m), why in sorted(refused.items()) if m == n)} for n in names if n not in kept]
    return kept, list(range(folds)), left


def _refit_all(candidates: dict[str, Scorer], target: Corpus, pool: Corpus,
               validation: pa.Table, runner: Runner) -> dict[str, np.ndarray]:
    """Fit every candidate on ``target`` and ``pool`` and score the validation sample with
    it. Those that train in the background (``Scorer.trains_in_background``) start first,
    so that their training (fastText's, on one core) overlaps the others' fits and scoring
    (DSIR's pass over the pool on the cluster); each fit is the one it would be alone."""
    order = sorted(candidates, key=lambda name: not candidates[name].trains_in_background)
    references: dict[str, np.ndarray] = {}
    with ExitStack() as stack:  # a failure stops the training still under way
        started = {name: stack.enter_context(candidates[name].start_fit(target, pool, runner))
                   for name in order}
        for name in reversed(order):  # those fitted already first, while the others train
            if candidates[name].trains_in_background:
                with step_progress(runner, f"train:{name}", 1) as advance:
                    fitted = started[name].wait()
                    advance(1)
            else:
                fitted = started[name].wait()
            references[name] = _scores(fitted, pool, validation)
    return {name: references[name] for name in candidates}


def _run_threads(fn: Any, jobs: list[Any], advance: Any) -> list[Any]:
    """``fn`` over ``jobs`` in this process, on a thread per core, results in job order.

    The rows are few (a target and a bounded pool sample), so a cluster round trip would
    cost more than it saves; the heavy parts release the GIL (compressors, Polars, the
    fastText trainer's own process). Dask runs the candidates' inner stages synchronously
    here, set once around all threads: a candidate's state is never scattered to a
    cluster from inside this loop."""
    import dask

    results: list[Any] = [None] * len(jobs)
    with dask.config.set(scheduler="sync"), ThreadPoolExecutor(
            max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            advance(1)
    return results


def _in_process(stage: str, tasks: Any, fold: Any = None) -> Any:
    results = [compute_here(task) for task in tasks]
    return fold_all(results, fold) if fold is not None else results


def _pool_sample(pool: Corpus, size: int, seed: int, runner: Runner) -> tuple[pa.Table, int]:
    """A seeded sample of ``size`` pool rows (by id, in key order) and the pool's row count
    (:func:`~dataselect.sampling.sample_rows`: the pool's ids, then the sampled rows)."""
    sample, rows = sample_pool_rows(pool, size, seed, runner, "fit:auto", "fit-auto",
                                    stream=POOL_STREAM)
    if rows == 0:
        raise EmptyCorpusError("the pool holds no records", where=", ".join(pool.files))
    return sample, int(rows)
