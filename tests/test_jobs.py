"""Select jobs as a user runs them: the stage table accounts for the whole wall time, a
normal job prints no Dask warning, and the KL metric and label counts are the same whether
the command line or the Python API wrote the selection."""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS

import pipelines.commands  # noqa: F401  (imported now, so the timed runs import nothing)
from dataselect import read_corpus, select
from dataselect.writer import MANIFEST_FILE
from pipelines.cli import main
from scorers import DSIR

TARGET = str(TARGETS / "python_docs.jsonl")
# scorer -> its -p flags: ZIP-FIT's fast mode, as in the README, keeps the test short
JOBS = {"dsir": [], "fasttext": [], "zipfit": ["-p", "mode=fast"],
        "auto": ["-p", "candidates=dsir,zipfit", "-p", "pool_sample=500"]}  # validation timed
NAMED = ("read inputs", "start cluster", "select", "write", "metrics", "stop cluster", "other")


def stage_rows(printed: str) -> dict[str, float]:
    """The printed stages table as stage -> seconds (the ``total`` row included)."""
    table = printed.split("dataselect select: stages", 1)[1].split("dataselect select: result")[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 6 and cells[1] != "stage":
            rows[cells[1]] = float(cells[3])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("scorer", JOBS)
def test_select_job_accounts_for_its_time_and_warns_nothing(scorer, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["select", "--scorer", scorer, *JOBS[scorer], "--pool", POOL_GLOB, "--target",
            TARGET, "--k", "440", "--out", str(out)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        assert main(argv) == 0
        wall = time.perf_counter() - started
    printed = capfd.readouterr()  # the fds: worker processes' stderr too
    from_dask = [f"{w.filename}: {w.message}" for w in caught
                 if "/distributed/" in w.filename or "/dask/" in w.filename]
    assert not from_dask
    assert "warning" not in printed.err.lower()

    rows = stage_rows(printed.out)
    total = rows.pop("total")
    assert set(NAMED) | {f"fit:{scorer}", f"score:{scorer}"} <= set(rows)
    # rows are printed to 1/100 s: their sum is the total up to that rounding
    assert sum(rows.values()) == pytest.approx(total, abs=0.005 * (len(rows) + 1))
    assert total <= wall + 0.01 and wall - total < 2.0  # the clock spans the whole job
    assert rows["other"] < max(0.5, 0.05 * total)  # nearly every second has a name
    if scorer == "fasttext":
        assert rows["train:fasttext"] > 0.1  # training in the client is shown
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    recorded = manifest["timings"]
    assert sum(s["seconds"] for s in recorded["stages"]) == pytest.approx(
        recorded["total_seconds"], abs=0.001 * (len(recorded["stages"]) + 1))


@pytest.mark.slow
def test_cli_and_api_report_the_same_kl_and_labels_for_the_same_selection(tmp_path, capsys):
    assert main(["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target", TARGET,
                 "--k", "440", "--seed", "0", "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    cli = json.loads((tmp_path / "cli" / MANIFEST_FILE).read_text())

    pool, target = read_corpus(POOL_GLOB), read_corpus(TARGET)
    scores = DSIR(seed=0).fit(target, pool).score(pool)
    api = select.importance_resample(pool, scores, k=440, seed=0).write(
        str(tmp_path / "api"), target=target)

    chosen = pq.read_table(tmp_path / "cli")
    assert chosen["id"].equals(pq.read_table(tmp_path / "api")["id"])
    assert api["metrics"] == cli["metrics"]
    assert cli["metrics"]["pool_sample_fraction"] == 0.1 and cli["metrics"]["kl_reduction"] > 0
    # the label counts are the selection's own, and precision is their python_docs share
    domains = chosen["domain"].to_pylist()
    assert api["composition"] == cli["composition"]
    assert cli["composition"]["selected"] == dict(Counter(domains))
    assert cli["composition"]["precision"] == round(domains.count("python_docs") / 440, 6)
    assert cli["composition"]["pool_share"] == round(440 / 3960, 6)
    assert (f"precision (domain: python_docs) │ {cli['composition']['precision']:.4f} "
            f"(pool 0.1111)") in printed


def test_the_metric_samples_a_tenth_of_the_pool_up_to_64_mib_unless_told(monkeypatch):
    """The KL metric's sample by default: a tenth of a pool under 640 MiB, 64 MiB of a
    larger one (a tenth of 10^9 rows is a tenth of the scoring pass's hashing); a share
    the user gives is taken as given, at any pool size."""
    from dataselect.corpus import Corpus
    from dataselect.writer import metrics_share

    pool = read_corpus(POOL_GLOB)
    assert metrics_share(None, pool) == 0.1
    monkeypatch.setattr(Corpus, "estimated_bytes", lambda self: 640 * 2**20)
    assert metrics_share(None, pool) == 0.1
    monkeypatch.setattr(Corpus, "estimated_bytes", lambda self: 6400 * 2**20)
    assert metrics_share(None, pool) == 0.01
    assert metrics_share(0.5, pool) == 0.5


BOOKKEEPING = (MANIFEST_FILE, ".dataselect.json", ".dataselect.lock")


def _job_files(out) -> dict[str, bytes]:
    """Every file a job left under ``out`` but its marker and manifest (which hold
    timings and the marker's list of the files the job meant to write)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in BOOKKEEPING}


def test_a_jsonl_pool_is_parsed_once_per_job_and_the_output_is_unchanged(
        tmp_path, pool_table, monkeypatch):
    """Fit, score and write all read the pool; a JSONL pool is parsed by the first pass
    only (the others map its Arrow copy under ``.parsed/``), which is gone afterwards, and
    the job writes the same bytes as one that parses the pool in every pass."""
    from conftest import write_jsonl

    from dataselect.corpus import Corpus
    from pipelines.jobs import SelectJob, run_select_job

    pool = write_jsonl(tmp_path / "pool.jsonl",
                       pool_table.slice(0, 400).select(["id", "text", "domain"]).to_pylist())
    parsed: list[int] = []  # the pool's partitions parsed (the target's are not counted)
    parse = Corpus._parse_partition

    def counted(self: Corpus, index: int):
        if self.files == [str(pool)]:
            parsed.append(index)
        return parse(self, index)

    monkeypatch.setattr(Corpus, "_parse_partition", counted)

    def run(out: str) -> None:
        run_select_job(SelectJob("dsir", [str(pool)], [TARGET], str(tmp_path / out), k=40,
                                 partition_bytes=64 << 10, workers=1))

    run("once")
    partitions = read_corpus(str(pool), partition_bytes=64 << 10).npartitions
    assert partitions > 3 and sorted(parsed) == list(range(partitions))
    assert not (tmp_path / "once" / ".parsed").exists()

    monkeypatch.setattr(Corpus, "parses_text", lambda self: False)
    monkeypatch.setattr(Corpus, "with_ngram_store", lambda self, folder: self)
    parsed.clear()
    run("every_pass")
    assert len(parsed) >= 3 * partitions  # fit, score and write each parsed every one
    assert _job_files(tmp_path / "once") == _job_files(tmp_path / "every_pass")


def test_a_dsir_job_hashes_each_pool_row_once_and_writes_the_same_bytes(
        tmp_path, pool_table, monkeypatch):
    """The fit hashes every pool row into ``.parsed/``; the scores and the write stage's KL
    metric load those n-grams instead of hashing the rows again, and the job writes the
    same bytes as one that hashes in every pass (a Parquet pool: the store does not
    depend on the pool being JSONL)."""
    import pyarrow.parquet as pq

    from dataselect.corpus import Corpus
    from dataselect.ngrams import NgramHasher
    from pipelines.jobs import SelectJob, run_select_job

    pool = tmp_path / "pool.parquet"
    pq.write_table(pool_table.slice(0, 400).select(["id", "text", "domain"]), pool)
    target_rows = read_corpus(TARGET).to_table().num_rows
    hashed: list[int] = []
    call = NgramHasher.__call__
    monkeypatch.setattr(NgramHasher, "__call__",
                        lambda self, texts: hashed.append(len(texts)) or call(self, texts))

    def run(out: str) -> None:
        run_select_job(SelectJob("dsir", [str(pool)], [TARGET], str(tmp_path / out), k=40,
                                 partition_bytes=64 << 10, workers=1))

    run("once")
    # the pool once, the target twice (the fit's distribution, the metric's), and the
    # selected rows of partitions where a few picks hash faster than the saved n-grams
    # are masked (writer.HASH_OVER_COUNT)
    assert 400 + 2 * target_rows <= sum(hashed) <= 400 + 2 * target_rows + 40
    assert not (tmp_path / "once" / ".parsed").exists()
    monkeypatch.setattr(Corpus, "with_ngram_store", lambda self, folder: self)
    hashed.clear()
    run("every_pass")
    assert sum(hashed) > 400 + 400 + 2 * target_rows  # the scores hashed all rows again
    assert _job_files(tmp_path / "once") == _job_files(tmp_path / "every_pass")


def test_copies_a_killed_job_left_behind_are_never_read(tmp_path, pool_table):
    """A killed job leaves ``.parsed/`` behind; the pool may have changed before the rerun
    (``dataselect score`` has no job identity to refuse that), so the rerun deletes the old
    copies and parses the pool again."""
    import pyarrow as pa
    from conftest import write_jsonl

    from dataselect.corpus import cached_name
    from dataselect.layout import PARSED_DIR
    from dataselect.ngram_store import store_name
    from pipelines.jobs import parsed_once

    class Out:  # the part of OutputFolder that parsed_once uses
        path = str(tmp_path / "out")

        def join(self, name: str) -> str:
            return str(tmp_path / "out" / name)

        def expect(self, names: list[str]) -> None:
            assert names == [f"{PARSED_DIR}/{store_name(0)}", f"{PARSED_DIR}/{cached_name(0)}"]

    rows = pool_table.slice(0, 50).select(["id", "text"]).to_pylist()
    pool = read_corpus(str(write_jsonl(tmp_path / "pool.jsonl", rows)))
    stale = tmp_path / "out" / PARSED_DIR / cached_name(0)
    stale.parent.mkdir(parents=True)
    old = pool.read_partition(0).slice(0, 3)
    with pa.OSFile(str(stale), "wb") as sink, pa.ipc.new_file(sink, old.schema) as writer:
        writer.write_table(old)
    with parsed_once(pool, Out()) as parsed:
        assert parsed.read_partition(0).equals(pool.read_partition(0))
        assert stale.exists()  # the fresh copy, written by the first read
    assert not stale.parent.exists()


def test_a_folder_written_by_an_older_output_revision_is_not_resumed(tmp_path, capsys,
                                                                      pool_table):
    """The same settings and inputs under code that writes other bytes (an older output
    revision) must not resume the old folder half done: the job is refused, naming why."""
    from conftest import write_jsonl

    from dataselect.outdir import MARKER

    rows = pool_table.slice(0, 200).select(["id", "text"]).to_pylist()
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    target = write_jsonl(tmp_path / "target.jsonl", rows[:20])
    out = tmp_path / "out"
    argv = ["select", "--scorer", "dsir", "--pool", str(pool), "--target", str(target),
            "--k", "20", "--out", str(out), "--workers", "1"]
    assert main(argv) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["identity"]["output_revision"] >= 2
    del marker["identity"]["output_revision"]  # as the code before revisions wrote it
    (out / MARKER).write_text(json.dumps(marker))
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "differs in: output_revision" in error and "--overwrite" in error
    assert main([*argv, "--overwrite"]) == 0
