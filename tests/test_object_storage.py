"""Inputs and outputs in an object store, against a real S3 server started on localhost
(moto's standalone server, as s3fs tests itself): nothing of s3fs is mocked."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from dataselect import read_corpus

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import object_store_cases as cases  # noqa: E402
from object_store_cases import JOB, POOL_FILES, TARGET, objects  # noqa: E402

from pipelines.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """An S3 server on a free localhost port, and the AWS settings that point at it."""
    port = cases.free_port()
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


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job with every path local: what the object-store runs must reproduce."""
    return cases.run_locally(tmp_path_factory)


@pytest.mark.slow
def test_select_reads_pool_and_target_from_s3(bucket, local_run, tmp_path):
    fs, name = bucket
    cases.select_reads_pool_and_target(fs, name, "s3", "ETag", local_run, tmp_path)


@pytest.mark.slow
def test_output_in_s3_has_the_local_run_s_bytes(bucket, local_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases.output_has_the_local_run_s_bytes(*bucket, "s3", local_run)


def test_jsonl_pool_in_s3_is_read_by_byte_ranges(bucket, small_records, tmp_path, caplog):
    cases.jsonl_piece_is_one_range_request(*bucket, "s3", small_records, tmp_path,
                                           _watch(caplog))


@pytest.mark.slow
def test_a_job_killed_while_writing_to_s3_resumes_with_identical_bytes(
        bucket, local_run, monkeypatch):
    cases.killed_job_resumes_with_identical_bytes(*bucket, "s3", local_run, monkeypatch)


@pytest.mark.slow
def test_overwrite_in_s3_deletes_exactly_the_listed_objects(bucket, capsys):
    cases.overwrite_deletes_exactly_the_listed_objects(*bucket, "s3", capsys)


def test_a_foreign_s3_folder_is_refused_before_any_work(bucket, capsys, tmp_path,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases.a_foreign_folder_is_refused_before_any_work(*bucket, "s3", capsys, tmp_path)


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


def _watch(caplog: pytest.LogCaptureFixture) -> cases.Watch:
    """The requests s3fs logs at DEBUG, from the call of the first on."""
    return (lambda: caplog.set_level(logging.DEBUG, logger="s3fs"),
            lambda key: _fetched(caplog.records, key))


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
    cases.parquet_is_read_by_row_group_ranges(*bucket, "s3", pool_table, tmp_path,
                                              _watch(caplog))


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
    assert sorted(objects(fs, f"{name}/api"))[:2] == [".dataselect.json", ".manifest.json"]
    with pytest.raises(InputError, match="read the parts from the URL"):
        selection.to_hf()  # the datasets layout is a local folder's


def test_the_api_s_upload_refuses_a_temporary_folder_in_the_pool(bucket, tmp_path,
                                                                  monkeypatch):
    """A part on its way to an object store is first written to a temporary file: with
    TMPDIR in the pool folder, the API wrote it there (pass 20, g01)."""
    import tempfile

    from dataselect import select
    from dataselect.errors import InputError
    from scorers import DSIR

    _, name = bucket
    folder = tmp_path / "p"
    folder.mkdir()
    pq.write_table(pq.read_table(POOL_FILES[0]).slice(0, 200), folder / "pool.parquet")
    pool = read_corpus(str(folder))
    target = read_corpus(TARGET)
    scores = DSIR(seed=3).fit(target, pool).score(pool)
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(InputError, match="TMPDIR"):
        select.top_k(pool, scores, k=5).write(f"s3://{name}/api", target=target)
    assert sorted(p.name for p in folder.iterdir()) == ["pool.parquet"]


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
    assert not [n for n in objects(fs, f"{name}/dup/out") if "/.ids/" in f"/{n}"]


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
    left = [n for n in objects(fs, f"{name}/stores/0") if n.startswith(".ranks/")]
    assert left == [f".ranks/part-{p:05d}.rank.f64" for p in range(pool.npartitions)]
    assert pool.npartitions > 2


def test_a_folder_placeholder_key_is_no_object_of_the_user(bucket, capsys, tmp_path,
                                                           monkeypatch):
    """The empty key ``o/`` that the AWS console or ``rclone mkdir`` writes to show a
    folder: the output folder was refused as "not empty (holds )", and in a finished one a
    refusal named ``s3://b/o/`` instead of the user's object."""
    fs, name = bucket
    monkeypatch.chdir(tmp_path)
    fs.call_s3("put_object", Bucket=name, Key="o/", Body=b"")
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"r{i}", "text": f"row number {i}"}
                                                  for i in range(40)])
    argv = ["select", "--scorer", "dsir", "--pool", str(pool), "--target", str(TARGET),
            "--workers", "1", "--worker-kind", "threads", "--out", f"s3://{name}/o"]
    assert main([*argv, "--k", "5"]) == 0, capsys.readouterr().err
    fs.pipe_file(f"{name}/o/notes.txt", b"mine")
    capsys.readouterr()
    assert main([*argv, "--k", "6", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"s3://{name}/o/notes.txt" in err, err
    assert fs.cat_file(f"{name}/o/notes.txt") == b"mine"


def _jsonl_pool_at(fs: s3fs.S3FileSystem, key: str, tmp_path: Path) -> None:
    """40 JSONL rows uploaded to ``key``."""
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"r{i}", "text": f"row number {i}"}
                                                  for i in range(40)])
    fs.put_file(str(pool), key)


@pytest.mark.parametrize("spec", ["p", "p/*"])
def test_an_object_store_folder_or_glob_refuses_data_it_cannot_read(bucket, capsys, tmp_path,
                                                                    monkeypatch, spec):
    """A folder URL left ``h.jsonl.xz`` and ``rows.csv`` out without a word (a glob the
    same), where a local folder refuses them: the pool was read short, exit 0."""
    fs, name = bucket
    monkeypatch.chdir(tmp_path)
    _jsonl_pool_at(fs, f"{name}/p/pool.jsonl", tmp_path)
    fs.pipe_file(f"{name}/p/h.jsonl.xz", b"\xfd7zXZ\x00 rows")
    fs.pipe_file(f"{name}/p/README.md", b"# notes")
    code = main(["select", "--scorer", "dsir", "--pool", f"s3://{name}/{spec}", "--target",
                 str(TARGET), "--k", "5", "--workers", "1", "--worker-kind", "threads",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"s3://{name}/p/" in err and "Traceback" not in err, err
    assert ("h.jsonl.xz" in err or "README.md" in err) and not (tmp_path / "o").exists()


def test_an_object_store_folder_names_the_files_it_leaves_out(bucket, capsys, tmp_path,
                                                              monkeypatch):
    fs, name = bucket
    monkeypatch.chdir(tmp_path)
    _jsonl_pool_at(fs, f"{name}/p/pool.jsonl", tmp_path)
    fs.pipe_file(f"{name}/p/README.md", b"# notes")
    corpus = read_corpus(f"s3://{name}/p")
    assert [f.rsplit("/", 1)[-1] for f in corpus.files] == ["pool.jsonl"]
    note = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert len(note) == 1 and "README.md" in note[0], note
