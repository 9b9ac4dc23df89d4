"""Pass 16, g12: relative paths with a Dask scheduler whose workers run in another folder.

With ``--scheduler`` (or a recipe's ``cluster.scheduler``), a relative ``--pool p --out o``
was sent to the workers as written: they read ``p/`` and wrote ``.parsed/``, ``.scores/``
and ``.stats/`` into ``o/`` of the folder THEY run in (outside --out, never claimed), and
a pool found only beside the client was refused as "cannot fingerprint the file". Every
local path is now absolute on the client before planning (:func:`dataselect.storage.
absolute`). One external cluster (one worker process, started in its own folder) serves
the whole module; the client runs in another folder (``monkeypatch.chdir``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, TARGETS
from fault_helpers import private_fingerprint_cache, ran_ok  # noqa: F401

from dataselect import storage

# the nanny of a cluster's worker process leaves these in os.environ (tests/test_cli.py)
_NANNY_ENV = ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS")


def _pool(folder: Path, rows: int, part: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(DATA / "pool" / f"part-0000{part}.parquet").slice(0, rows)
    pq.write_table(table, folder / "pool.parquet")
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A running cluster whose one worker process runs in a folder of its own that holds
    another ``p/pool.parquet`` (and nothing else): its address and that folder."""
    from distributed import Client, LocalCluster

    worker_cwd = tmp_path_factory.mktemp("worker_cwd")
    saved_env = {name: os.environ.get(name) for name in _NANNY_ENV}
    here = os.getcwd()
    os.chdir(worker_cwd)  # the worker process starts, and stays, here
    try:
        local = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                             dashboard_address=":0")
    finally:
        os.chdir(here)
    try:
        with Client(local.scheduler_address) as client:
            assert list(client.run(os.getcwd).values()) == [str(worker_cwd)]
        yield local.scheduler_address, worker_cwd
    finally:
        local.close()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: tuple[str, Path]
        ) -> Iterator[tuple[str, Path, Path]]:
    """The client's folder (its cwd, holding a 200-row ``p/``), the worker's folder (a
    40-row ``p/`` of other rows, as the probe had it) and the scheduler's address."""
    address, worker_cwd = cluster
    client_cwd = tmp_path / "job"
    _pool(client_cwd / "p", 200)
    _pool(worker_cwd / "p", 40, part=2)
    monkeypatch.chdir(client_cwd)
    yield address, client_cwd, worker_cwd
    for entry in worker_cwd.iterdir():  # the next test starts from the same worker folder
        if entry.name != "p":
            raise AssertionError(f"the job wrote {entry} in the worker's folder")


def _ids(folder: Path) -> set[str]:
    return {i for f in folder.glob("part-*.parquet")
            for i in pq.read_table(f, columns=["id"])["id"].to_pylist()}


def _select(out: str, pool: str, address: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", pool, "--target",
            str(TARGETS / "fortunes.jsonl"), "--k", "20", "--out", out,
            "--scheduler", address]


def test_relative_pool_and_out_are_the_clients(job, capsys):
    """h06: the client's ``p`` is read and only ``./o`` is written; the workers' folder
    stays as it was (the fixture checks), and the selection's rows are the client's."""
    address, client_cwd, worker_cwd = job
    ran_ok(_select("o", "p", address), capsys)
    client_ids = set(pq.read_table(client_cwd / "p" / "pool.parquet")["id"].to_pylist())
    chosen = _ids(client_cwd / "o")
    assert len(chosen) == 20 and chosen <= client_ids
    assert not (worker_cwd / "o").exists()


def test_relative_out_with_an_absolute_pool(job, capsys):
    """h09: an absolute pool and a relative --out: nothing written in the workers' folder."""
    address, client_cwd, worker_cwd = job
    ran_ok(_select("o9", str(client_cwd / "p"), address), capsys)
    assert len(_ids(client_cwd / "o9")) == 20
    assert not (worker_cwd / "o9").exists()


def test_a_relative_pool_found_only_beside_the_client_runs(job, capsys):
    """h01: a relative pool the workers' folder lacks was refused as a missing file."""
    address, client_cwd, worker_cwd = job
    (worker_cwd / "p" / "pool.parquet").unlink()
    try:
        ran_ok(_select("o3", "p", address), capsys)
    finally:
        _pool(worker_cwd / "p", 40, part=2)
    assert len(_ids(client_cwd / "o3")) == 20


def test_a_recipe_on_a_scheduler_reads_and_writes_beside_the_client(job, capsys):
    """h10: a recipe's relative pool, target and output folder, on its
    ``cluster.scheduler``."""
    address, client_cwd, worker_cwd = job
    (client_cwd / "t.jsonl").write_bytes((TARGETS / "fortunes.jsonl").read_bytes())
    recipe = {"name": "rel", "pool": {"paths": ["p"], "text": "text"},
              "targets": {"fortunes": {"paths": ["t.jsonl"]}},
              "scorers": {"dsir": {"num_buckets": 5000}}, "selection": {"k": 10},
              "output": {"path": "run"}, "cluster": {"scheduler": address}}
    (client_cwd / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    ran_ok(["run", "r.yaml"], capsys)
    assert len(_ids(client_cwd / "run" / "tasks" / "fortunes")) == 10
    assert not (worker_cwd / "run").exists()


def test_the_python_api_sends_absolute_paths(job):
    """read_corpus, Scores.write and Selection.write under a client of the cluster: the
    corpus lists absolute files, and the store and the selection are written beside the
    client, not the workers (the fixture checks their folder)."""
    from distributed import Client

    from dataselect import read_corpus, select
    from scorers import DSIR

    address, client_cwd, _ = job
    pool = read_corpus("p")
    assert pool.files == [str(client_cwd / "p" / "pool.parquet")]
    with Client(address):
        scores = DSIR().fit(read_corpus(str(TARGETS / "fortunes.jsonl")), pool).score(pool)
        stored = scores.write("s")
        select.top_k(pool, stored, k=7).write("sel")
    assert stored.npartitions == pool.npartitions and (client_cwd / "s").is_dir()
    assert len(_ids(client_cwd / "sel")) == 7


def test_command_paths_are_absolute_and_names_stay_names(tmp_path, monkeypatch):
    """Every command's local path is absolute before planning, with or without a
    scheduler; a URL stays a URL and a model shortcut that names no file stays a name."""
    import argparse

    from pipelines.commands import local_path_args

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    args = argparse.Namespace(out="o", pool=["p/*.parquet", "s3://b/p"], target=["./t"],
                              model="m", source="smollm2", features="f")
    local_path_args(args)
    assert args.out == str(tmp_path / "o") and args.target == [str(tmp_path / "t")]
    assert args.pool == [str(tmp_path / "p" / "*.parquet"), "s3://b/p"]
    assert args.model == str(tmp_path / "m") and args.source == "smollm2"
    assert args.features == str(tmp_path / "f")
    assert storage.absolute("file:///x/y") == "/x/y" and storage.absolute("") == ""
