"""The sparse JL projection (models.projection.SparseProjection): its explicit matrix, the
Johnson–Lindenstrauss bound, batch and piece independence, seeds, and the hash against a
NumPy reimplementation (what makes the matrix the same on every device)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models import projection as projection_module
from models.projection import SparseProjection, make_projection


def test_projection_equals_its_explicit_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection_module, "CHUNK_COORDINATES", 7)  # chunks inside pieces
    sizes, dim, s = [5, 20, 3], 18, 4  # blocks of 4, 5, 4, 5 outputs
    projection = SparseProjection(sizes, dim, seed=3, nonzeros=s)
    assert len(projection.plan) == 1 + 3 + 1
    matrix = projection.matrix()
    assert matrix.shape == (28, 18)
    starts = [0, 4, 9, 13, 18]
    for row in matrix:
        nonzero = torch.nonzero(row).flatten().tolist()
        # one output per block, so s distinct outputs, each ±1/sqrt(s)
        assert ([sum(a <= o < b for o in nonzero) for a, b in itertools.pairwise(starts)]
                == [1] * 4)
        assert set(row[nonzero].abs().tolist()) == {0.5}
    pieces = [torch.randn(4, n, dtype=torch.float64) for n in sizes]
    expected = (torch.cat(pieces, 1) @ matrix.double()).float()
    torch.testing.assert_close(projection.project(pieces), expected)
    uncached = SparseProjection(sizes, dim, seed=3, nonzeros=s, cache_bytes=0)
    assert not uncached.cached_chunks and not uncached.cache and projection.cache
    torch.testing.assert_close(uncached.project(pieces), expected)
    torch.testing.assert_close(projection.project(pieces), expected)  # from the cache now
    assert torch.equal(make_projection("sparse", sizes, dim, 3).matrix(),
                       SparseProjection(sizes, dim, 3).matrix())
    with pytest.raises(ValueError, match="piece 1 has 19 values"):
        projection.project([pieces[0], pieces[1][:, :19], pieces[2]])


class _AllInOneOutput(SparseProjection):
    """Broken on purpose: every coordinate lands on the first output of each block."""

    def folded_indices(self, start: int, stop: int) -> torch.Tensor:
        folded = super().folded_indices(start, stop)
        negative = folded >= self.dim
        return torch.tensor(self.starts[:-1])[:, None] + self.dim * negative


def _worst_distortion(projection: SparseProjection, x: np.ndarray) -> tuple[float, float]:
    """Largest ``|‖Px‖²/‖x‖² - 1|`` over rows and largest inner-product error over pairs
    of unit rows."""
    projected = projection.project([torch.tensor(x, dtype=torch.float32)]).double().numpy()
    norms = np.abs((projected**2).sum(1) / (x**2).sum(1) - 1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_projected = projected / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = np.abs(unit_projected @ unit_projected.T - unit @ unit.T)
    return float(norms.max()), float(pairs[np.triu_indices(len(x), 1)].max())


@pytest.mark.slow
def test_projection_preserves_norms_and_inner_products_within_jl_bounds() -> None:
    """For the block construction, ``‖Px‖² - ‖x‖²`` has mean 0 and variance
    ``2/m (‖x‖⁴ - Σ x_i⁴) <= 2/m`` (only coordinates sharing an output in a block
    contribute, each pair with probability s/m, each term scaled by 1/s), the dense
    matrix's; for unit x, y the inner product's error has variance ``<= (1 + <x,y>²)/m``.
    At m = 2048 those are standard deviations of 0.031 and about 0.022, so 0.15 is 4.8 and
    6.8 of them: over 200 vectors and 19,900 pairs, the chance of one outlier is under
    1e-3 for a correct map. One that sends every coordinate to the same outputs has
    ``‖Px‖²/‖x‖² ~ chi²_s / s`` (standard deviation 0.7) and fails by far."""
    x = np.random.default_rng(0).normal(size=(200, 50_000))
    norm_error, pair_error = _worst_distortion(SparseProjection([50_000], 2048, seed=1), x)
    assert norm_error <= 0.15 and pair_error <= 0.15
    broken_norm, broken_pair = _worst_distortion(_AllInOneOutput([50_000], 2048, seed=1), x)
    assert broken_norm > 0.5 and broken_pair > 0.5


def test_batch_and_piece_splits_do_not_change_the_projection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(6, 40)
    one_piece = SparseProjection([40], 32, seed=5)
    whole = one_piece.project([x])
    for row in range(6):
        torch.testing.assert_close(one_piece.project([x[row:row + 1]]), whole[row:row + 1])
    # the hash keys on the position in the concatenated vector, not on the piece
    three = SparseProjection([10, 25, 5], 32, seed=5)
    assert torch.equal(three.matrix(), one_piece.matrix())
    torch.testing.assert_close(three.project(list(x.split([10, 25, 5], dim=1))), whole)
    monkeypatch.setattr(projection_module, "CHUNK_COORDINATES", 3)
    chunked = SparseProjection([10, 25, 5], 32, seed=5)
    assert len(chunked.plan) == 4 + 9 + 2
    torch.testing.assert_close(chunked.project(list(x.split([10, 25, 5], dim=1))), whole)


def test_same_seed_same_matrix_other_seed_other_matrix() -> None:
    matrix = SparseProjection([30, 70], 64, seed=3).matrix()
    assert torch.equal(SparseProjection([30, 70], 64, seed=3).matrix(), matrix)
    for other in (4, 3 + 2**32, 2**64 - 1):  # the seed's high word counts too
        assert not torch.equal(SparseProjection([30, 70], 64, seed=other).matrix(), matrix)
    assert not torch.equal(SparseProjection([30, 70], 64, seed=3, nonzeros=8).matrix(), matrix)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        SparseProjection([30], 64, seed=2**64)


def _numpy_mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint64 arrays, multiplying the plain way (uint64 wraps mod 2^64)."""
    mask = np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & mask
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & mask
    return x ^ (x >> np.uint64(16))


