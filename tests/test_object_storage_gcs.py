"""gs:// inputs and outputs against a real GCS server started on localhost: the pure-Python
gcp-storage-emulator (its JSON API over HTTP, objects in memory), reached by gcsfs through
``STORAGE_EMULATOR_HOST`` as it reaches Google's. Nothing of gcsfs is mocked. The cases are
tests/test_object_storage.py's (shared in tests/object_store_cases.py), run for gs://."""

from __future__ import annotations

import json
import os
import sys
import types
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

gcsfs = pytest.importorskip("gcsfs")
emulator = pytest.importorskip("gcp_storage_emulator.server")

import object_store_cases as cases  # noqa: E402

from pipelines.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A GCS server on a free localhost port, and the setting that points gcsfs at it."""
    port = cases.free_port()
    patch = pytest.MonkeyPatch()
    _plain_buckets(patch)
    server = emulator.create_server("127.0.0.1", port, in_memory=True)
    server.start()
    _quiet_on_hang_ups(server._api._httpd)
    url = f"http://127.0.0.1:{port}"
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield url
    server.stop()
    patch.undo()
    gcsfs.GCSFileSystem.clear_instance_cache()
    if saved is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


def _plain_buckets(patch: pytest.MonkeyPatch) -> None:
    """gcsfs (its default ExtendedGcsFileSystem) asks Google's Storage Control gRPC API
    what kind each bucket is (GetStorageLayout: flat, hierarchical or zonal) before most
    calls. The emulator serves only the JSON API, so that request fails ("Your default
    credentials were not found", after probing the Compute Engine metadata server, which
    may take seconds where that address drops packets; with credentials, gRPC to the
    emulator's HTTP port fails) and gcsfs falls back to the JSON API with a warning, on
    every call, as it does not cache the failure. The emulator's buckets are flat ones:
    the layout gcsfs would be told, so it takes the same JSON-API path without asking.
    Only gcsfs's choice of protocol is set here; every object request still goes to the
    server."""
    try:
        from gcsfs import extended_gcsfs
    except ImportError:  # a gcsfs without the experimental layer asks nothing
        return

    async def flat(self, bucket):
        return extended_gcsfs.BucketType.NON_HIERARCHICAL

    patch.setattr(extended_gcsfs.ExtendedGcsFileSystem, "_get_bucket_type", flat)


def _quiet_on_hang_ups(httpd) -> None:
    """No traceback for a request whose client hung up before its answer: gcsfs's info()
    asks for the object and lists its prefix at once and drops the slower request, and
    the emulator's http.server prints a BrokenPipeError for it. Any other error of the
    server is still printed."""
    report = httpd.handle_error

    def handle_error(request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            report(request, client_address)

    httpd.handle_error = handle_error


@pytest.fixture
def bucket(endpoint: str) -> tuple[gcsfs.GCSFileSystem, str]:
    """A new, empty bucket for one test, and the filesystem that reaches it."""
    fs = gcsfs.GCSFileSystem()
    name = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job with every path local: what the object-store runs must reproduce."""
    return cases.run_locally(tmp_path_factory)


def test_the_emulator_is_what_gs_urls_reach(bucket):
    """gs:// URLs resolve to gcsfs pointed at the emulator (not Google's endpoint)."""
    from dataselect import storage

    fs, name = bucket
    fs.pipe_file(f"{name}/a/b.txt", b"hello")
    assert storage.isfile(f"gs://{name}/a/b.txt") and storage.isdir(f"gs://{name}/a")
    assert not storage.isdir(f"gs://{name}/a/b.txt") and not storage.isfile(f"gs://{name}/a")
    assert storage.exists(f"gs://{name}/a") and storage.isdir(f"gs://{name}")
    assert not any(ask(f"gs://{name}/{missing}") for missing in ("c", "a/c", "a/b.txt/c")
                   for ask in (storage.exists, storage.isfile, storage.isdir))
    assert storage.names_below(f"gs://{name}") == ["a/b.txt"]
    assert storage.read_range(f"gs://{name}/a/b.txt", 1, 4) == b"ell"
    assert storage.object_fingerprint(f"gs://{name}/a/b.txt")["object"]["generation"]


def test_a_file_of_5_mib_or_more_is_uploaded_resumably(bucket, tmp_path, downloads,
                                                       monkeypatch):
    """gcsfs sends a file of 5 MiB or more as a resumable upload (a session, then its
    bytes), which GCS shows only once finished; :func:`storage.upload` of one gives the
    file's bytes, read back in ranges as any part is."""
    from dataselect import storage

    _, name = bucket
    uploads: list[str] = []
    original = emulator.RequestHandler.do_POST

    def do_post(self):
        uploads.append(self.path)
        original(self)

    monkeypatch.setattr(emulator.RequestHandler, "do_POST", do_post)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 16) * 100)  # 6.25 MiB
    url = f"gs://{name}/out/part-00000.parquet"
    storage.upload(str(local), url)
    assert uploads and all("uploadType=resumable" in path for path in uploads)
    assert storage.size(url) == local.stat().st_size
    assert storage.read_bytes(url) == local.read_bytes()
    start_watching, fetched = downloads
    start_watching()
    assert storage.read_range(url, 5 << 20, (5 << 20) + 10) == local.read_bytes()[5 << 20:][:10]
    assert fetched("part-00000.parquet") == [(5 << 20, (5 << 20) + 10)]


