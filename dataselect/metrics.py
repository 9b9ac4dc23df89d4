"""How good a selection is, in numbers a user can compare across runs.

* KL reduction (Xie et al. 2023, Sec. 5): how much closer the selected data's hashed n-gram
  distribution is to the target's than the pool's is: KL(target‖pool) − KL(target‖selected).
  Positive means the selection moved toward the target; it is reported for every selection.
* Domain precision: the share of selected rows whose label equals the target's, for
  benchmarks where the pool's domains are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dataselect.errors import InputError

DEFAULT_SMOOTHING = 1.0


def ngram_distribution(counts: np.ndarray, smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Bucket probabilities with additive smoothing, so no bucket has probability zero."""
    counts = np.asarray(counts, dtype=np.float64)
    if smoothing < 0:
        raise InputError(f"smoothing must be >= 0, got {smoothing}")
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
                 ) -> dict[str, float]:
    """KL(target‖pool), KL(target‖selected) and their difference (higher is better)."""
    target = ngram_distribution(target_counts, smoothing)
    to_pool = kl_divergence(target, ngram_distribution(pool_counts, smoothing))
    to_selected = kl_divergence(target, ngram_distribution(selected_counts, smoothing))
    return {"kl_target_pool": to_pool, "kl_target_selected": to_selected,
            "kl_reduction": to_pool - to_selected}


def domain_precision(selected_labels: Sequence[Any], target_label: Any) -> float:
    """Share of the selection whose label equals ``target_label`` (0 for an empty pick)."""
    labels = list(selected_labels)
    if not labels:
        return 0.0
    return sum(1 for label in labels if label == target_label) / len(labels)