def _numpy_folded(seed: int, dim: int, s: int, start: int, stop: int) -> np.ndarray:
    mask = np.uint64(0xFFFFFFFF)
    key = _numpy_mix(np.array([0x9E3779B9 ^ (seed & 0xFFFFFFFF)], np.uint64))
    key = _numpy_mix(key ^ np.uint64(seed >> 32))
    coordinate = np.arange(start, stop, dtype=np.uint64)
    out = []
    for j in range(s):
        h = _numpy_mix(_numpy_mix(key ^ np.uint64(j)) ^ (coordinate & mask))
        h = _numpy_mix(h ^ (coordinate >> np.uint64(32)))
        block_start, block_stop = j * dim // s, (j + 1) * dim // s
        bucket = ((h & np.uint64(0x7FFFFFFF)) * np.uint64(block_stop - block_start)) >> 31
        out.append(block_start + bucket.astype(np.int64)
                   + dim * (h >> np.uint64(31)).astype(np.int64))
    return np.stack(out)


@pytest.mark.parametrize(("seed", "start"), [(0, 0), (12345, 2**32 - 1000), (2**63 + 7, 5)])
def test_hash_is_plain_integer_arithmetic_matching_numpy(seed: int, start: int) -> None:
    """The indices are integer arithmetic with no overflow, so every device computes the
    same ones: they equal a NumPy version that multiplies the ordinary way, across the
    2^32 boundary of the coordinate too."""
    projection = SparseProjection([1], 8192, seed=seed)
    folded = projection.folded_indices(start, start + 50_000)
    np.testing.assert_array_equal(folded.numpy(), _numpy_folded(seed, 8192, 4, start,
                                                                 start + 50_000))
    outputs, signs = projection.entries(start, start + 50_000)
    assert torch.equal(outputs + 8192 * (signs < 0), folded)
    # balanced signs and every output of the 2048-wide blocks used (50,000 per block)
    assert abs(float((signs < 0).double().mean()) - 0.5) < 0.01
    assert all(len(torch.unique(row)) == 2048 for row in outputs)
    if torch.cuda.is_available():
        on_gpu = SparseProjection([1], 8192, seed=seed, device="cuda")
        assert torch.equal(on_gpu.folded_indices(start, start + 50_000).cpu(), folded)
