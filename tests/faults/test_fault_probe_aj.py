"""Hostile pass 15: ``--overwrite`` deleted the old output, then refused the new job.

A finished selection folder to which the user had added a file (``notes.txt``, a folder
``mine/``) was refused by the writer's "not part of this selection" check, but only after
the claim had deleted the old selection's parts, manifest and statistics: the user was left
with neither selection. The check now runs before anything is deleted, for a selection, a
union, and each task of a recipe.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import POOL_GLOB, TARGETS
from fault_helpers import dsir_select, ran_ok, refused_run

from pipelines.cli import main


def _contents(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) and a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".dataselect.lock"}


@pytest.mark.parametrize("planted", ["notes.txt", "mine/a.txt"])
def test_overwrite_refuses_a_user_file_before_deleting_the_old_selection(tmp_path, capsys,
                                                                         planted):
    out = tmp_path / "o"
    ran_ok(dsir_select(Path(POOL_GLOB), out, k=5), capsys)
    (out / planted).parent.mkdir(exist_ok=True)
    (out / planted).write_text("mine")
    before = _contents(out)
    assert "part-00000.parquet" in before and ".manifest.json" in before
    refused_run(dsir_select(Path(POOL_GLOB), out, "--overwrite", k=7), capsys,
                str(out / planted.split("/")[0]), "is not part of this selection")
    assert _contents(out) == before  # the old selection whole, the user's file kept


def test_a_resumed_job_refuses_a_user_file_before_any_work(tmp_path, capsys, monkeypatch):
    from scorers.dsir import DSIR

    out = tmp_path / "o"
    ran_ok(dsir_select(Path(POOL_GLOB), out, k=5), capsys)
    (out / "x.pq").write_text("mine")
    monkeypatch.setattr(DSIR, "fit",
                        lambda *a, **k: pytest.fail("fitted before the refusal"))
    refused_run(dsir_select(Path(POOL_GLOB), out, k=5), capsys, str(out / "x.pq"))


def test_the_api_overwrite_keeps_the_old_selection_when_refused(tmp_path):
    from dataselect import read_corpus, select
    from dataselect.errors import InputError
    from scorers.dsir import DSIR

    pool = read_corpus(POOL_GLOB)
    target = read_corpus(str(TARGETS / "fortunes.jsonl"))
    scores = DSIR(num_buckets=5000).fit(target, pool).score(pool)
    out = tmp_path / "sel"
    select.top_k(pool, scores, k=5).write(str(out), target=target)
    (out / "README.md").write_text("mine")
    before = _contents(out)
    with pytest.raises(InputError, match=r"README\.md"):
        select.top_k(pool, scores, k=9).write(str(out), target=target, overwrite=True)
    assert _contents(out) == before


def test_a_recipe_overwrite_keeps_every_task_when_one_holds_a_user_file(tmp_path, capsys):
    recipe = {"name": "keep", "pool": {"paths": [POOL_GLOB], "text": "text"},
              "targets": {"docs": {"paths": str(TARGETS / "python_docs.jsonl")},
                          "fortunes": {"paths": str(TARGETS / "fortunes.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 5000}}, "selection": {"k": 20},
              "output": {"path": str(tmp_path / "run")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    ran_ok(["run", str(path)], capsys)
    run = tmp_path / "run"
    planted = run / "tasks" / "fortunes" / "notes.txt"
    planted.write_text("mine")
    before = _contents(run)
    recipe["selection"]["k"] = 30
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    refused_run(["run", str(path), "--overwrite"], capsys, str(planted))
    assert _contents(run) == before  # neither task, nor the run's record, deleted


def test_overwrite_without_a_user_file_still_replaces(tmp_path, capsys):
    """The control: the check refuses only what the old job did not list."""
    out = tmp_path / "o"
    ran_ok(dsir_select(Path(POOL_GLOB), out, k=5), capsys)
    ran_ok(dsir_select(Path(POOL_GLOB), out, "--overwrite", k=7), capsys)
    assert sum(pq.read_metadata(part).num_rows for part in out.glob("part-*")) == 7


# --- g04: an output folder inside one of dataselect's cache folders -----------------------


@pytest.mark.parametrize("which", ["DATASELECT_CACHE", "DATASELECT_MODEL_CACHE", "both"])
@pytest.mark.parametrize("inside", ["", "sel", "sel/deeper"])
def test_an_output_in_a_cache_folder_is_refused_before_anything_is_made(
        tmp_path, capsys, monkeypatch, which, inside):
    """``--out CACHE/sel`` was taken: the cache then held a name that is not one of its
    entries, so every later model import was refused ("holds sel, which dataselect did not
    write there": it did) and the fingerprint cache went unused without a word."""
    cache = tmp_path / "cache"
    for name in ("DATASELECT_CACHE", "DATASELECT_MODEL_CACHE"):
        monkeypatch.setenv(name, str(cache if which in (name, "both") else tmp_path / name))
    out = cache / inside if inside else cache
    kept = _contents(cache) if cache.exists() else None
    line = refused_run(dsir_select(Path(POOL_GLOB), out), capsys, str(out), "cache",
                       which if which != "both" else "DATASELECT_CACHE")
    assert "lies in" in line or not inside
    assert (_contents(cache) if cache.exists() else None) == kept
    assert not out.exists() or not inside


def test_model_import_into_the_model_cache_is_refused(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "mc"
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(cache))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    refused_run(["model", "import", str(gguf), "--out", str(cache / "mymodel")], capsys,
                "DATASELECT_MODEL_CACHE", str(cache / "mymodel"))
    assert not (cache / "mymodel").exists()


def test_the_default_cache_under_home_refuses_an_output_inside_it(tmp_path, capsys,
                                                                   monkeypatch):
    for name in ("DATASELECT_CACHE", "DATASELECT_MODEL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "xdg" / "dataselect" / "models" / "sel"
    refused_run(dsir_select(Path(POOL_GLOB), out), capsys, "XDG_CACHE_HOME", "model cache")
    ran_ok(dsir_select(Path(POOL_GLOB), tmp_path / "xdg" / "elsewhere"), capsys)



# --- an empty part (a partition with no selected row) read by datasets' Parquet loader ----


def test_a_selection_with_an_empty_part_loads_with_datasets(tmp_path, capsys):
    """A part with no rows was written as one empty row group, and ``datasets`` took that
    group's 0 rows as its batch size: ``load_dataset("parquet", data_dir=OUT)`` failed on
    the whole selection. An empty part now holds no row group."""
    import datasets

    out = tmp_path / "o"
    ran_ok(dsir_select(Path(POOL_GLOB), out, k=1), capsys)
    rows = {p.name: pq.read_metadata(p).num_rows for p in out.glob("part-*.parquet")}
    assert sorted(rows.values())[0] == 0 and sum(rows.values()) == 1, rows
    for kwargs in ({"path": "parquet", "data_dir": str(out)}, {"path": str(out)}):
        loaded = datasets.load_dataset(**kwargs, split="train", cache_dir=str(tmp_path / "hf"))
        assert loaded.num_rows == 1
    assert pq.read_table(out).num_rows == 1


def test_the_report_plots_the_label_column_the_manifest_counted(tmp_path, capsys):
    """A pool labelled by ``label`` only: the manifest counted it, the report drew
    nothing (its own list of label columns lacked ``label``)."""
    from pipelines.report import write_report

    table = pq.read_table(POOL_GLOB.replace("*.parquet", "part-00000.parquet"))
    pool = tmp_path / "pool.parquet"
    pq.write_table(table.rename_columns(["label" if c == "domain" else c
                                         for c in table.column_names]), pool)
    out = tmp_path / "o"
    ran_ok(dsir_select(pool, out, k=30), capsys)
    counted = json.loads((out / ".manifest.json").read_text())["composition"]["column"]
    page = Path(write_report(str(out)))
    assert counted == "label" and (page.parent / "composition_label.png").is_file()


def test_the_report_takes_the_pools_label_counts_from_the_manifest(tmp_path, capsys,
                                                                     monkeypatch):
    """The job's scoring pass counted every label of the pool: the report no longer reads
    the whole pool again for them; the counts are the pool's exactly."""
    from collections import Counter

    from dataselect.corpus import Corpus
    from pipelines.report import write_report

    out = tmp_path / "o"
    ran_ok(dsir_select(Path(POOL_GLOB), out, k=30), capsys)
    counted = json.loads((out / ".manifest.json").read_text())["composition"]
    naive = Counter(pq.read_table(Path(POOL_GLOB).parent, columns=["domain"])
                    ["domain"].to_pylist())
    assert counted["column"] == "domain" and counted["pool"] == dict(naive)
    monkeypatch.setattr(Corpus, "iter_tables",
                        lambda *a, **k: pytest.fail("the report read the pool's rows"))
    page = Path(write_report(str(out)))
    assert (page.parent / "composition_domain.png").is_file()


# --- pass 16 g13: finite scores whose spread overflows the z-score combine ---------------


@pytest.mark.parametrize("scale", [1e300, -1e307])
def test_scores_too_large_for_a_plain_zscore_combine(tmp_path, scale):
    """Finite scores of ~1e303 (a plug-in's) passed alone, but their sum of squares was
    inf: every combined score was NaN, refused as "score is nan" naming no scorer, then
    (pass 16) refused naming the scorer. Since pass 17 the moments are taken in scaled
    units (test_fault_probe_am.py): they combine by z-score, as by rank."""
    import numpy as np
    from conftest import write_jsonl
    from fault_helpers import combined_scores
    from scoring_helpers import FixedScorer

    from dataselect import read_corpus, select

    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(60)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=400)
    big = FixedScorer({f"u{i}": scale * (i % 7 + 1) for i in range(60)}, frozenset(),
                      label="big").score(pool)
    small = FixedScorer({f"u{i}": float(i % 5) for i in range(60)}, frozenset(),
                        label="small").score(pool)
    for method in ("zscore", "rank"):
        combined = select.combine([small, big], method=method)
        assert np.all(np.isfinite(combined_scores(pool, combined)))
        assert select.top_k(pool, combined, k=5).num_selected == 5


# --- pass 16 g11: a folder input's files in formats dataselect does not read -------------


@pytest.mark.parametrize("name", ["h.jsonl.xz", "rows.CSV", "t.avro", "d.ndjson.lz4"])
def test_a_data_file_a_folder_input_cannot_read_is_refused(tmp_path, capsys, name):
    """Left out without a word, the pool was read short (150 of 450 rows, exit 0), while a
    glob over the same files refused the first."""
    import shutil

    folder = tmp_path / "mix"
    folder.mkdir()
    shutil.copy(Path(POOL_GLOB).parent / "part-00000.parquet", folder / "a.parquet")
    (folder / name).write_bytes(b"rows in a format dataselect does not read")
    refused_run(dsir_select(folder, tmp_path / "o"), capsys, str(folder / name),
                "does not read", "move it out of the folder")
    assert not (tmp_path / "o").exists()


def test_parq_and_arrows_names_are_read(tmp_path, capsys):
    """``.parq`` (fastparquet's) and ``.arrows`` (the Arrow stream's registered suffix)
    were left out of a folder and refused by a glob: they are read now."""
    import pyarrow as pa

    table = pq.read_table(Path(POOL_GLOB).parent / "part-00000.parquet")
    folder = tmp_path / "mix"
    folder.mkdir()
    pq.write_table(table.slice(0, 50), folder / "a.parq")
    with pa.ipc.new_stream(folder / "b.arrows", table.schema) as stream:
        stream.write_table(table.slice(50, 30))
    for given in (folder, folder / "*"):
        out = tmp_path / f"o{len(str(given))}"
        ran_ok(dsir_select(given, out), capsys)
        counts = json.loads((out / ".manifest.json").read_text())["counts"]
        assert counts["rows_in"] == 80


def test_other_files_a_folder_input_leaves_out_are_named_once(tmp_path, capsys):
    import shutil

    folder = tmp_path / "mix"
    (folder / "docs").mkdir(parents=True)
    shutil.copy(Path(POOL_GLOB).parent / "part-00000.parquet", folder / "a.parquet")
    (folder / "README.md").write_text("# my pool\n")
    (folder / "docs" / "LICENSE").write_text("MIT\n")
    code = main(dsir_select(folder, tmp_path / "o"))
    notes = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert code == 0 and len(notes) == 1 and "2 file(s)" in notes[0], notes
    assert "README.md" in notes[0] and "docs/LICENSE" in notes[0]
    rows = json.loads((tmp_path / "o" / ".manifest.json").read_text())["counts"]["rows_in"]
    assert rows == pq.read_metadata(folder / "a.parquet").num_rows
