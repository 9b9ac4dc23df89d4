"""The object-store cases that every store the tests start runs the same way:
tests/test_object_storage.py (``s3://`` against moto's S3 server) and
tests/test_object_storage_gcs.py (``gs://`` against gcp-storage-emulator). Each case takes
the store's fsspec filesystem, a new bucket's name and the URL scheme, so both files assert
the same things and only the server and the fingerprint's metadata key differ."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl

from dataselect import read_corpus, writer
from pipelines import jobs
from pipelines.cli import main

TARGET = str(TARGETS / "fortunes.jsonl")
POOL_FILES = sorted(Path(POOL_GLOB).parent.glob("*.parquet"))
# a cheap job: DSIR on local threads; 1 MiB partitions cut the pool into four
JOB = ["--scorer", "dsir", "--k", "200", "--workers", "1", "--worker-kind", "threads",
       "--partition-mb", "1", "--seed", "3"]


# what a range case is given: one call that starts recording the store's requests, and one
# that returns the byte ranges [start, stop) asked for one object's key since then
Watch = tuple[Callable[[], None], Callable[[str], list[tuple[int, int]]]]


def free_port() -> int:
    """A localhost port nothing listens on now, for a server the tests start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def objects(fs: Any, prefix: str) -> list[str]:
    """The names below ``prefix`` (``bucket/folder``), relative to it, asked afresh."""
    fs.invalidate_cache()
    return sorted(p[len(prefix) + 1:] for p in fs.find(prefix))


def parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}


def remote_parts(fs: Any, prefix: str) -> dict[str, bytes]:
    return {name: fs.cat_file(f"{prefix}/{name}") for name in objects(fs, prefix)
            if name.startswith("part-")}


def run_locally(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job with every path local: what the object-store runs must reproduce."""
    out = tmp_path_factory.mktemp("local") / "out"
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET,
                 "--out", str(out)]) == 0
    return out


def select_reads_pool_and_target(fs: Any, name: str, scheme: str, version_key: str,
                                 local_run: Path, tmp_path: Path) -> list[str]:
    """Pool and target read from the store select the local run's rows and scores; the
    inputs' fingerprints come from the objects' metadata (``version_key``: S3's ETag,
    GCS's generation), not from reading every byte. Returns the command, to run again."""
    for file in POOL_FILES:
        fs.put_file(str(file), f"{name}/pool/{file.name}")
    fs.put_file(TARGET, f"{name}/target/fortunes.jsonl")
    out = tmp_path / "out"
    argv = ["select", *JOB, "--pool", f"{scheme}://{name}/pool", "--target",
            f"{scheme}://{name}/target/*.jsonl", "--out", str(out)]
    assert main(argv) == 0
    ours, local = pq.read_table(out), pq.read_table(local_run)
    # the same rows and scores; only the provenance column names the objects' URLs
    assert ours.drop(["_file"]).equals(local.drop(["_file"]))
    assert ours["_file"][0].as_py().startswith(f"{scheme}://{name}/pool/part-0000")
    manifest = json.loads((out / ".manifest.json").read_text())
    files = manifest["inputs"]["pool"]["files"]
    assert [f["bytes"] for f in files] == [p.stat().st_size for p in POOL_FILES]
    assert all(version_key in f["object"] and "xxh3_128" not in f for f in files)
    return argv


def output_has_the_local_run_s_bytes(fs: Any, name: str, scheme: str,
                                     local_run: Path) -> None:
    """``--out`` in the store: the local run's bytes, and a rerun reuses every part.
    Run with the working directory a fresh temporary folder."""
    out = f"{scheme}://{name}/sel/out"
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]) == 0
    assert remote_parts(fs, f"{name}/sel/out") == parts(local_run)
    assert pq.read_table(f"{name}/sel/out", filesystem=fs).equals(pq.read_table(local_run))
    manifest = json.loads(fs.cat_file(f"{name}/sel/out/.manifest.json"))
    assert manifest["counts"]["written"] == 200
    assert not os.path.exists(f"{scheme}:")  # never a local folder named after the URL
    # the same job again reuses every part it finds there
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]) == 0
    again = json.loads(fs.cat_file(f"{name}/sel/out/.manifest.json"))
    assert again["output"]["partitions_reused"] == again["score_store"]["partitions_reused"] == 4


