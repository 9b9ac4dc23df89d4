"""Probe round F (issue 28): paths pyarrow took for URIs, outputs on filesystems that die
with the process, FIFOs where dataselect reads a file, and records edited by hand.

A local name with a ``:`` (``v1:pool.parquet``, ``--out dsir:k20``) is a local name; a
``file:`` URL (``file:/abs``, ``file:///abs``, ``file://localhost/abs``) is the path it
names in every command; ``memory://`` is refused as an output. A FIFO or device where a
JSON record, a recipe or a model's config belongs is one line, at once. A record edited
into another shape is one line "damaged or edited" naming the file and the key."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS, write_jsonl
from fault_helpers import private_fingerprint_cache  # noqa: F401 (autouse fixture)
from fault_helpers import within as _within

from attribution.index import FeatureIndex
from dataselect.errors import InputError
from dataselect.features import FeatureStore
from dataselect.output import read_table
from pipelines.cli import main
from pipelines.report_input import check_run_shape

TARGET = str(TARGETS / "python_docs.jsonl")


def _records(n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}"}
            for i in range(n)]


def _select(pool: str | Path, out: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target", TARGET,
            "--out", out, "--workers", "1", "--worker-kind", "threads", "--k", "5"]


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture, *parts: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("dataselect: error: "), err
    for part in parts:
        assert part in lines[0], err
    return lines[0]


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", _records(30))


# ---------------------------------------------------------- paths pyarrow parsed as URIs

@pytest.mark.slow
def test_a_local_parquet_pool_named_with_a_colon_is_read(tmp_path, monkeypatch, pool):
    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.Table.from_pylist(_records(30)), str(tmp_path / "v1:pool.parquet"))
    assert main(_select("v1:pool.parquet", "out")) == 0
    assert read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dsir:k20", "s3:x", "file:notes"])
def test_an_output_folder_named_with_a_colon_is_local(tmp_path, monkeypatch, pool, name):
    """pyarrow read the score parts of ``dsir:k20/`` as scheme ``dsir``: the job failed
    after its work, calling its own files damaged."""
    monkeypatch.chdir(tmp_path)
    assert main(_select(pool, name)) == 0
    assert read_table(tmp_path / name / "part-00000.parquet").num_rows == 5


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["file:", "file://", "file://localhost"])
def test_a_file_url_is_the_local_path_it_names(tmp_path, monkeypatch, pool, prefix):
    """``file:/abs`` was written to the relative folder ``./file:/abs`` while its score
    parts were read back from ``/abs``; ``file://localhost/abs`` became ``./localhost/abs``."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "sel"
    assert main(_select(pool, prefix + str(out))) == 0
    assert read_table(out / "part-00000.parquet").num_rows == 5
    assert list(elsewhere.iterdir()) == []
    assert main(["report", prefix + str(out)]) == 0  # every command takes the same spellings
    assert (out / ".report" / "index.html").is_file()


def test_a_file_url_of_another_host_is_refused(tmp_path, pool, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(_select(pool, f"file://server{tmp_path}/sel"), capsys, "file:")
    assert not (tmp_path / "server").exists()


@pytest.mark.parametrize("url", ["memory://x1", "memory:///x1/y", "simplecache::memory://x"])
def test_an_output_on_a_process_local_filesystem_is_refused(tmp_path, pool, capsys, url):
    """``--out memory://x`` exited 0 saying 'wrote memory://x/': gone with the process."""
    code = main(_select(pool, url))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err


# ------------------------------------------------------------ FIFOs where a file belongs

@pytest.fixture
def finished(tmp_path: Path, pool: Path) -> Path:
    out = tmp_path / "base"
    assert main(_select(pool, str(out))) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", [".manifest.json", ".dataselect.json"])
def test_a_fifo_for_a_record_is_refused_at_once(tmp_path, finished, pool, capsys, name):
    (finished / name).unlink()
    os.mkfifo(finished / name)
    with _within(30):
        _one_line_exit_2(["report", str(finished)], capsys, name, "not a regular file")
        # the marker is read; the manifest, a listed name, is not replaced without a word
        # (test_fault_probe_o.py)
        _one_line_exit_2(_select(pool, str(finished)), capsys, name, "not a regular file")


def test_a_fifo_recipe_is_refused_at_once(tmp_path, capsys):
    os.mkfifo(tmp_path / "r.yaml")
    with _within(30):
        _one_line_exit_2(["run", str(tmp_path / "r.yaml")], capsys, "not a regular file")


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_a_fifo_in_a_model_folder_is_refused_at_once(tmp_path, name):
    from models.lm import check_model_folder

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / name).unlink(missing_ok=True)
    os.mkfifo(model / name)
    with _within(30), pytest.raises(InputError, match="not a regular file") as caught:
        check_model_folder(model)
    assert caught.value.where.endswith(name)


