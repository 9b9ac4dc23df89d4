"""Inputs and outputs in an object store, against a real S3 server started on localhost
(moto's standalone server, as s3fs tests itself): nothing of s3fs is mocked."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl

from dataselect import read_corpus, writer

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from pipelines import jobs  # noqa: E402
from pipelines.cli import main  # noqa: E402

TARGET = str(TARGETS / "fortunes.jsonl")
POOL_FILES = sorted(Path(POOL_GLOB).parent.glob("*.parquet"))
# a cheap job: DSIR on local threads; 1 MiB partitions cut the pool into four
JOB = ["--scorer", "dsir", "--k", "200", "--workers", "1", "--worker-kind", "threads",
       "--partition-mb", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """An S3 server on a free localhost port, and the AWS settings that point at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield url
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(endpoint: str) -> tuple[s3fs.S3FileSystem, str]:
    """A new, empty bucket for one test, and the filesystem that reaches it."""
    fs = s3fs.S3FileSystem()
    name = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


def _objects(fs: s3fs.S3FileSystem, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p[len(prefix) + 1:] for p in fs.find(prefix))


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}


def _remote_parts(fs: s3fs.S3FileSystem, prefix: str) -> dict[str, bytes]:
    return {name: fs.cat_file(f"{prefix}/{name}") for name in _objects(fs, prefix)
            if name.startswith("part-")}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job with every path local: what the object-store runs must reproduce."""
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET,
                 "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_select_reads_pool_and_target_from_s3(bucket, local_run, tmp_path):
    fs, name = bucket
    for file in POOL_FILES:
        fs.put_file(str(file), f"{name}/pool/{file.name}")
    fs.put_file(TARGET, f"{name}/target/fortunes.jsonl")
    out = tmp_path / "out"
    assert main(["select", *JOB, "--pool", f"s3://{name}/pool", "--target",
                 f"s3://{name}/target/*.jsonl", "--out", str(out)]) == 0
    ours, local = pq.read_table(out), pq.read_table(local_run)
    # the same rows and scores; only the provenance column names the objects' URLs
    assert ours.drop(["_file"]).equals(local.drop(["_file"]))
    assert ours["_file"][0].as_py().startswith(f"s3://{name}/pool/part-0000")
    manifest = json.loads((out / ".manifest.json").read_text())
    files = manifest["inputs"]["pool"]["files"]
    # fingerprints from object metadata (ETag, time), not from reading every byte
    assert [f["bytes"] for f in files] == [p.stat().st_size for p in POOL_FILES]
    assert all("ETag" in f["object"] and "xxh3_128" not in f for f in files)


@pytest.mark.slow
def test_output_in_s3_has_the_local_run_s_bytes(bucket, local_run, tmp_path, monkeypatch):
    fs, name = bucket
    monkeypatch.chdir(tmp_path)
    out = f"s3://{name}/sel/out"
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]) == 0
    assert _remote_parts(fs, f"{name}/sel/out") == _parts(local_run)
    assert pq.read_table(f"{name}/sel/out", filesystem=fs).equals(pq.read_table(local_run))
    manifest = json.loads(fs.cat_file(f"{name}/sel/out/.manifest.json"))
    assert manifest["counts"]["written"] == 200
    assert not os.path.exists("s3:")  # never a local folder named after the URL
    # the same job again reuses every part it finds there
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]) == 0
    again = json.loads(fs.cat_file(f"{name}/sel/out/.manifest.json"))
    assert again["output"]["partitions_reused"] == again["score_store"]["partitions_reused"] == 4


def test_jsonl_pool_in_s3_is_read_by_byte_ranges(bucket, small_records, tmp_path, caplog):
    fs, name = bucket
    local = write_jsonl(tmp_path / "pool.jsonl", small_records * 20)
    fs.put_file(str(local), f"{name}/pool.jsonl")
    corpus = read_corpus(f"s3://{name}/pool.jsonl", partition_bytes=16 << 10)
    assert corpus.npartitions > 4
    piece = corpus.partitions[2][0]
    caplog.set_level(logging.DEBUG, logger="s3fs")
    table = corpus.read_partition(2)
    # one ranged GET of exactly the piece's bytes, not the whole object
    assert _fetched(caplog.records, "pool.jsonl") == [(piece.byte_start, piece.byte_stop)]
    expected = read_corpus(str(local), partition_bytes=16 << 10).read_partition(2)
    assert table.drop(["_file"]).equals(expected.drop(["_file"]))


@pytest.mark.slow
def test_a_job_killed_while_writing_to_s3_resumes_with_identical_bytes(
        bucket, local_run, monkeypatch):
    fs, name = bucket
    out = f"s3://{name}/out"
    original = writer._WritePart.__call__

    def dies_at_the_last_part(self, index):
        if index == 3:
            raise RuntimeError("killed")  # what a killed job leaves: parts, no manifest
        return original(self, index)

    monkeypatch.setattr(writer._WritePart, "__call__", dies_at_the_last_part)
    job = jobs.SelectJob("dsir", [POOL_GLOB], [TARGET], out, k=200, seed=3, workers=1,
                         worker_kind="threads", partition_bytes=1 << 20)
    with pytest.raises(RuntimeError, match="killed"):
        jobs.run_select_job(job)
    left = _objects(fs, f"{name}/out")
    assert ".manifest.json" not in left  # the commit point is written last
    assert ".dataselect.json" in left
    written = [n for n in left if n.startswith("part-")]
    assert written and "part-00003.parquet" not in written
    monkeypatch.setattr(writer._WritePart, "__call__", original)
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]) == 0
    manifest = json.loads(fs.cat_file(f"{name}/out/.manifest.json"))
    assert manifest["output"]["partitions_reused"] == len(written)
    assert _remote_parts(fs, f"{name}/out") == _parts(local_run)


@pytest.mark.slow
def test_overwrite_in_s3_deletes_exactly_the_listed_objects(bucket, capsys):
    fs, name = bucket
    out = f"s3://{name}/out"
    argv = ["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]
    assert main(argv) == 0
    first = _objects(fs, f"{name}/out")
    fs.pipe_file(f"{name}/out/notes.txt", b"mine")
    fs.pipe_file(f"{name}/out/part-09999.parquet", b"not listed")
    changed = [*argv[:argv.index("--k")], "--k", "10", *argv[argv.index("--k") + 2:]]
    assert main(changed) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*changed, "--overwrite"]) == 0
    after = _objects(fs, f"{name}/out")
    assert set(after) == {*first, "notes.txt", "part-09999.parquet"}
    assert fs.cat_file(f"{name}/out/notes.txt") == b"mine"
    manifest = json.loads(fs.cat_file(f"{name}/out/.manifest.json"))
    assert manifest["counts"]["written"] == 10


def test_a_foreign_s3_folder_is_refused_before_any_work(bucket, capsys, tmp_path,
                                                        monkeypatch):
    fs, name = bucket
    monkeypatch.chdir(tmp_path)
    fs.pipe_file(f"{name}/data/keep.csv", b"a,b\n")
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET,
                 "--out", f"s3://{name}/data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written by dataselect" in err
    assert _objects(fs, f"{name}/data") == ["keep.csv"]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_recipe_reads_its_pool_and_targets_from_s3(bucket, tmp_path):
    import yaml

    from pipelines.recipe import RecipeError, load_recipe
    from pipelines.run_recipe import run_recipe

    fs, name = bucket
    for file in POOL_FILES:
        fs.put_file(str(file), f"{name}/pool/{file.name}")
    fs.put_file(TARGET, f"{name}/targets/fortunes.jsonl")
    recipe = {"name": "s3", "pool": {"paths": [f"s3://{name}/pool/*.parquet"]},
              "targets": {"fortunes": {"paths": f"s3://{name}/targets/fortunes.jsonl"}},
              "scorers": {"dsir": {}}, "selection": {"k": 200},
              "output": {"path": str(tmp_path / "out")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path), str(path))
    task = pq.read_table(tmp_path / "out" / "tasks" / "fortunes")
    assert task.num_rows == 200
    assert task["_file"][0].as_py().startswith(f"s3://{name}/pool/")
    recipe["output"]["path"] = f"s3://{name}/recipe-out"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with pytest.raises(RecipeError, match="output folder must be local"):
        load_recipe(path)
    recipe["targets"]["fortunes"]["paths"] = f"s3://{name}/targets/missing.jsonl"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with pytest.raises(RecipeError, match="matches no file"):
        load_recipe(path)


def _fetched(records: list[logging.LogRecord], key: str) -> list[tuple[int, int]]:
    """The byte ranges s3fs asked the server for, for one object."""
    ranges = []
    for record in records:
        message = record.getMessage()
        if "get_object" in message and key in message:
            match = re.search(r"bytes=(\d+)-(\d+)", message)
            assert match, f"a GET without a range: {message}"
            ranges.append((int(match.group(1)), int(match.group(2)) + 1))
    return ranges


def test_parquet_in_s3_is_read_by_row_group_ranges(bucket, pool_table, tmp_path, caplog):
    fs, name = bucket
    local = tmp_path / "pool.parquet"
    pq.write_table(pool_table.select(["id", "text"]), local, row_group_size=250)
    fs.put_file(str(local), f"{name}/pool.parquet")
    corpus = read_corpus(f"s3://{name}/pool.parquet", partition_bytes=64 << 10)
    assert corpus.npartitions > 4
    caplog.set_level(logging.DEBUG, logger="s3fs")
    table = corpus.read_partition(3)
    fetched = sum(stop - start for start, stop in _fetched(caplog.records, "pool.parquet"))
    # the footer and the partition's row groups: a small share of the object
    assert 0 < fetched < local.stat().st_size / 4
    expected = read_corpus(str(local), partition_bytes=64 << 10).read_partition(3)
    assert table.drop(["_file"]).equals(expected.drop(["_file"]))


def test_outputs_written_with_local_files_refuse_a_url(tmp_path, capsys, monkeypatch):
    from dataselect.errors import InputError
    from dataselect.outdir import OutputFolder

    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", "--features", str(tmp_path), "--out", "s3://b/idx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "writes local files" in err
    with pytest.raises(InputError, match="written to a local folder"):
        OutputFolder.claim("s3://b/index", "index", None)
    assert os.listdir(tmp_path) == []  # no folder named "s3:"


@pytest.mark.slow
def test_the_python_api_reads_and_writes_urls(bucket, local_run):
    from dataselect import select
    from dataselect.errors import InputError
    from scorers import DSIR

    fs, name = bucket
    for file in POOL_FILES:
        fs.put_file(str(file), f"{name}/pool/{file.name}")
    pool = read_corpus(f"s3://{name}/pool/*.parquet", partition_bytes=1 << 20)
    target = read_corpus(TARGET, partition_bytes=1 << 20)
    scores = DSIR(seed=3).fit(target, pool).score(pool).write(f"s3://{name}/api/.scores/dsir")
    selection = select.importance_resample(pool, scores, k=200, seed=3)
    manifest = selection.write(f"s3://{name}/api", target=target)
    assert manifest["counts"]["written"] == 200
    ours = pq.read_table(f"{name}/api", filesystem=fs)
    assert ours.drop(["_file"]).equals(pq.read_table(local_run).drop(["_file"]))
    assert sorted(_objects(fs, f"{name}/api"))[:2] == [".dataselect.json", ".manifest.json"]
    with pytest.raises(InputError, match="read the parts from the URL"):
        selection.to_hf()  # the datasets layout is a local folder's


@pytest.mark.slow
@pytest.mark.parametrize(("bucket_rows", "group_from"), [(1 << 21, 10**9), (150, -1)])
def test_duplicate_ids_of_a_store_in_s3_are_checked_on_the_workers(
        bucket, tmp_path, monkeypatch, capsys, bucket_rows, group_from):
    """A score store in an object store is checked through its `.ids/` prefix (range
    reads of each bucket's bytes), not by gathering every id hash on the client; with
    few rows a bucket, through groups too. The error names both places, as a local
    store's does, and no `.ids/` object is left behind."""
    from dataselect import duplicates

    fs, name = bucket
    monkeypatch.setattr(duplicates, "BUCKET_ROWS", bucket_rows)
    monkeypatch.setattr(duplicates, "GROUP_FROM_READS_REMOTE", group_from)
    monkeypatch.setattr(duplicates, "_hashes", None)  # the client-side way is not taken
    rows = [{"id": f"u{i}", "text": f"row {i} about terms and licenses"} for i in range(900)]
    rows[700]["id"] = rows[30]["id"]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    out = f"s3://{name}/dup/out"
    job = [("0.01" if previous == "--partition-mb" else v)
           for previous, v in zip(["", *JOB], JOB)]
    argv = ["select", *job, "--pool", str(pool), "--target", TARGET, "--out", out]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("pool.jsonl:701: field 'id': duplicate id 'u30' (also at "
                            f"{pool}:31)"), err[-1]
    assert not [n for n in _objects(fs, f"{name}/dup/out") if "/.ids/" in f"/{n}"]


@pytest.mark.slow
def test_rank_combination_of_stores_in_s3_sorts_on_the_workers(bucket, tmp_path, monkeypatch):
    """combine(method="rank") of two score stores in an object store ranks through their
    `.ranks/` prefixes (range reads, buckets of 40 rows): the combined scores equal those of
    the same scores ranked on the client, bit for bit, and only the rank objects stay."""
    import numpy as np
    from scoring_helpers import FixedScorer

    from dataselect import rank_scale, select

    fs, name = bucket
    monkeypatch.setattr(rank_scale, "BUCKET_ROWS", 40)
    rng = np.random.default_rng(4)
    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(300)]
    pool = read_corpus(str(write_jsonl(tmp_path / "pool.jsonl", rows)), partition_bytes=1500)
    ids = [r["id"] for r in rows]
    lazy = [FixedScorer(dict(zip(ids, rng.integers(0, 9, 300).astype(float))),
                        frozenset(ids[::11]), label=label).score(pool) for label in "ab"]
    stored = [s.write(f"s3://{name}/stores/{i}") for i, s in enumerate(lazy)]

    def combined(scores):
        return np.concatenate([scores.partition(i)["score"].to_numpy()
                               for i in range(pool.npartitions)])

    ranked = select.combine(stored, method="rank")
    np.testing.assert_array_equal(combined(ranked), combined(select.combine(lazy, "rank")))
    assert all(scale.ranks.folder.startswith("s3://") for scale in ranked.task.scales)
    left = [n for n in _objects(fs, f"{name}/stores/0") if n.startswith(".ranks/")]
    assert left == [f".ranks/part-{p:05d}.rank.f64" for p in range(pool.npartitions)]
    assert pool.npartitions > 2