def killed_job_resumes_with_identical_bytes(fs: Any, name: str, scheme: str, local_run: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = f"{scheme}://{name}/out"
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
    left = objects(fs, f"{name}/out")
    assert ".manifest.json" not in left  # the commit point is written last
    assert ".dataselect.json" in left
    written = [n for n in left if n.startswith("part-")]
    assert written and "part-00003.parquet" not in written
    monkeypatch.setattr(writer._WritePart, "__call__", original)
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]) == 0
    manifest = json.loads(fs.cat_file(f"{name}/out/.manifest.json"))
    assert manifest["output"]["partitions_reused"] == len(written)
    assert remote_parts(fs, f"{name}/out") == parts(local_run)


def overwrite_deletes_exactly_the_listed_objects(fs: Any, name: str, scheme: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = f"{scheme}://{name}/out"
    argv = ["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET, "--out", out]
    assert main(argv) == 0
    first = objects(fs, f"{name}/out")
    fs.pipe_file(f"{name}/out/notes.txt", b"mine")
    fs.pipe_file(f"{name}/out/part-09999.parquet", b"not listed")
    changed = [*argv[:argv.index("--k")], "--k", "10", *argv[argv.index("--k") + 2:]]
    assert main(changed) == 2
    assert "other settings" in capsys.readouterr().err
    # visible, every reader would take them as the selection's: refused before any work,
    # kept; under hidden names they stay beside the new selection
    assert main([*changed, "--overwrite"]) == 2
    assert "move it away" in capsys.readouterr().err
    assert set(objects(fs, f"{name}/out")) >= {"notes.txt", "part-09999.parquet"}
    for kept in ("notes.txt", "part-09999.parquet"):
        fs.mv(f"{name}/out/{kept}", f"{name}/out/.{kept}")
    assert main([*changed, "--overwrite"]) == 0
    after = objects(fs, f"{name}/out")
    assert set(after) == {*first, ".notes.txt", ".part-09999.parquet"}
    assert fs.cat_file(f"{name}/out/.notes.txt") == b"mine"
    manifest = json.loads(fs.cat_file(f"{name}/out/.manifest.json"))
    assert manifest["counts"]["written"] == 10


def a_foreign_folder_is_refused_before_any_work(fs: Any, name: str, scheme: str,
                                                capsys: pytest.CaptureFixture,
                                                tmp_path: Path) -> None:
    """Run with the working directory ``tmp_path``, empty."""
    fs.pipe_file(f"{name}/data/keep.csv", b"a,b\n")
    assert main(["select", *JOB, "--pool", POOL_GLOB, "--target", TARGET,
                 "--out", f"{scheme}://{name}/data"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written by dataselect" in err
    assert objects(fs, f"{name}/data") == ["keep.csv"]
    assert os.listdir(tmp_path) == []


def jsonl_piece_is_one_range_request(fs: Any, name: str, scheme: str, records: list[dict],
                                     tmp_path: Path, watch: Watch) -> None:
    start_watching, fetched = watch
    local = write_jsonl(tmp_path / "pool.jsonl", records * 20)
    fs.put_file(str(local), f"{name}/pool.jsonl")
    corpus = read_corpus(f"{scheme}://{name}/pool.jsonl", partition_bytes=16 << 10)
    assert corpus.npartitions > 4
    piece = corpus.partitions[2][0]
    start_watching()
    table = corpus.read_partition(2)
    # one ranged GET of exactly the piece's bytes, not the whole object
    assert fetched("pool.jsonl") == [(piece.byte_start, piece.byte_stop)]
    expected = read_corpus(str(local), partition_bytes=16 << 10).read_partition(2)
    assert table.drop(["_file"]).equals(expected.drop(["_file"]))


def parquet_is_read_by_row_group_ranges(fs: Any, name: str, scheme: str, pool_table: Any,
                                        tmp_path: Path, watch: Watch) -> None:
    start_watching, fetched = watch
    local = tmp_path / "pool.parquet"
    pq.write_table(pool_table.select(["id", "text"]), local, row_group_size=250)
    fs.put_file(str(local), f"{name}/pool.parquet")
    corpus = read_corpus(f"{scheme}://{name}/pool.parquet", partition_bytes=64 << 10)
    assert corpus.npartitions > 4
    start_watching()
    table = corpus.read_partition(3)
    read = sum(stop - start for start, stop in fetched("pool.parquet"))
    # the footer and the partition's row groups: a small share of the object
    assert 0 < read < local.stat().st_size / 4
    expected = read_corpus(str(local), partition_bytes=64 << 10).read_partition(3)
    assert table.drop(["_file"]).equals(expected.drop(["_file"]))
