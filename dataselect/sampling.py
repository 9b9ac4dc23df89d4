"""Seeded per-row randomness that depends on (seed, id) only.

Samples and Gumbel noise drawn this way do not change when the pool is re-partitioned, read
by more workers or resumed halfway: a row's coin flip travels with its id. Each draw hashes
the id with pandas' vectorised ``hash_array`` under a seed-derived key; the top 53 bits of the
64-bit hash give a uniform number in (0, 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SAMPLE_STREAM, GUMBEL_STREAM = 1, 2


def uniform(ids: Any, seed: int, stream: int) -> np.ndarray:
    """One uniform (0, 1) number per id; ``stream`` separates independent uses of a seed."""
    values = np.asarray(ids.to_pylist() if hasattr(ids, "to_pylist") else list(ids), dtype=object)
    key = f"{seed & 0xFFFFFFFFFFFF:012x}{stream:04x}"
    bits = pd.util.hash_array(values, hash_key=key, categorize=False)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def sample_mask(ids: Any, fraction: float, seed: int) -> np.ndarray:
    """A seeded Bernoulli(``fraction``) sample of the rows."""
    if fraction >= 1:
        return np.ones(len(ids), bool)
    if fraction <= 0:
        return np.zeros(len(ids), bool)
    return uniform(ids, seed, SAMPLE_STREAM) < fraction


def gumbel_noise(ids: Any, seed: int) -> np.ndarray:
    """Standard Gumbel variates, -log(-log(u)), for Gumbel top-k sampling."""
    return -np.log(-np.log(uniform(ids, seed, GUMBEL_STREAM)))
