"""How good a selection is, in numbers a user can compare across runs.

* KL reduction (Xie et al. 2023, Sec. 5): how much closer the selected data's hashed n-gram
  distribution is to the target's than the pool's is: KL(target‖pool) − KL(target‖selected).
  Positive means the selection moved toward the target; it is reported for every selection.
* Domain precision: the share of selected rows whose label equals the target's, for
  benchmarks where the pool's domains are known.
* LDS, the linear datamodeling score (Park et al. 2023): how well attribution scores
  predict what models retrained on random subsets of the training data do on each query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dataselect.checks import check_nonnegative
from dataselect.errors import InputError

DEFAULT_SMOOTHING = 1.0


def ngram_distribution(counts: np.ndarray, smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Bucket probabilities with additive smoothing, so no bucket has probability zero."""
    counts = np.asarray(counts, dtype=np.float64)
    smoothing = check_nonnegative(smoothing, "smoothing")  # NaN passed a "< 0" test
    if counts.ndim != 1 or not np.isfinite(counts).all() or (counts < 0).any():
        raise InputError("n-gram counts must be one row of finite counts >= 0",
                         field="counts")
    total = counts.sum() + smoothing * len(counts)
    if total <= 0:
        raise InputError("cannot build a distribution from no n-grams")
    return (counts + smoothing) / total


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p‖q) in nats; terms with p = 0 contribute nothing."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape:
        raise InputError(f"distributions differ in size: {p.shape} vs {q.shape}")
    mask = p > 0
    if np.any(q[mask] <= 0):
        return float("inf")
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def kl_reduction(target_counts: np.ndarray, pool_counts: np.ndarray,
                 selected_counts: np.ndarray, smoothing: float = DEFAULT_SMOOTHING
                 ) -> dict[str, float | str | None]:
    """KL(target‖pool), KL(target‖selected) and their difference (higher is better).

    A side that holds no n-gram (a metrics sample that drew no row, as a tiny pool or a
    tiny ``metrics_sample`` gives; a selection of no rows) has no distribution: its KL
    would be the KL to the smoothing alone, a number that looks real. It is None, as is
    the difference, and ``metrics_note`` says why and what to change."""
    target = ngram_distribution(target_counts, smoothing)
    to_pool, to_selected = (
        kl_divergence(target, ngram_distribution(counts, smoothing)) if np.any(counts)
        else None for counts in (pool_counts, selected_counts))
    found: dict[str, float | str | None] = {
        "kl_target_pool": to_pool, "kl_target_selected": to_selected,
        "kl_reduction": None if to_pool is None or to_selected is None
        else to_pool - to_selected}
    empty = [why for value, why in ((to_pool, EMPTY_POOL_SAMPLE),
                                    (to_selected, EMPTY_SELECTION)) if value is None]
    if empty:
        found["metrics_note"] = "; ".join(empty)
    return found


EMPTY_POOL_SAMPLE = ("kl_target_pool is null: the pool sample for the metrics holds no row "
                     "with text (the pool is too small for the metrics sample fraction); "
                     "raise --metrics-sample (metrics_sample in a recipe)")
EMPTY_SELECTION = "kl_target_selected is null: the selection holds no row with text"


def domain_precision(selected_labels: Sequence[Any], target_label: Any) -> float:
    """Share of the selection whose label equals ``target_label`` (0 for an empty pick)."""
    labels = list(selected_labels)
    if not labels:
        return 0.0
    return sum(1 for label in labels if label == target_label) / len(labels)


def lds_per_query(attributions: np.ndarray, subsets: np.ndarray, outputs: np.ndarray
                  ) -> np.ndarray:
    """Linear datamodeling score of each query (Park et al., TRAK, 2023).

    ``attributions``: ``(queries, train)`` scores; ``subsets``: ``(models, train)`` 0/1
    masks of the training rows each retrained model saw; ``outputs``: ``(models, queries)``
    the retrained models' output on each query (e.g. the correct-class margin). The
    prediction for a subset is the sum of its rows' attributions; the LDS of a query is
    the Spearman rank correlation, across models, between prediction and output. NaN
    where either side is constant.
    """
    attributions = np.asarray(attributions, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=np.float64)
    outputs = np.asarray(outputs, dtype=np.float64)
    if subsets.shape[1] != attributions.shape[1] or outputs.shape != (
            subsets.shape[0], attributions.shape[0]):
        raise ValueError(f"shapes do not line up: attributions {attributions.shape}, "
                         f"subsets {subsets.shape}, outputs {outputs.shape}")
    predicted = subsets @ attributions.T  # (models, queries)
    result = np.full(attributions.shape[0], np.nan)
    for q in range(attributions.shape[0]):
        a = pd.Series(predicted[:, q]).rank().to_numpy()
        b = pd.Series(outputs[:, q]).rank().to_numpy()
        if a.std() > 0 and b.std() > 0:
            result[q] = np.corrcoef(a, b)[0, 1]
    return result


def lds(attributions: np.ndarray, subsets: np.ndarray, outputs: np.ndarray) -> float:
    """Mean LDS over the queries whose correlation is defined (see :func:`lds_per_query`)."""
    per_query = lds_per_query(attributions, subsets, outputs)
    if np.isnan(per_query).all():
        raise ValueError("LDS is undefined: predictions or outputs are constant for every query")
    return float(np.nanmean(per_query))