def test_a_fifo_named_as_a_gguf_is_refused_at_once(tmp_path, capsys):
    os.mkfifo(tmp_path / "m.gguf")
    with _within(30):
        _one_line_exit_2(["model", "import", str(tmp_path / "m.gguf"), "--out",
                          str(tmp_path / "o")], capsys, "not a regular file")


# ------------------------------------------------------------- records edited by hand

def _feature_store(tmp_path: Path) -> Path:
    store = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 4, "views": 1})
    rng = np.random.default_rng(0)
    store.write_part(0, pa.array(["a", "b", "c"], pa.string()),
                     rng.normal(size=(3, 1, 4)).astype(np.float32))
    return tmp_path / "f"


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", [lambda d: d.update(views="x"),
                                    lambda d: d.update(dim="x"), lambda d: d.clear(),
                                    lambda d: d.update(view_weights="x")])
def test_an_edited_feature_manifest_is_one_line(tmp_path, capsys, change):
    folder = _feature_store(tmp_path)
    _edit(folder / "_manifest.json", change)
    _one_line_exit_2(["index", "build", "--features", str(folder), "--out",
                      str(tmp_path / "i")], capsys, "_manifest.json", "damaged or edited")


@pytest.mark.parametrize("change", [lambda d: d.update(dim="x"),
                                    lambda d: d.update(features="x"), lambda d: d.clear(),
                                    lambda d: d.update(kind=3)])
def test_an_edited_index_record_is_one_line(tmp_path, capsys, change):
    folder = _feature_store(tmp_path)
    assert main(["index", "build", "--features", str(folder), "--out",
                 str(tmp_path / "i")]) == 0
    _edit(tmp_path / "i" / "index.json", change)
    with pytest.raises(InputError, match="damaged or edited") as caught:
        FeatureIndex.load(tmp_path / "i")
    assert caught.value.where.endswith("index.json")


@pytest.fixture(scope="module")
def selection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sel")
    pool = write_jsonl(root / "pool.jsonl", _records(30))
    assert main(_select(pool, str(root / "out"))) == 0
    return root / "out"


def _copy(selection: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(selection, out, symlinks=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    lambda d: d["counts"].update(filtered="x"), lambda d: d.update(inputs="x"),
    lambda d: d["inputs"].update(pool="x"), lambda d: d.update(output="x"),
    lambda d: d["output"].update(parts="x"), lambda d: d["output"].update(parts=[{"file": 5}]),
    lambda d: d.update(fit="x"), lambda d: d["counts"].update(rows_in="300"),
    lambda d: d.update(timings={"total_seconds": "x"})])
def test_an_edited_selection_manifest_is_one_line_in_report(selection, tmp_path, capsys,
                                                            change):
    out = _copy(selection, tmp_path)
    _edit(out / ".manifest.json", change)
    _one_line_exit_2(["report", str(out)], capsys, ".manifest.json", "damaged or edited")


@pytest.mark.slow
@pytest.mark.parametrize("results", [
    {"summary": {"code": "x"}, "settings": {"steps": 1, "seeds": [0]}}, {},
    {"summary": {"code": {"train_rows": "20", "seeds": [0], "loss": {}}},
     "settings": {"steps": 1, "seeds": [0]}}])
