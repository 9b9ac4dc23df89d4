"""Output: columns, formats, byte-identical reruns, resume after a crash, conflicts, KL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS

import dataselect.scoring
import dataselect.writer
from dataselect import read_corpus, select
from dataselect.errors import OutputConflictError
from dataselect.output import read_table
from scorers import DSIR


@pytest.fixture(scope="module")
def job():
    pool = read_corpus(POOL_GLOB, partition_bytes=1 << 20)
    target = read_corpus(str(TARGETS / "fortunes.jsonl"))
    return pool, target, DSIR().fit(target, pool)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("part-*"))}


def _run(job, out: Path, **kwargs):
    pool, target, dsir = job
    scores = dsir.score(pool).write(out / ".scores" / "dsir")
    selection = select.importance_resample(pool, scores, k=300, seed=3)
    return selection.write(str(out), target=target, **kwargs)


def test_output_keeps_every_pool_column_and_adds_score_and_rank(tmp_path, job, pool_table):
    manifest = _run(job, tmp_path / "out")
    table = pq.read_table(tmp_path / "out", schema=None)
    assert set(pool_table.column_names) | {"score", "rank", "_file", "_row"} <= set(
        table.column_names)
    assert sorted(table["rank"].to_pylist()) == list(range(300))
    assert set(table["id"].to_pylist()) <= set(pool_table["id"].to_pylist())
    by_id = dict(zip(pool_table["id"].to_pylist(), pool_table["text"].to_pylist()))
    assert all(by_id[i] == t for i, t in zip(table["id"].to_pylist(), table["text"].to_pylist()))
    ranked = sorted(zip(table["rank"].to_pylist(), table["score"].to_pylist()))
    assert manifest["counts"]["written"] == manifest["counts"]["selected"] == 300
    assert [p["rows"] for p in manifest["output"]["parts"]] == [
        read_table(tmp_path / "out" / p["file"]).num_rows for p in manifest["output"]["parts"]]
    assert len(ranked) == 300


def test_same_inputs_and_seed_give_identical_bytes(tmp_path, job):
    _run(job, tmp_path / "a")
    _run(job, tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b and len(a) == 4
    scores_a, scores_b = (_digests(tmp_path / x / ".scores" / "dsir") for x in "ab")
    assert scores_a == scores_b


def test_arrow_ipc_output_holds_the_same_rows(tmp_path, job):
    _run(job, tmp_path / "pq")
    _run(job, tmp_path / "ipc", fmt="arrow")
    parquet_rows = pq.read_table(tmp_path / "pq").sort_by("id")
    ipc = pa.concat_tables(read_table(p) for p in sorted((tmp_path / "ipc").glob("part-*.arrow")))
    assert ipc.sort_by("id").equals(parquet_rows)


def test_interrupted_write_resumes_without_redoing_finished_parts(tmp_path, job, monkeypatch):
    clean = tmp_path / "clean"
    _run(job, clean)
    out = tmp_path / "crash"
    real_write = dataselect.writer.write_table

    def failing_write(table, path, fmt="parquet"):
        if str(path).endswith("part-00002.parquet") and "scores" not in str(path):
            raise RuntimeError("simulated crash")
        return real_write(table, path, fmt)

    monkeypatch.setattr(dataselect.writer, "write_table", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(job, out, runner=_sequential)  # parts 0 and 1 finish, part 2 crashes
    monkeypatch.undo()
    finished = {p.name: os.stat(p).st_mtime_ns for p in out.glob("part-*")}
    assert sorted(finished) == ["part-00000.parquet", "part-00001.parquet"]
    (out / ".tmp-0123456789abcdef-part-00002.parquet").write_bytes(b"a killed writer's")
    manifest = _run(job, out)
    assert manifest["output"]["partitions_reused"] == len(finished)
    for name, mtime in finished.items():
        assert os.stat(out / name).st_mtime_ns == mtime  # not rewritten
    assert _digests(out) == _digests(clean)
    assert not list(out.glob(".tmp-*"))
    assert manifest["metrics"] == _run(job, clean)["metrics"]


def test_interrupted_scoring_resumes_from_finished_score_parts(tmp_path, job, monkeypatch):
    pool, _, dsir = job
    store = tmp_path / "scores"
    real_write = dataselect.scoring.write_table
    calls = []

    def failing_write(table, path, fmt="parquet"):
        calls.append(Path(path).name)
        if str(path).endswith("part-00001.parquet"):
            raise RuntimeError("simulated crash")
        return real_write(table, path, fmt)

    monkeypatch.setattr(dataselect.scoring, "write_table", failing_write)
    with pytest.raises(RuntimeError):
        dsir.score(pool).write(store, runner=_sequential)
    monkeypatch.undo()
    assert sorted(p.name for p in store.glob("part-*")) == ["part-00000.parquet"]
    stored = dsir.score(pool).write(store, runner=_sequential)
    assert stored.stats["partitions_reused"] == 1 and stored.stats["partitions_scored"] == 3
    fresh = dsir.score(pool).write(tmp_path / "fresh")
    assert _digests(store) == _digests(tmp_path / "fresh")
    assert fresh.stats["rows"] == 3960


def _sequential(stage, tasks):
    return [task() for task in tasks]


def test_output_folder_of_another_job_is_refused_unless_overwrite(tmp_path, job):
    pool, target, dsir = job
    _run(job, tmp_path / "out")
    scores = dsir.score(pool).write(tmp_path / "out" / ".scores" / "dsir")
    other = select.top_k(pool, scores, k=10)
    with pytest.raises(OutputConflictError,
                       match=r"other settings or inputs \(differs in: selection\.policy\)"):
        other.write(str(tmp_path / "out"), target=target)
    manifest = other.write(str(tmp_path / "out"), target=target, overwrite=True)
    assert manifest["counts"]["written"] == 10
    assert pq.read_table(tmp_path / "out").num_rows == 10
    with pytest.raises(OutputConflictError,
                       match=r"differs in: config\.num_buckets, fit_fingerprint"):
        DSIR(num_buckets=500).fit(target, pool).score(pool).write(
            tmp_path / "out" / ".scores" / "dsir")


def test_manifest_reports_positive_kl_reduction_for_dsir(tmp_path, job):
    metrics = _run(job, tmp_path / "out")["metrics"]
    assert metrics["kl_target_selected"] < metrics["kl_target_pool"]
    assert metrics["kl_reduction"] == pytest.approx(
        metrics["kl_target_pool"] - metrics["kl_target_selected"], abs=1e-5)
