"""Hostile pass 16 (g07, g08, g09, g14, j10): attribution outputs and a recipe's folder.

- g07: an attribution rows FILE (``attribute -k N``, ``index search``) inside a cache folder
  was written there (the model cache then refused every later use, the fingerprint cache
  was silently unused); folder outputs were refused.
- g08: ``-k N`` with N at least the pool's rows wrote the DENSE folder at the name given
  for the Parquet file (``a.parquet`` a folder, unreadable by pandas), exit 0; a recipe's
  ``attribution: {k: 10}`` for a task that chose fewer rows did the same.
- g09: with ``-k all`` the folder was checked only when claimed, after every score was
  computed (hours on a real model); refusals of outputs also came after the model loaded.
- g14: a refused recipe ``output.path`` said "choose another --out" (no --out was given).
- j10: ``--out L.parquet``, a link to an attributions file elsewhere, was replaced by a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TARGETS, install_distribution, write_jsonl
from fault_helpers import ran_ok, refused_run

from attribution import ATTRIBUTIONS
from dataselect.errors import InputError, OutputConflictError
from dataselect.outdir import check_output_file
from pipelines.cli import main

# an attribution plug-in with no model: the words a training row shares with the query;
# each call of attribute() is recorded in the file $AK_CALLS names, to see work was done
PLUGIN = '''
import os
from dataclasses import dataclass

import numpy as np

from attribution.base import Attributor, one_table
from attribution.scores import ScoreMatrix


@dataclass
class WordSettings:
    scale: float = 1.0


class Words(Attributor):
    name = "words"
    settings_class = WordSettings

    def attribute(self, train, queries):
        with open(os.environ["AK_CALLS"], "a") as calls:
            calls.write("attribute\\n")
        query = one_table(queries)
        matrix = np.array([[len(set(t.split()) & set(q.split()))
                            for q in query["text"].to_pylist()]
                           for t in train["text"].to_pylist()], dtype=np.float32)
        return ScoreMatrix(matrix, train["id"].to_pylist(), query["id"].to_pylist())
'''

POOL = {"a": "red apple", "b": "green apple pie", "c": "blue sky"}
QUERIES = {"q1": "apple pie", "q2": "sky"}


@pytest.fixture
def words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The plug-in installed; the file its calls are recorded in."""
    (tmp_path / "dist").mkdir()
    install_distribution(tmp_path / "dist", monkeypatch, "ak_words", PLUGIN,
                         "[dataselect.attribution]\nwords = ak_words:Words\n")
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("AK_CALLS", str(calls))
    ATTRIBUTIONS.refresh()
    yield calls
    ATTRIBUTIONS.refresh()


def _rows(path: Path, rows: dict[str, str]) -> Path:
    return write_jsonl(path, [{"id": i, "text": t} for i, t in rows.items()])


def _attribute(tmp_path: Path, out: Path | str, k: str) -> list[str]:
    pool = _rows(tmp_path / "pool.jsonl", POOL)
    queries = _rows(tmp_path / "queries.jsonl", QUERIES)
    return ["attribute", "--method", "words", "--pool", str(pool), "--queries",
            str(queries), "-k", k, "--out", str(out)]


# --- g07: an attribution file inside a cache folder ------------------------------------

@pytest.mark.parametrize("cache", ["DATASELECT_CACHE", "DATASELECT_MODEL_CACHE"])
def test_attribution_file_in_a_cache_is_refused_before_any_work(
        words, tmp_path, monkeypatch, capsys, cache):
    root = tmp_path / "the_cache"
    monkeypatch.setenv(cache, str(root))
    out = root / "a.parquet"
    refused_run(_attribute(tmp_path, out, "2"), capsys, str(out), "cache",
                "choose another --out")
    assert not out.exists() and not words.exists()


def test_check_output_file_refuses_either_cache(tmp_path, monkeypatch):
    """Every single-file writer goes through check_output_file (attribute, index search,
    a recipe's attribution/<task>.parquet)."""
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "fc"))
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(tmp_path / "mc"))
    for cache, which in (("fc", "fingerprint"), ("mc", "model")):
        (tmp_path / cache / "deep").mkdir(parents=True)
        for name in ("s.parquet", "deep/s.parquet"):
            with pytest.raises(OutputConflictError, match=f"dataselect's {which} cache"):
                check_output_file(tmp_path / cache / name, "attributions")
    assert check_output_file(tmp_path / "s.parquet", "attributions")  # outside: fine


