"""DSIR against the reference package, and on real data against ground truth."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl
from data_selection import HashedNgramDSIR

from dataselect import read_corpus, select
from dataselect.metrics import domain_precision
from scorers import DSIR


@pytest.fixture
def reference_files(tmp_path, pool_table):
    pool = pool_table.slice(0, 400).select(["id", "text"]).to_pylist()
    target = pool_table.filter(pc.equal(pool_table["domain"], "fortunes")).slice(0, 40)
    pool_path = write_jsonl(tmp_path / "pool.jsonl", pool)
    target_path = write_jsonl(tmp_path / "target.jsonl",
                              target.select(["text"]).to_pylist())
    return pool_path, target_path


@pytest.mark.slow
def test_reference_mode_reproduces_data_selection_weights_and_scores(tmp_path, reference_files):
    pool_path, target_path = reference_files
    ref = HashedNgramDSIR([str(pool_path)], [str(target_path)], str(tmp_path / "cache"),
                          num_proc=1, min_example_length=0)
    ref.fit_importance_estimator(num_tokens_to_fit="all")
    ref.compute_importance_weights()
    ref_scores = np.load(tmp_path / "cache" / "log_importance_weights" / "0.npy")

    pool, target = read_corpus(str(pool_path)), read_corpus(str(target_path))
    ours = DSIR(tokenizer="reference", smoothing=0.0, fit_fraction=1.0).fit(target, pool)
    np.testing.assert_allclose(ours.log_diff_, ref.log_diff, rtol=1e-12, atol=1e-12)
    scores = ours.score(pool).partition(0)["score"].to_numpy()
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-9, atol=1e-9)


def test_log_importance_weight_is_sum_of_bucket_log_ratios():
    dsir = DSIR(num_buckets=8, smoothing=1.0)
    target, raw = np.array([5, 0, 1, 0, 0, 0, 0, 2]), np.array([1, 1, 1, 1, 1, 1, 1, 1])
    dsir.fit_from_counts(target, raw)
    p_t = (target + 1) / (target.sum() + 8)
    p_r = (raw + 1) / (raw.sum() + 8)
    np.testing.assert_allclose(dsir.log_diff_, np.log(p_t + 1e-8) - np.log(p_r + 1e-8))


def test_min_length_filter_marks_and_reports_short_documents(tmp_path, small_records):
    records = [*small_records[:20], {"id": "tiny", "text": "two words"}]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", records)))
    target = read_corpus(str(write_jsonl(tmp_path / "t.jsonl", small_records[:5])))
    dsir = DSIR(min_length=5).fit(target, pool)
    selection = select.top_k(pool, dsir.score(pool), k=100)
    assert selection.counts["filtered"] == {"dsir_min_length": 1}
    assert selection.counts["selected"] == 20 == selection.num_selected
    chosen = {pool.read_partition(0)["id"][int(i)].as_py() for i in selection.positions[0]}
    assert "tiny" not in chosen


def test_length_normalised_scores_are_per_ngram_means(tmp_path, small_records):
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", small_records)))
    target = read_corpus(str(write_jsonl(tmp_path / "t.jsonl", small_records[:5])))
    raw = DSIR().fit(target, pool).score(pool).partition(0)
    normed = DSIR(length_normalize=True).fit(target, pool).score(pool).partition(0)
    tokens = raw["num_tokens"].to_numpy()
    ngrams = np.maximum(2 * tokens - 1, 1)
    np.testing.assert_allclose(normed["score"].to_numpy(), raw["score"].to_numpy() / ngrams)


def test_fit_fraction_samples_the_pool_by_seed_not_by_position(tmp_path):
    pool = read_corpus(POOL_GLOB, partition_bytes=1 << 20)
    target = read_corpus(str(TARGETS / "fortunes.jsonl"))
    a = DSIR(fit_fraction=0.25, seed=1).fit(target, pool)
    b = DSIR(fit_fraction=0.25, seed=1).fit(target, pool)
    c = DSIR(fit_fraction=0.25, seed=2).fit(target, pool)
    assert a.fingerprint_ == b.fingerprint_ != c.fingerprint_
    fitted = a.fit_stats_["pool_rows_fitted"]
    assert 0.2 * 3960 < fitted < 0.3 * 3960
    # every partition contributes, not just the first files
    assert a.fit_stats_["pool_rows"] == 3960
    auto = DSIR(fit_sample_mb=1.0).fit(target, pool)
    expected = 2**20 / pool.estimated_bytes()
    assert auto.fit_stats_["fit_fraction"] == pytest.approx(expected)
    assert DSIR().fit(target, pool).fit_stats_["fit_fraction"] == 1.0  # small pool: all of it


@pytest.mark.parametrize("domain", ["python_docs", "fortunes", "licenses"])
def test_dsir_recovers_a_held_out_domain_far_above_chance(tmp_path, domain):
    pool = read_corpus(POOL_GLOB, partition_bytes=1 << 20)
    target = read_corpus(str(TARGETS / f"{domain}.jsonl"))
    scores = DSIR().fit(target, pool).score(pool)
    selection = select.importance_resample(pool, scores, k=440, seed=0)
    selection.write(str(tmp_path / "out"))
    picked = pq.read_table(tmp_path / "out").column("domain").to_pylist()
    assert len(picked) == 440
    chance = 440 / 3960
    assert domain_precision(picked, domain) >= 0.8 > 5 * chance


def test_fast_path_declares_thread_workers_and_reference_path_processes():
    assert DSIR().local_workers == "threads"
    assert DSIR(tokenizer="reference").local_workers == "processes"


def test_save_and_load_roundtrip_gives_identical_scores(tmp_path, small_records):
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", small_records)))
    target = read_corpus(str(write_jsonl(tmp_path / "t.jsonl", small_records[:5])))
    dsir = DSIR().fit(target, pool)
    dsir.save(tmp_path / "dsir.pkl")
    loaded = DSIR.load(tmp_path / "dsir.pkl")
    assert loaded.score(pool).partition(0).equals(dsir.score(pool).partition(0))