@pytest.mark.slow
def test_select_reads_pool_and_target_from_gcs(bucket, local_run, tmp_path):
    argv = cases.select_reads_pool_and_target(*bucket, "gs", "generation", local_run,
                                              tmp_path)
    # the objects' fingerprints (generation, md5Hash, updated, ...) read again are the
    # same: the rerun resumes, reusing every part, rather than finding changed inputs
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / ".manifest.json").read_text())
    assert manifest["output"]["partitions_reused"] == 4


@pytest.mark.slow
def test_output_in_gcs_has_the_local_run_s_bytes(bucket, local_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases.output_has_the_local_run_s_bytes(*bucket, "gs", local_run)


@pytest.mark.slow
def test_a_job_killed_while_writing_to_gcs_resumes_with_identical_bytes(
        bucket, local_run, monkeypatch):
    cases.killed_job_resumes_with_identical_bytes(*bucket, "gs", local_run, monkeypatch)


@pytest.mark.slow
def test_overwrite_in_gcs_deletes_exactly_the_listed_objects(bucket, capsys):
    cases.overwrite_deletes_exactly_the_listed_objects(*bucket, "gs", capsys)


def test_a_foreign_gcs_folder_is_refused_before_any_work(bucket, capsys, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases.a_foreign_folder_is_refused_before_any_work(*bucket, "gs", capsys, tmp_path)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> cases.Watch:
    """The object reads (``alt=media`` GETs) the server answers from the first call on,
    with their Range headers, as the server saw them."""
    seen: list[tuple[str, str | None]] = []
    original = emulator.RequestHandler.do_GET

    def do_get(self):
        if "alt=media" in self.path:
            path = urllib.parse.unquote(self.path.partition("?")[0])  # a key's "/" is %2F
            seen.append((path, self.headers.get("Range")))
        original(self)

    monkeypatch.setattr(emulator.RequestHandler, "do_GET", do_get)
    return seen.clear, lambda key: _ranges(seen, key)


def _ranges(seen: list[tuple[str, str | None]], key: str) -> list[tuple[int, int]]:
    """The byte ranges ``[start, stop)`` asked for one object; a GET without one fails."""
    ranges = []
    for path, header in seen:
        if path.endswith("/" + key):
            assert header and header.startswith("bytes="), f"a GET without a range: {path}"
            start, _, end = header[len("bytes="):].partition("-")
            ranges.append((int(start), int(end) + 1))
    return ranges


def test_jsonl_pool_in_gcs_is_read_by_byte_ranges(bucket, small_records, tmp_path, downloads):
    cases.jsonl_piece_is_one_range_request(*bucket, "gs", small_records, tmp_path, downloads)


def test_parquet_in_gcs_is_read_by_row_group_ranges(bucket, pool_table, tmp_path, downloads):
    cases.parquet_is_read_by_row_group_ranges(*bucket, "gs", pool_table, tmp_path, downloads)


def test_a_missing_gcs_bucket_is_one_line_saying_so(endpoint, capsys, tmp_path, monkeypatch):
    """gcsfs's error for a bucket that is not there names only the API path it asked
    (``b/nobucket/o``); the line says what that means."""
    monkeypatch.chdir(tmp_path)
    assert main(["select", *cases.JOB, "--pool", cases.POOL_GLOB, "--target", cases.TARGET,
                 "--out", "gs://nobucket/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "dataselect: error: gs://nobucket/out: cannot reach the object (no such bucket or "
        "object: "), err
    assert os.listdir(tmp_path) == []
    assert main(["select", *cases.JOB, "--pool", "gs://nobucket/pool", "--target",
                 cases.TARGET, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("gs://nobucket/pool: no such file or folder")


def test_an_unreachable_gcs_server_is_one_line_not_a_missing_file(capsys, monkeypatch):
    """Nothing listening where gs:// points: one line saying the store cannot be reached.
    fsspec's isfile and gcsfs's isdir answer False to any error, so this was "no such
    file or folder" (after a minute of gcsfs's retries); the retries' sleeps are cut."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{cases.free_port()}")

    async def no_wait(_seconds):
        return None

    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=no_wait))
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        assert main(["select", *cases.JOB, "--pool", "gs://b/pool", "--target",
                     cases.TARGET, "--out", "gs://b/out"]) == 2
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dataselect: error: gs://b/pool: cannot reach the storage"), err
    assert "Traceback" not in "\n".join(err)
