"""Pass 13, g05 and g09: a job reads, plans and records each input under one view.

g05: a job fingerprinted its pool three times (the marker's identity, the score store's
description, the manifest) and the final check compared with the store's only, so a pool
file replaced between the first two ended with exit 0, the new file's rows selected and the
old file's identity in the marker. Each input is now fingerprinted once, when it is
planned, and the final check compares with that and with the marker. The tests replace a
file at a chosen stage (a wrapped stage function), never by timing.

g09: ``--pool L/..`` with ``L -> pool/deep`` was listed by the system (``pool/``) and read as
text (``./``): another file's rows, exit 0. Listing, reading and the identity now follow the
system, for folders, globs, files, targets and ``--out``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, TARGETS, write_jsonl
from fault_helpers import dsir_select, private_fingerprint_cache, ran_ok, refused_run  # noqa: F401

from dataselect import read_corpus
from dataselect.layout import MANIFEST_FILE, RUN_FILE
from pipelines import jobs, run_recipe

CHANGED = "changed while the"
# a pool changed under the scoring pass is refused by the score store's check, a later
# change by the selection's: either line names the file and says to rerun with --overwrite
FIX = "--overwrite"


def _pool(folder: Path, rows: int = 200) -> Path:
    """A two-file Parquet pool folder; returns the second file (the one replaced)."""
    folder.mkdir(parents=True)
    table = pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 2 * rows)
    pq.write_table(table.slice(0, rows), folder / "a.parquet")
    pq.write_table(table.slice(rows, rows), folder / "b.parquet")
    return folder / "b.parquet"


def _replace_with_upper(path: Path, extra_rows: int = 0) -> None:
    """Replace ``path`` by rename (a new inode, as ``mv new path``) with a file of the same
    schema: its text upper-cased and, when asked, more rows."""
    table = pq.read_table(path)
    if extra_rows:
        more = pq.read_table(DATA / "pool" / "part-00001.parquet").slice(0, extra_rows)
        more = more.select(table.column_names).cast(table.schema)
        import pyarrow as pa

        table = pa.concat_tables([table, more])
    upper = table.set_column(table.schema.get_field_index("text"), "text",
                             pc.utf8_upper(table.column("text")))
    fresh = path.with_name(path.name + ".new")
    pq.write_table(upper, fresh)
    os.replace(fresh, path)


def _after(monkeypatch: pytest.MonkeyPatch, module: object, name: str, action) -> list:
    """Wrap ``module.name`` so that ``action()`` runs once, right after its first call."""
    original, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if not calls:
            calls.append(name)
            action()
        return result

    monkeypatch.setattr(module, name, wrapped)
    return calls


# --- g05: select, score ----------------------------------------------------------------


def test_a_pool_file_replaced_after_the_marker_identity_is_refused(tmp_path, monkeypatch,
                                                                      capsys):
    """The c114 case without the race: the file is replaced right after the job's identity
    (the marker's) was taken, before the pool is scored."""
    swapped = _pool(tmp_path / "pool")
    calls = _after(monkeypatch, jobs, "job_identity", lambda: _replace_with_upper(swapped))
    out = tmp_path / "out"
    refused_run(dsir_select(tmp_path / "pool", out), capsys, FIX, "b.parquet")
    assert calls
    assert not (out / MANIFEST_FILE).exists()


def test_a_pool_file_replaced_after_planning_is_refused(tmp_path, monkeypatch, capsys):
    """Replaced after the pool was planned and before any record of it: the plan (row
    groups, row counts) is the old file's, so the new file's extra rows were never read,
    and every record described the new file; exit 0."""
    swapped = _pool(tmp_path / "pool")
    calls = _after(monkeypatch, jobs, "_corpora",
                   lambda: _replace_with_upper(swapped, extra_rows=50))
    out = tmp_path / "out"
    refused_run(dsir_select(tmp_path / "pool", out), capsys, FIX, "b.parquet")
    assert calls
    assert not (out / MANIFEST_FILE).exists()


def test_a_target_replaced_after_the_marker_identity_is_refused(tmp_path, monkeypatch,
                                                                   capsys):
    """The target was fingerprinted for the marker, then read by the fit after the edit,
    and the manifest fingerprinted it again: exit 0, the marker naming another target."""
    target = write_jsonl(tmp_path / "t.jsonl",
                         [{"text": f"def f{i}(x): return x + {i}"} for i in range(40)])
    _pool(tmp_path / "pool")

    def edit() -> None:
        fresh = write_jsonl(tmp_path / "t2.jsonl",
                            [{"text": f"the cat sat on mat {i}"} for i in range(40)])
        os.replace(fresh, target)

    calls = _after(monkeypatch, jobs, "job_identity", edit)
    out = tmp_path / "out"
    argv = dsir_select(tmp_path / "pool", out)
    argv[argv.index("--target") + 1] = str(target)
    refused_run(argv, capsys, CHANGED, "target", "t.jsonl")
    assert calls
    assert not (out / MANIFEST_FILE).exists()


def test_score_refuses_a_pool_file_replaced_after_planning(tmp_path, monkeypatch, capsys):
    swapped = _pool(tmp_path / "pool")
    calls = _after(monkeypatch, jobs, "_corpora",
                   lambda: _replace_with_upper(swapped, extra_rows=50))
    argv = dsir_select(tmp_path / "pool", tmp_path / "store")
    argv[0] = "score"
    del argv[argv.index("--k"):argv.index("--k") + 2]
    refused_run(argv, capsys, FIX, "b.parquet")
    assert calls


def test_a_job_records_the_pool_once(tmp_path, monkeypatch, capsys):
    """Marker, score store and manifest hold one fingerprint of the pool, taken once: a
    file's identity is never taken again for a record (only to check it)."""
    _pool(tmp_path / "pool")
    out = tmp_path / "out"
    ran_ok(dsir_select(tmp_path / "pool", out), capsys)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    marker = json.loads((out / ".dataselect.json").read_text())
    assert manifest["inputs"]["pool"] == manifest["scores"]["pool"]
    assert json.dumps(marker).count(manifest["inputs"]["pool"]["files"][0]["xxh3_128"]) == 1


# --- g05: recipes -----------------------------------------------------------------------


def _recipe(tmp_path: Path, target: Path, held_out: Path | None = None) -> Path:
    spec = {"paths": [str(target)], **({"eval": [str(held_out)]} if held_out else {})}
    recipe = {"name": "once", "pool": {"paths": [str(tmp_path / "pool")], "text": "text"},
              "targets": {"docs": spec}, "scorers": {"dsir": {"num_buckets": 5000}},
              "selection": {"k": 20}, "output": {"path": str(tmp_path / "run")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["pool", "target", "held_out"])
def test_a_recipe_input_replaced_after_the_claim_is_refused(tmp_path, monkeypatch, capsys,
                                                            which):
    """Replaced right after the run's marker fingerprinted it (the models stage comes
    next): the run refuses before ``.run.json``."""
    swapped = _pool(tmp_path / "pool")
    target = write_jsonl(tmp_path / "t.jsonl", [json.loads(line) for line in
                         (TARGETS / "python_docs.jsonl").read_text().splitlines()[:60]])
    held_out = write_jsonl(tmp_path / "h.jsonl", [{"text": f"held out {i}"} for i in range(9)])

    def edit() -> None:
        if which == "pool":
            _replace_with_upper(swapped)
            return
        path = target if which == "target" else held_out
        fresh = write_jsonl(tmp_path / "x.jsonl", [{"text": f"other {i}"} for i in range(30)])
        os.replace(fresh, path)

    calls = _after(monkeypatch, run_recipe, "_prepare_models", edit)
    refused_run(["run", str(_recipe(tmp_path, target, held_out))], capsys, FIX,
                {"pool": "b.parquet", "target": "t.jsonl", "held_out": "h.jsonl"}[which])
    assert calls
    assert not (tmp_path / "run" / RUN_FILE).exists()


# --- g09: a ".." after a symbolic link --------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """c131's layout, from the working folder ``w``: ``L -> pool/deep``, ``pool/pool.parquet``
    of 60 rows (what the system reads as ``L/../pool.parquet``) and ``w/pool.parquet`` of 30
    (what the text reads). Returns the pool folder."""
    table = pq.read_table(DATA / "pool" / "part-00000.parquet")
    pool, work = tmp_path / "pool", tmp_path / "w"
    (pool / "deep").mkdir(parents=True)
    work.mkdir()
    pq.write_table(table.slice(0, 60), pool / "pool.parquet")
    pq.write_table(table.slice(100, 30), work / "pool.parquet")
    (work / "L").symlink_to(pool / "deep", target_is_directory=True)
    monkeypatch.chdir(work)
    return pool


@pytest.mark.parametrize("spec", ["L/..", "L/../", "L/../*.parquet", "L/../pool.parquet",
                                  "L/../deep/../pool.parquet"])
def test_a_dotdot_after_a_link_reads_what_the_system_lists(linked, spec):
    """Every spelling (folder, glob, file) reads the 60 rows of pool/pool.parquet, under a
    name the system and pyarrow read alike; targets, held-out rows and recipe paths are
    read through the same read_corpus."""
    corpus = read_corpus(spec)
    table = corpus.to_table()
    assert table.num_rows == 60
    assert {os.path.realpath(f) for f in table.column("_file").to_pylist()} == {
        str(linked / "pool.parquet")}
    assert [f["path"] for f in corpus.fingerprint()["files"]] == [str(linked / "pool.parquet")]


def test_select_with_a_dotdot_pool_selects_from_the_listed_folder(linked, capsys):
    out = linked.parent / "out"
    ran_ok(dsir_select(Path("L/.."), out, k=5), capsys)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["counts"]["rows_in"] == 60
    assert [f["path"] for f in manifest["inputs"]["pool"]["files"]] == [
        str(linked / "pool.parquet")]


def test_an_out_with_a_dotdot_after_a_link_is_where_the_system_leads(linked, capsys):
    """c133: ``--out L/../sel`` is pool/sel, as for the system (and for the inputs' checks),
    not ./sel: the same path names one folder everywhere."""
    pool = linked.parent / "other.jsonl"
    write_jsonl(pool, [{"text": f"row {i} of text"} for i in range(40)])
    ran_ok(dsir_select(pool, Path("L/../sel"), k=5), capsys)
    assert (linked / "sel" / MANIFEST_FILE).exists()
    assert not Path("sel").exists()


# --- g05: a model folder, fingerprinted once per fit -------------------------------------


@pytest.fixture(scope="module")
def blank_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, untrained Llama (its tokenizer trained on a few rows): enough to embed."""
    from models.lm import build_tiny_causal_lm

    texts = [f"row {i} says hello to the model number {i * 7}" for i in range(200)]
    return Path(build_tiny_causal_lm(texts, tmp_path_factory.mktemp("lm") / "blank",
                                     vocab_size=300, hidden_size=32, layers=1, heads=2))


def test_a_model_changed_after_the_fit_is_refused(tmp_path, monkeypatch, capsys, blank_lm):
    """The fit fingerprints the model once (its digest, the score and feature stores and
    the manifest all record that value); a model folder changed after it, before the pool
    is scored, ends the job in one line, where the store recorded the new model's identity
    and the job ended with exit 0."""
    from scorers.embed import Embed

    model = tmp_path / "model"
    import shutil

    shutil.copytree(blank_lm, model)
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool row {i}"} for i in range(30)])
    target = write_jsonl(tmp_path / "t.jsonl", [{"text": f"target row {i}"} for i in range(9)])

    def edit() -> None:
        with open(model / "config.json", "a", encoding="utf-8") as f:
            f.write("\n")  # still the same model to load, another file

    calls = _after(monkeypatch, Embed, "fit", edit)
    out = tmp_path / "out"
    refused_run(["select", "--scorer", "embed", "-p", f"model={model}", "--pool", str(pool),
                 "--target", str(target), "--out", str(out), "--k", "5", "--workers", "1",
                 "--worker-kind", "threads"], capsys, CHANGED, "model", FIX)
    assert calls
    assert not (out / MANIFEST_FILE).exists()


def test_features_refuses_an_input_replaced_after_planning(tmp_path, monkeypatch, capsys,
                                                           blank_lm):
    """``dataselect features`` records its input in the store's description; one replaced
    after it was planned (and fingerprinted) ends the job in one line, where the store
    described the old rows and held the new ones, exit 0."""
    from pipelines import commands

    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool row {i}"} for i in range(30)])

    def edit() -> None:
        fresh = write_jsonl(tmp_path / "new.jsonl",  # the same size: read without an error
                            [{"text": f"POOL ROW {i}"} for i in range(30)])
        os.replace(fresh, pool)

    calls = _after(monkeypatch, commands, "_featurizer", edit)
    refused_run(["features", "--scorer", "embed", "-p", f"model={blank_lm}", "--input",
                 str(pool), "--out", str(tmp_path / "feats"), "--workers", "1"], capsys,
                CHANGED, "pool.jsonl", FIX)
    assert calls


def test_a_file_replaced_since_planning_is_named_as_changed_not_damaged(tmp_path):
    """A JSONL file replaced by a longer one is read with the old plan's byte ranges: the
    error said "malformed JSON" of a valid file; it now says the file changed."""
    from dataselect.errors import InputError

    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": f"row {i}"} for i in range(40)])
    corpus = read_corpus(str(pool), partition_bytes=200)
    fresh = write_jsonl(tmp_path / "new.jsonl", [{"text": f"a longer row {i}"} for i in range(40)])
    os.replace(fresh, pool)
    with pytest.raises(InputError, match=CHANGED) as raised:
        for index in range(corpus.npartitions):
            corpus.read_partition(index)
    assert "pool.jsonl" in str(raised.value)


def test_command_paths_with_a_dotdot_after_a_link_follow_the_system(linked):
    """Every command's path arguments (``report``/``eval`` run folders, models, features,
    indexes) are read as the system reads them: ``report L/../run`` locked ``pool/run`` and
    joined the run's folder names onto ``./run`` as text. A URL is left as written."""
    import argparse

    from pipelines.commands import local_path_args

    args = argparse.Namespace(out="L/../run", pool=["L/..", "s3://b/x/../y"],
                              model="file://" + str(Path.cwd() / "L" / ".." / "m"))
    local_path_args(args)
    assert args.out == str(linked / "run")
    assert args.pool == [str(linked), "s3://b/x/../y"]
    assert args.model == str(linked / "m")