def test_index_search_file_in_the_cache_is_refused_before_the_index_is_read(
        tmp_path, monkeypatch, capsys):
    """No index or query store is needed to see it: the output is checked first."""
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "fc"))
    (tmp_path / "fc").mkdir()
    out = tmp_path / "fc" / "s.parquet"
    refused_run(["index", "search", "--index", str(tmp_path / "idx"), "--queries",
                 str(tmp_path / "qf"), "-k", "3", "--out", str(out)], capsys,
                "fingerprint cache", "choose another --out")
    assert not out.exists()


# --- j10: a link as --out file ----------------------------------------------------------

def test_attribution_file_out_through_a_link_is_refused(words, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "a.parquet"
    ran_ok(_attribute(tmp_path, target, "1"), capsys)  # dataselect's own file
    before = target.read_bytes()
    link = tmp_path / "L.parquet"
    link.symlink_to(target)
    refused_run(_attribute(tmp_path, link, "2"), capsys, str(link), "symbolic link",
                "remove the link")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == before
    dangling = tmp_path / "D.parquet"
    dangling.symlink_to(tmp_path / "nowhere.parquet")
    refused_run(_attribute(tmp_path, dangling, "2"), capsys, "symbolic link")
    assert not (tmp_path / "nowhere.parquet").exists()


# --- g08: k at least the pool's rows ----------------------------------------------------

@pytest.mark.parametrize("k", ["3", "10"])
def test_k_at_least_the_pool_gives_parquet_rows_not_the_dense_folder(
        words, tmp_path, capsys, k):
    out = tmp_path / "a.parquet"
    assert main(_attribute(tmp_path, out, k)) == 0
    err = capsys.readouterr().err
    assert out.is_file()
    rows = pq.read_table(out).to_pylist()
    assert [(r["query_id"], r["rank"]) for r in rows] == [
        (q, rank) for q in QUERIES for rank in (1, 2, 3)]  # every pool row per query
    assert rows[0]["train_id"] == "b" and rows[3]["train_id"] == "c"
    assert ("-k 10 is more than the 3 training rows" in err) == (k == "10")


def test_k_all_still_writes_the_dense_folder(words, tmp_path, capsys):
    from attribution.output import read_attribution_matrix

    ran_ok(_attribute(tmp_path, tmp_path / "dense", "all"), capsys)
    matrix, train_ids, query_ids = read_attribution_matrix(tmp_path / "dense")
    assert (train_ids, query_ids, matrix.shape) == (list(POOL), list(QUERIES), (3, 2))


def _recipe(tmp_path: Path, attribution: dict, out: str | None = "out") -> Path:
    recipe = {
        "pool": {"paths": str(_rows(tmp_path / "rpool.jsonl", {
            **POOL, "d": "apple sky pie", "e": "nothing here", "f": "a pie in the sky"}))},
        "targets": {"nature": {"paths": str(_rows(tmp_path / "t.jsonl", {"t1": "sky blue"})),
                               "eval": str(_rows(tmp_path / "ev.jsonl", QUERIES))}},
        "scorers": {"dsir": {"num_buckets": 1000}},
        "selection": {"policy": "top_k", "k": 4},
        "output": {"path": str(tmp_path / out) if out else None},
        "cluster": {"workers": 1},
        "attribution": attribution,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_attribution_k_above_the_selected_rows_is_a_parquet_file(
        words, tmp_path, capsys):
    path = _recipe(tmp_path, {"method": "words", "k": 10})
    assert main(["run", str(path)]) == 0
    err = capsys.readouterr().err
    assert "attribution.k 10 is more than the 4 training rows" in err
    written = tmp_path / "out" / "attribution" / "nature.parquet"
    assert written.is_file()
    rows = pq.read_table(written).to_pylist()
    assert len(rows) == 2 * 4 and {r["query_id"] for r in rows} == set(QUERIES)
    run = json.loads((tmp_path / "out" / ".run.json").read_text())
    assert run["attribution"]["nature"]["dense"] is False
    # a user's file at that name is refused when the rerun starts, before any work
    written.unlink()
    written.write_text("mine")
    words.unlink()
    refused_run(["run", str(path)], capsys, str(written), "choose another output.path")
    assert written.read_text() == "mine" and not words.exists()


# --- g09: -k all checked before any work -------------------------------------------------

def test_k_all_into_a_user_folder_is_refused_before_any_work(words, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("x")
    refused_run(_attribute(tmp_path, mine, "all"), capsys, str(mine), "is not empty",
                "choose another --out")
    assert not words.exists()  # the method never ran
    assert sorted(p.name for p in mine.iterdir()) == ["x.txt"]


def test_k_all_in_a_cache_is_refused_before_any_work(words, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "fc"))
    refused_run(_attribute(tmp_path, tmp_path / "fc" / "dd", "all"), capsys,
                "fingerprint cache")
    assert not words.exists() and not (tmp_path / "fc" / "dd").exists()


@pytest.mark.parametrize("k", ["3", "all"])
def test_output_refused_before_the_models_folder_is_checked(tmp_path, capsys, k):
    """tracin's model folder is checked (seconds of imports) when the method is built;
    the output is checked before: here the model is no model, and the line is the
    output's."""
    pool = _rows(tmp_path / "pool.jsonl", POOL)
    queries = _rows(tmp_path / "queries.jsonl", QUERIES)
    (tmp_path / "nomodel").mkdir()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "x.txt").write_text("x")
    refused_run(["attribute", "--method", "tracin", "-p", f"model={tmp_path / 'nomodel'}",
                 "--pool", str(pool), "--queries", str(queries), "-k", k, "--out",
                 str(out)], capsys, str(out))


@pytest.mark.parametrize("command", ["less", "features"])
def test_scorer_commands_check_out_before_building_the_scorer(
        tmp_path, monkeypatch, capsys, command):
    """``attribute --method less`` and ``features`` build their scorer (loading its model)
    only after --out is checked."""
    import pipelines.commands

    def no_model(*_: object) -> None:
        raise AssertionError("the scorer was built before --out was checked")

    monkeypatch.setattr(pipelines.commands, "_featurizer", no_model)
    queries = _rows(tmp_path / "queries.jsonl", QUERIES)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("x")
    if command == "less":
        argv = ["attribute", "--method", "less", "--scorer", "embed", "--index",
                str(tmp_path / "idx"), "--queries", str(queries), "-k", "all"]
    else:
        argv = ["features", "--scorer", "embed", "--input", str(queries)]
    refused_run([*argv, "--out", str(mine)], capsys, str(mine), "is not empty")


# --- g14: a recipe's output.path is named as such ----------------------------------------

def _dsir_recipe(tmp_path: Path, out: Path) -> Path:
    pool = write_jsonl(tmp_path / "p.jsonl",
                       [{"id": f"r{i}", "text": f"row number {i} of text"} for i in range(30)])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "pool": {"paths": [str(pool)]},
        "targets": {"fortunes": {"paths": str(TARGETS / "fortunes.jsonl")}},
        "scorers": {"dsir": {"num_buckets": 1000}},
        "selection": {"k": 5},
        "output": {"path": str(out)},
        "cluster": {"workers": 1},
    }))
    return path


def test_recipe_output_path_refusal_names_output_path_and_the_recipe(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("x")
    path = _dsir_recipe(tmp_path, mine)
    line = refused_run(["run", str(path)], capsys, str(mine), "is not empty",
                       f"choose another output.path ({path})")
    assert "--out" not in line
    # given with --out, the flag is what is named
    line = refused_run(["run", str(path), "--out", str(mine)], capsys,
                       "choose another --out")
    assert "output.path" not in line


def test_recipe_output_path_in_the_cache_names_output_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "fc"))
    out = tmp_path / "fc" / "out"
    path = _dsir_recipe(tmp_path, out)
    line = refused_run(["run", str(path)], capsys, "fingerprint cache",
                       "choose another output.path")
    assert "--out" not in line and not out.exists()


def test_naming_setting_takes_a_field(tmp_path):
    from dataselect.outdir import naming_setting, normalize

    with naming_setting("output.path (r.yaml)", "output.path"), \
            pytest.raises(InputError) as caught:
        normalize("")
    assert caught.value.field == "output.path"
