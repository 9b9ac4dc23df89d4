"""Selection policies: which pool rows to keep, given their scores.

Each policy works from small per-partition summaries of the score store (row and eligible
counts, rows removed per filter, a ladder of about 64 of its scores: taken from the scoring
pass when it ran in this process) and passes over the score store on the workers
(:mod:`dataselect.topk`), and returns a :class:`Selection`: the chosen positions per
partition with their global rank, plus the counts in and out. The client holds O(k +
partitions), never a per-row array; the pool itself is read again only when the selection
is written, so memory depends neither on the rows nor on how much the documents weigh.

Rows whose ``filtered_by`` is set (for example DSIR's minimum length) are never selected
and are counted per filter. Ties are broken by pool order, so a selection is a pure
function of the scores, the policy and the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataselect.checks import (
    SettingError,
    check_choice,
    check_count,
    check_finite,
    check_fraction,
    check_name,
    check_seed,
    check_weights,
    shown,
    wrong_type,
)
from dataselect.combine import METHODS, combine_scores
from dataselect.corpus import Corpus, as_corpus
from dataselect.errors import InputError
from dataselect.execution import Runner, default_runner
from dataselect.outdir import normalize
from dataselect.output import jsonable
from dataselect.round_robin import choose as rounds_over_targets
from dataselect.scoring import Scores, as_scores
from dataselect.summaries import collect_summaries
from dataselect.topk import KeySpec, all_rows, merge_dropped, top_rows


@dataclass
class Selection:
    """Chosen rows of ``pool``: partition -> sorted positions, and their global ranks."""

    pool: Corpus
    scores: Scores
    positions: dict[int, np.ndarray]
    ranks: dict[int, np.ndarray]
    policy: dict[str, Any]
    counts: dict[str, Any]
    # the folder this selection was last written to (``write``), for ``to_hf``
    written_to: str | None = field(default=None, compare=False, repr=False)

    @property
    def notes(self) -> list[str]:
        """How the budget was met, where a user should know (:func:`budget_notes`)."""
        return budget_notes(self.counts)

    @property
    def num_selected(self) -> int:
        return int(sum(len(p) for p in self.positions.values()))

    def description(self) -> dict[str, Any]:
        return jsonable({"policy": self.policy, "scores": self.scores.description})

    def write(self, out: str, **kwargs: Any) -> dict[str, Any]:
        """Write the chosen rows and ``.manifest.json`` (see ``writer.write_selection``;
        ``save_to_disk=True`` adds the ``datasets.load_from_disk`` layout)."""
        from dataselect.writer import write_selection

        manifest = write_selection(self, out, **kwargs)
        self.written_to = normalize(getattr(out, "path", out))  # a URL stays a URL
        return manifest

    def to_hf(self, out: str | None = None, **kwargs: Any) -> Any:
        """The selected rows as a ``datasets.Dataset`` memory-mapped from disk (every pool
        column plus ``score``, ``rank`` and any ``score_<scorer>``, in pool order).

        With ``out``, the selection is written there first (``write(out,
        save_to_disk=True, **kwargs)``: resumed if it is there already); without, it is
        read from the folder it was last written to. The ``Dataset`` maps the files under
        ``<folder>/.hf/`` (the layout ``Dataset.save_to_disk`` writes), converted from the
        parts on first use.
        """
        from dataselect.hf import load_hf

        if out is not None:
            self.write(out, save_to_disk=True, **kwargs)
        elif kwargs:
            raise InputError(f"to_hf takes write's settings ({', '.join(sorted(kwargs))}) "
                             "only together with out")
        if self.written_to is None:
            raise InputError("the selection is not written yet: call to_hf(out) (or "
                             "write(out) first) to give it a folder")
        return load_hf(self.written_to, kwargs.get("runner", default_runner))


def _counts(parts: list[dict[str, Any]], selected: int, requested: int | None = None
            ) -> dict[str, Any]:
    """Rows in, filtered, eligible and selected; ``k_requested`` too when the budget asked
    for more rows than were selected (every eligible row was taken instead: the job
    succeeds, and says so, :func:`budget_notes`)."""
    counts = {"rows_in": sum(p["rows"] for p in parts), "filtered": merge_dropped(parts),
              "eligible": _eligible(parts), "selected": selected}
    if requested is not None and requested > selected:
        counts["k_requested"] = int(requested)
    return counts


def _eligible(parts: list[dict[str, Any]]) -> int:
    return sum(p["eligible"] for p in parts)


def budget_notes(counts: dict[str, Any]) -> list[str]:
    """What a user should know about how the budget was met, since the output holds fewer
    rows than asked for (the summary and the manifest's ``notes`` say so): a ``k`` larger
    than the eligible rows selects them all; a threshold no row reaches, or filters that
    leave no row, select nothing."""
    notes = []
    requested = counts.get("k_requested")
    if requested is not None:
        notes.append(f"k = {requested} asked for more rows than the {counts['eligible']} "
                     f"eligible ones: {counts['selected']} selected, fewer than k")
    elif counts["selected"] == 0 and counts["rows_in"]:
        why = ("no eligible row scored at least the threshold"
               if counts.get("below_threshold") else "every row was filtered out")
        notes.append(f"nothing selected: {why} (filtered: "
                     f"{', '.join(f'{k}={v}' for k, v in counts['filtered'].items()) or 'none'})")
    return notes


def _choose_top(scores: Scores, parts: list[dict[str, Any]], k: int, policy: dict[str, Any],
                runner: Runner, seed: int | None = None) -> Selection:
    """The ``k`` eligible rows with the largest keys (the score, plus Gumbel noise of the
    id when ``seed`` is given); ties go to the earlier pool row. Exact, from per-partition
    ladders and passes over the scores (:func:`~dataselect.topk.top_rows`): the client
    holds O(k + partitions), never a per-row array."""
    sizes = [p["rows"] for p in parts]
    ladders = ([p["ladder"] for p in parts] if seed is None
               else _gumbel_ladders(parts, seed))
    order = top_rows(scores, runner, KeySpec(seed), k, sizes, ladders)
    return _selection(scores, sizes, order, policy, _counts(parts, len(order), k))


def _gumbel_ladders(parts: list[dict[str, Any]], seed: int) -> list[Any] | None:
    """The ladders of the Gumbel keys for ``seed``, where the pass that wrote the store
    made them for that seed (``Scores.write(resample_seed=...)``); else None, and a pass
    over the scores makes them."""
    made = [p.get("gumbel_ladder") for p in parts]
    if all(m is not None and m[0] == seed for m in made):
        return [ladder for _, ladder in made]
    return None


def _selection(scores: Scores, sizes: list[int], order: np.ndarray, policy: dict[str, Any],
               counts: dict[str, Any]) -> Selection:
    """Split global positions (in rank order) back into per-partition positions and ranks.

    Sorting the chosen rows by position once groups them by partition, so the split costs
    O(k log k + P), not a mask over the k rows for each of the P partitions."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    by_position = np.argsort(order, kind="stable")
    ordered = order[by_position]
    bounds = np.searchsorted(ordered, starts)
    positions, ranks = {}, {}
    for i in range(len(sizes)):
        mine = slice(bounds[i], bounds[i + 1])
        positions[i] = ordered[mine] - starts[i]
        ranks[i] = by_position[mine].astype(np.int64)
    return Selection(scores.corpus, scores, positions, ranks, policy, counts)


def top_k(pool: Corpus, scores: Scores, k: int, runner: Runner = default_runner) -> Selection:
    """The ``k`` highest-scoring eligible rows (all of them if fewer)."""
    pool, scores = _aligned(pool, scores)
    k = check_count(k, "k")
    return _choose_top(scores, collect_summaries(scores, runner), k,
                       {"policy": "top_k", "k": k}, runner)


def top_fraction(pool: Corpus, scores: Scores, fraction: float,
                 runner: Runner = default_runner) -> Selection:
    """The best ``ceil(fraction * eligible rows)`` rows."""
    pool, scores = _aligned(pool, scores)
    fraction = check_fraction(fraction, "fraction")
    parts = collect_summaries(scores, runner)
    k = math.ceil(fraction * _eligible(parts))
    return _choose_top(scores, parts, k, {"policy": "top_fraction", "fraction": fraction, "k": k},
                       runner)


def threshold(pool: Corpus, scores: Scores, min_score: float,
              runner: Runner = default_runner) -> Selection:
    """Every eligible row with ``score >= min_score``, ranked by score."""
    pool, scores = _aligned(pool, scores)
    min_score = check_finite(min_score, "threshold")
    parts = collect_summaries(scores, runner)
    sizes = [p["rows"] for p in parts]
    order = all_rows(scores, runner, KeySpec(min_score=min_score), sizes)
    counts = _counts(parts, len(order))
    counts["below_threshold"] = counts["eligible"] - len(order)
    return _selection(scores, sizes, order, {"policy": "threshold", "min_score": min_score},
                      counts)


def importance_resample(pool: Corpus, scores: Scores, k: int | None = None, seed: int = 0,
                        runner: Runner = default_runner, fraction: float | None = None
                        ) -> Selection:
    """Sample ``k`` rows without replacement with probability proportional to ``exp(score)``.

    Scores are log importance weights (DSIR); the Gumbel top-k trick (add Gumbel noise to
    each log weight, keep the ``k`` largest) draws exactly such a sample in one pass. The
    noise is a function of (seed, id), so the draw does not depend on partitioning. Give
    ``fraction`` instead of ``k`` to sample ``ceil(fraction * eligible rows)``.
    """
    pool, scores = _aligned(pool, scores)
    if (k is None) == (fraction is None):
        raise InputError("give exactly one of k or fraction")
    if fraction is not None:
        fraction = check_fraction(fraction, "fraction")
    else:
        k = check_count(k, "k")
    seed = check_seed(seed)
    parts = collect_summaries(scores, runner)
    if fraction is not None:
        k = math.ceil(fraction * _eligible(parts))
    policy = {"policy": "importance_resample", "k": k, "seed": seed}
    if fraction is not None:
        policy["fraction"] = fraction
    return _choose_top(scores, parts, k, policy, runner, seed)


def round_robin(pool: Corpus, scores: Scores, k: int, column: str = "target_scores",
                runner: Runner = default_runner) -> Selection:
    """RDS-style multi-target selection: each target example ranks the pool by its own
    score (the list column ``column``, one score per target example); rounds go through the
    target examples in order, each taking its best row not chosen yet, until ``k`` rows are
    chosen or every eligible row is. Ties go to the earlier pool row.

    Bounded: the client holds about ``4 k`` candidate rows and ``T × log₂ k`` ladder
    values a partition (:mod:`dataselect.round_robin`), not every partition's ``k`` best
    rows per target example.
    """
    pool, scores = _aligned(pool, scores)
    k = check_count(k, "k")
    column = check_name(column, "column")
    parts = collect_summaries(scores, runner)
    sizes = [p["rows"] for p in parts]
    offsets = np.cumsum([0, *sizes[:-1]])
    k_final = min(k, _eligible(parts))
    order, width = rounds_over_targets(scores, runner, column, k_final, offsets)
    return _selection(scores, sizes, order, {"policy": "round_robin", "k": k, "column": column,
                                             "targets": width}, _counts(parts, len(order), k))


def combine(scores: list[Scores], method: str = "zscore", weights: list[float] | None = None,
            runner: Runner = default_runner) -> Scores:
    """One score from several: weighted mean of z-scores, or of normalised ranks (0..1).

    A row filtered by any scorer stays filtered. Statistics are over eligible rows.
    """
    if not isinstance(scores, list | tuple) or not all(isinstance(s, Scores) for s in scores):
        raise wrong_type("a list of Scores (scorer.score(pool), one per scorer)", scores,
                         "scores")
    check_choice(method, METHODS, "method")
    if weights is not None:  # a NaN weight would pass a "< 0" test and make every score NaN
        if not isinstance(weights, list | tuple) or len(weights) != len(scores):
            raise SettingError(f"must be a list of {len(scores)} numbers, one per Scores, "
                               f"got {shown(weights)}", field="weights")
        weights = check_weights(weights, "weights")

    return combine_scores(scores, method, weights, runner)


def _aligned(pool: Corpus | str, scores: Scores | str) -> tuple[Corpus, Scores]:
    """The pool and its scores, each taken as a user passes them (a path for the pool, a
    score store's folder for the scores), refused when they are not of one pool."""
    pool = as_corpus(pool, "pool")
    scores = as_scores(scores, pool, "scores")
    _check_aligned(pool, scores)
    return pool, scores


def _check_aligned(pool: Corpus, scores: Scores) -> None:
    if jsonable(pool.fingerprint()) != jsonable(scores.corpus.fingerprint()):
        raise InputError("scores were computed on a different pool (files or partitioning "
                         "differ)")
