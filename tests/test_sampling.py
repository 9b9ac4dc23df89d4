"""Per-id seeded randomness: uniform, reproducible, independent across seeds and streams."""

from __future__ import annotations

import numpy as np
from conftest import POOL_GLOB

from dataselect.corpus import read_corpus
from dataselect.sampling import gumbel_noise, id_hashes, sample_corpus, sample_mask, uniform


def test_uniforms_are_reproducible_and_uniform():
    ids = id_hashes([f"doc-{i}" for i in range(20_000)])
    u = uniform(ids, seed=5, stream=1)
    np.testing.assert_array_equal(u, uniform(ids, seed=5, stream=1))
    assert ((u > 0) & (u < 1)).all()
    counts, _ = np.histogram(u, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 2_000) < 250)  # 2,000 ± 6 standard deviations per bin
    other = uniform(ids, seed=6, stream=1)
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.05
    assert abs(np.corrcoef(u, uniform(ids, seed=5, stream=2))[0, 1]) < 0.05


def test_each_id_keeps_its_draw_whatever_else_is_in_the_batch():
    ids = [f"doc-{i}" for i in range(100)]
    np.testing.assert_array_equal(uniform(id_hashes(ids), 1, 1)[50:],
                                  uniform(id_hashes(ids[50:]), 1, 1))
    np.testing.assert_array_equal(id_hashes(ids[:3]), id_hashes(["doc-0", "doc-1", "doc-2"]))


def test_sample_mask_hits_the_fraction_and_gumbel_has_the_right_mean():
    ids = [str(i) for i in range(50_000)]
    mask = sample_mask(ids, 0.1, seed=0)
    assert abs(mask.mean() - 0.1) < 0.01
    assert sample_mask(ids, 1.0, seed=0).all()
    noise = gumbel_noise(id_hashes(ids), seed=0)
    assert abs(noise.mean() - np.euler_gamma) < 0.03
    assert abs(noise.var() - np.pi**2 / 6) < 0.06


def test_corpus_sample_ignores_partitioning_and_nests():
    coarse = read_corpus(POOL_GLOB)
    fine = read_corpus(POOL_GLOB, partition_bytes=2**17)
    assert fine.npartitions > coarse.npartitions
    big = sample_corpus(coarse, 300, seed=5)["id"].to_pylist()
    assert sample_corpus(fine, 300, seed=5)["id"].to_pylist() == big
    assert sample_corpus(fine, 40, seed=5)["id"].to_pylist() == big[:40]
    assert sample_corpus(coarse, 300, seed=6)["id"].to_pylist() != big
    assert len(set(big)) == 300
