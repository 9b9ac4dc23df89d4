"""KL reduction and domain precision against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dataselect.errors import InputError
from dataselect.metrics import (
    domain_precision,
    kl_divergence,
    kl_reduction,
    ngram_distribution,
)


def test_kl_divergence_matches_the_formula():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    expected = 0.5 * math.log(2) + 0.25 * math.log(1) + 0.25 * math.log(0.5)
    assert kl_divergence(p, q) == pytest.approx(expected)
    assert kl_divergence(p, p) == 0
    assert kl_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    assert kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == math.inf


def test_smoothed_distribution_and_kl_reduction():
    target = np.array([8, 2, 0, 0])
    pool = np.array([2, 2, 3, 3])
    selected = np.array([7, 2, 1, 0])
    dist = ngram_distribution(target, smoothing=1.0)
    np.testing.assert_allclose(dist, np.array([9, 3, 1, 1]) / 14)
    result = kl_reduction(target, pool, selected, smoothing=1.0)
    to_pool = kl_divergence(dist, ngram_distribution(pool, 1.0))
    to_sel = kl_divergence(dist, ngram_distribution(selected, 1.0))
    assert result == pytest.approx({"kl_target_pool": to_pool, "kl_target_selected": to_sel,
                                    "kl_reduction": to_pool - to_sel})
    assert result["kl_reduction"] > 0
    assert kl_reduction(target, pool, pool)["kl_reduction"] == 0


def test_bad_distributions_are_errors():
    with pytest.raises(InputError):
        ngram_distribution(np.zeros(3), smoothing=0)
    with pytest.raises(InputError):
        kl_divergence(np.ones(2) / 2, np.ones(3) / 3)


def test_domain_precision():
    assert domain_precision(["a", "b", "a", "a"], "a") == 0.75
    assert domain_precision([], "a") == 0.0
