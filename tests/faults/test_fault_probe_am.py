"""Hostile pass 17: z-score moments at any scale (g17); fastText model headers (g21).

g17: a z-score combine does not depend on the scores' scale, yet a scorer whose distinct
scores were ~1e-200 was silently left out (its squared deviations underflowed to 0, the
spread read 0 and was replaced by 1, every z-score ~0), and scores of ~1e303 were refused
(their sum of squares overflowed). Moments are now taken in units of each partition's
largest power of two and merged in common units.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import write_jsonl
from fault_helpers import combined_scores
from scoring_helpers import FixedScorer

from dataselect import read_corpus, select
from dataselect.scoring import merge_moments, scaled_moments

# --- g17: z-score moments at any scale -----------------------------------------------------

SCALES = [1e-200, 1e-300, 1.0, 3e5, 1e303, -1e307]


def _reference(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std in extended precision (its exponent range holds 1e-400
    and 1e606), the naive way."""
    wide = values.astype(np.longdouble)
    mean = wide.mean()
    return float(mean), float(np.sqrt(((wide - mean) ** 2).mean()))


def _merged(values: np.ndarray, cuts: list[int]) -> tuple[float, float]:
    count, mean, squares, exponent = merge_moments(
        scaled_moments(part) for part in np.split(values, cuts))
    assert count == len(values)
    return math.ldexp(mean, exponent), math.ldexp(math.sqrt(squares / count), exponent)


@pytest.mark.skipif(np.finfo(np.longdouble).maxexp <= 1024,
                    reason="no extended-precision long double on this platform")
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("cuts", [[], [1], [3, 3, 50], [10, 20, 30, 40, 90], [99]])
def test_merged_scaled_moments_match_an_extended_precision_reference(scale, cuts):
    values = np.random.default_rng(17).normal(2.0, 1.5, 100) * scale
    mean, std = _merged(values, cuts)
    want_mean, want_std = _reference(values)
    assert std > 0
    assert mean == pytest.approx(want_mean, rel=1e-12)
    assert std == pytest.approx(want_std, rel=1e-12)


def test_parts_of_very_different_scales_merge():
    """One part of ~1, one of ~1e-250: the small one's squares underflow in the common
    units, as they are negligible there; the mean and spread are still right."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 50), rng.normal(0, 1, 50) * 1e-250])
    mean, std = _merged(values, [50])
    assert mean == pytest.approx(values[:50].sum() / 100, rel=1e-12)
    assert std == pytest.approx(float(np.sqrt((values ** 2).mean() - mean ** 2)), rel=1e-12)


def test_moments_of_an_earlier_version_are_still_merged():
    """Summaries of three numbers (count, mean, squares, unscaled) merge as exponent 0,
    alone or with new ones."""
    values = np.arange(10.0)
    old = (5, float(values[:5].mean()), float(((values[:5] - values[:5].mean()) ** 2).sum()))
    count, mean, squares, exponent = merge_moments([old, scaled_moments(values[5:])])
    assert count == 10
    assert math.ldexp(mean, exponent) == pytest.approx(4.5)
    assert math.ldexp(squares, 2 * exponent) == pytest.approx(82.5)
    assert merge_moments([old]) == (*old, 0)
    assert merge_moments([]) == (0, 0.0, 0.0, 0)


@pytest.mark.parametrize("value", [0.1, 1e-200, -7e303, 0.0])
def test_constant_scores_have_no_spread(value):
    """Scores all equal: mean exactly that value, spread exactly 0 (no rounding of a sum
    makes one), in every partitioning."""
    values = np.full(37, value)
    count, mean, squares, exponent = merge_moments(
        scaled_moments(p) for p in np.split(values, [5, 6, 20]))
    assert (count, squares) == (37, 0.0) and math.ldexp(mean, exponent) == value


def _pool(tmp_path):
    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(60)]
    return read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=400)


def _combined(pool, scale, constant=None):
    values = {f"u{i}": (constant if constant is not None else (i * 37 % 11 + 0.5) * scale)
              for i in range(60)}
    mine = FixedScorer(values, frozenset({"u3"}), label="mine").score(pool)
    other = FixedScorer({f"u{i}": float(i % 5) for i in range(60)}, frozenset(),
                        label="other").score(pool)
    return combined_scores(pool, select.combine([other, mine], method="zscore",
                                                weights=[1.0, 2.0]))


@pytest.mark.parametrize("scale", [1e-200, 1e-310, 1e303, -1e307])
def test_zscore_combine_does_not_depend_on_the_scale(tmp_path, scale):
    """The probe: scores of ~1e-200 combined as if absent (the selection was the other
    scorer's alone); ~1e303 was refused. Both now give the z-scores of scale 1 (or -1)."""
    pool = _pool(tmp_path)
    assert pool.npartitions > 2
    got = _combined(pool, scale)
    want = _combined(pool, math.copysign(1.0, scale))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("value", [5.0, 1e-200, 1e303])
def test_constant_scores_combine_as_zero(tmp_path, value):
    """A scorer whose scores are all equal adds z-scores of 0, not a division by zero:
    the combination is the other scorer's z-scores weighted 1/3."""
    pool = _pool(tmp_path)
    got = _combined(pool, 1.0, constant=value)
    other = np.array([float(i % 5) for i in range(60)])
    np.testing.assert_allclose(got, (other - other.mean()) / other.std() / 3,
                               rtol=0, atol=1e-12)


def test_unscaled_moments_that_overflow_are_refused_in_one_line(tmp_path):
    """Summaries of an earlier version (three numbers, unscaled) of scores of ~1e303 hold
    an infinite sum of squares: refused naming the scorer and the rank combine, not NaN
    z-scores."""
    from dataselect.errors import InputError
    from dataselect.execution import default_runner

    pool = _pool(tmp_path)
    big = FixedScorer({f"u{i}": 1e303 * (i % 7) for i in range(60)}, frozenset(),
                      label="big").score(pool).write(tmp_path / "s", default_runner)
    for summary in big.summaries:
        summary["moments"] = (summary["eligible"], 3e303, math.inf)
    other = FixedScorer({f"u{i}": float(i % 5) for i in range(60)}, frozenset()).score(pool)
    with pytest.raises(InputError, match=r"'fixed'.*too large.*method: rank") as caught:
        select.combine([other, big], method="zscore")
    assert "\n" not in str(caught.value)