def test_edited_eval_results_are_one_line_in_report(tmp_path, capsys, results):
    """In a recipe run, where ``eval`` writes them and ``report`` reads them (in a select
    folder an ``eval/`` folder is no part of the output, and is refused as a foreign entry
    before anything reads it)."""
    from test_fault_probe_b import recipe_run as make

    out = make.__wrapped__(tmp_path)
    (out / "eval").mkdir(exist_ok=True)
    (out / "eval" / "results.json").write_text(json.dumps(results))
    _one_line_exit_2(["report", str(out)], capsys, "results.json", "damaged or edited")


@pytest.mark.slow
def test_an_eval_folder_planted_in_a_selection_is_refused_in_report(selection, tmp_path,
                                                                     capsys):
    out = _copy(selection, tmp_path)
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    _one_line_exit_2(["report", str(out)], capsys, "eval", "move it away")


def _run_record() -> dict:
    counts = {"rows_in": 30, "eligible": 30, "selected": 5, "filtered": {}}
    return {"recipe": {"name": "r", "selection": {"k": 5},
                       "pool": {"paths": ["p.jsonl"], "text": "text", "id_field": "id",
                                "partition_mb": 4.0}},
            "tasks": {"code": {"selected": 5, "counts": counts, "metrics": {},
                               "path": "tasks/code"}},
            "scorers": ["dsir"], "union": {"selected": 5}, "timings": {"total_seconds": 1.0}}


@pytest.mark.parametrize("change", [
    lambda d: d.update(union="x"), lambda d: d["tasks"]["code"]["counts"].update(filtered="x"),
    lambda d: d.update(timings="x"), lambda d: d["recipe"].update(pool="x"),
    lambda d: d["tasks"]["code"].update(counts={}), lambda d: d["union"].update(selected=None),
    lambda d: d["recipe"].update(selection=[])])
def test_an_edited_run_record_is_one_line(tmp_path, change):
    check_run_shape(_run_record(), "r/.run.json")  # as written: accepted
    run = _run_record()
    change(run)
    with pytest.raises(InputError, match="damaged or edited"):
        check_run_shape(run, "r/.run.json")


# ------------------------------------------------------------------- if time was left

@pytest.mark.slow
@pytest.mark.parametrize("browser", ["/nonexistent/chromium", "/bin/sleep", "/"])
def test_a_chromium_that_cannot_run_is_one_line(selection, tmp_path, capsys, monkeypatch,
                                                browser):
    """DATASELECT_CHROMIUM naming a missing file was a FileNotFoundError traceback; one
    that is not Chromium put its own stderr lines into the error."""
    out = _copy(selection, tmp_path)
    monkeypatch.setenv("DATASELECT_CHROMIUM", browser)
    code = main(["report", str(out), "--check"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # the error is the whole last line, nothing after
    assert last.startswith("dataselect: error: ") and browser in last, err
    if browser == "/bin/sleep":
        assert "for more information" in last, err  # sleep's second line, joined


@pytest.mark.parametrize("out", ["/proc/dataselect-x", "/proc/self/dataselect-x"])
def test_an_output_where_no_folder_can_be_made_is_one_line(pool, capsys, out):
    _one_line_exit_2(_select(pool, out), capsys, out, "--out")


@pytest.mark.parametrize("change", [lambda d: d.update(description="x"),
                                    lambda d: d.clear(),
                                    lambda d: d["description"].update(pool="x"),
                                    lambda d: d["description"].pop("scorer")])
def test_an_edited_score_store_manifest_is_one_line(tmp_path, pool, change):
    from dataselect.scoring import Scores

    assert main(["score", "--scorer", "dsir", "--pool", str(pool), "--target", TARGET,
                 "--out", str(tmp_path / "o"), "--workers", "1", "--worker-kind",
                 "threads"]) == 0
    store = tmp_path / "o" / ".scores" / "dsir"
    Scores.from_store(store, str(pool))  # as written: read
    _edit(store / "_manifest.json", change)
    with pytest.raises(InputError, match="damaged or edited") as caught:
        Scores.from_store(store, str(pool))
    assert caught.value.where.endswith("_manifest.json")
