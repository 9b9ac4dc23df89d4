"""Probe round K (issue 28): the seventh probe's failures, as classes.

Field names repeated inside a struct at any depth, decimal columns unified with float
columns, plug-in scorer classes left abstract, ``combine`` weights that overflow or
underflow, percent-escaped ``file:`` URLs, and a ``save_to_disk`` folder whose
``state.json`` names a split or columns it does not hold: each is one line naming the
file, the field or the setting, exit status 2, before any work; never a traceback or a
changed value."""

from __future__ import annotations

import decimal
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, TARGETS, install_distribution, write_jsonl
from fault_helpers import private_fingerprint_cache, refused, select_errors  # noqa: F401
from scoring_helpers import FixedScorer

from dataselect import read_corpus, select, storage
from dataselect.errors import InputError
from pipelines.cli import main
from pipelines.recipe import load_recipe
from scorers import SCORERS

POOL = DATA / "pool" / "part-00000.parquet"


def _pool_rows(n: int = 60) -> pa.Table:
    return pq.read_table(POOL).slice(0, n)


# ------------------------------------------- field names repeated inside a struct (g02)

def _twice(name: str, n: int) -> pa.StructArray:
    """A struct column of ``n`` rows with two fields called ``name``."""
    return pa.StructArray.from_arrays(
        [pa.array(range(n)), pa.array([str(i) for i in range(n)])], names=[name, name])


def _offsets(n: int) -> pa.Array:
    return pa.array(range(n + 1), pa.int32())


@pytest.mark.parametrize(("make", "field"), [
    (lambda n: _twice("a", n), "m.a"),
    (lambda n: pa.ListArray.from_arrays(_offsets(n), _twice("b", n)), "m[].b"),
    (lambda n: pa.MapArray.from_arrays(_offsets(n), pa.array([str(i) for i in range(n)]),
                                       _twice("c", n)), "m[].value.c"),
    (lambda n: pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(_offsets(n), _twice("d", n))], names=["o"]), "m.o[].d"),
], ids=["struct", "list", "map", "deeper"])
def test_a_field_name_repeated_inside_a_struct_is_refused(tmp_path, capsys, make, field):
    table = _pool_rows()
    pq.write_table(table.append_column("m", make(table.num_rows)), tmp_path / "dup.parquet")
    code, errors = select_errors([tmp_path / "dup.parquet"], tmp_path / "out", capsys)
    refused(code, errors, "dup.parquet", repr(field), "two fields of this name")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("part-*"))


def test_a_target_with_a_repeated_nested_field_name_is_refused(tmp_path, capsys):
    target = pa.Table.from_pylist(
        [{"id": f"t{i}", "text": f"def f{i}(x): return x"} for i in range(20)])
    pq.write_table(target.append_column("m", _twice("a", 20)), tmp_path / "t.parquet")
    pq.write_table(_pool_rows(), tmp_path / "pool.parquet")
    code, errors = select_errors([tmp_path / "pool.parquet"], tmp_path / "out", capsys,
                                 target=tmp_path / "t.parquet")
    refused(code, errors, "t.parquet", "'m.a'")


# ------------------------------------------------- decimal columns against floats (g03)

def _two_files(tmp_path: Path, first: pa.Array, second: pa.Array) -> Path:
    """A pool folder of two files whose column ``n`` holds ``first`` and ``second``."""
    folder = tmp_path / "pool"
    folder.mkdir()
    table = _pool_rows(2 * len(first))
    pq.write_table(table.slice(0, len(first)).append_column("n", first), folder / "a.parquet")
    pq.write_table(table.slice(len(first)).append_column("n", second), folder / "b.parquet")
    return folder


@pytest.mark.parametrize(("decimals", "floats"), [
    (pa.array([decimal.Decimal(2**60 + 1)] * 30, pa.decimal128(38, 0)),
     pa.array([0.5] * 30)),
    (pa.array([decimal.Decimal("0.1")] * 30, pa.decimal128(5, 1)),
     pa.array([0.5] * 30, pa.float32())),
    (pa.array([[decimal.Decimal("0.5")]] * 30, pa.list_(pa.decimal256(40, 2))),
     pa.array([[0.5]] * 30)),
], ids=["beyond-2**53", "a-tenth", "nested"])
def test_a_decimal_column_against_a_float_column_is_refused_naming_both_files(
        tmp_path, capsys, decimals, floats):
    folder = _two_files(tmp_path, floats, decimals)
    code, errors = select_errors([folder], tmp_path / "out", capsys, "--k", "60")
    refused(code, errors, "b.parquet", "a.parquet", "'n'", "decimal")


def test_a_decimal_column_whose_type_proves_it_exact_joins_a_float_column(
        tmp_path, capsys):
    whole = [decimal.Decimal(10**15 - 1 - i) for i in range(30)]
    folder = _two_files(tmp_path, pa.array(whole, pa.decimal128(15, 0)),
                        pa.array([0.5] * 30))
    code, errors = select_errors([folder], tmp_path / "out", capsys, "--k", "60")
    assert code == 0, errors
    values = pq.read_table(tmp_path / "out")["n"].to_pylist()
    assert sorted(v for v in values if v != 0.5) == sorted(float(d) for d in whole)
    assert all(decimal.Decimal(float(d)) == d for d in whole)


# ------------------------------------------ a plug-in scorer left abstract (g04)

ABSTRACT_PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from dataselect.scoring import Scorer


@dataclass
class Half(Scorer):
    """Defines fit only: config() and perhaps score_batch() are left abstract."""

    name: ClassVar[str] = "half"

    def fit(self, target, pool=None, runner=None):
        return self
{extra}
'''
SCORE_BATCH = '''
    def score_batch(self, batch):
        return pa.table({"id": batch["id"], "score": pa.array([1.0] * batch.num_rows)})
'''


@pytest.fixture
def fresh_scorers():
    SCORERS.refresh()
    yield SCORERS
    SCORERS.refresh()


@pytest.mark.parametrize(("extra", "missing"), [
    (SCORE_BATCH, "config()"), ("", "config(), score_batch()")], ids=["one", "two"])
def test_a_plugin_scorer_left_abstract_is_one_line_naming_it_and_the_methods(
        tmp_path, monkeypatch, capsys, fresh_scorers, extra, missing):
    (tmp_path / "site").mkdir()
    install_distribution(tmp_path / "site", monkeypatch, "half_scorer",
                         ABSTRACT_PLUGIN.format(extra=extra),
                         "[dataselect.scorers]\nhalf = half_scorer:Half\n")
    fresh_scorers.refresh()
    pq.write_table(_pool_rows(), tmp_path / "pool.parquet")
    code = main(["select", "--scorer", "half", "--pool", str(tmp_path / "pool.parquet"),
                 "--target", str(TARGETS / "fortunes.jsonl"), "--out", str(tmp_path / "out"),
                 "--k", "5", "--workers", "1", "--worker-kind", "threads"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    refused(code, "\n".join(line for line in err.splitlines() if "error" in line),
            "'half'", "half_scorer:Half", missing)
    with pytest.raises(InputError, match=re.escape(missing)):
        fresh_scorers["half"]


# ------------------------------------------- combine weights that under- or overflow (g05)

@pytest.fixture
def two_score_sets(tmp_path):
    """Two fixed score sets of one 40-row pool (a normal and a few-valued one)."""
    records = [{"id": f"r{i}", "text": "t"} for i in range(40)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", records)), partition_bytes=300)
    rng = np.random.default_rng(1)
    ids = [r["id"] for r in records]
    return pool, [FixedScorer(dict(zip(ids, values)), label=label).score(pool)
                  for label, values in (("a", rng.normal(size=40)),
                                        ("b", rng.integers(0, 5, size=40).astype(float)))]


def _combined_scores(pool, scores, weights, method="zscore"):
    combined = select.combine(scores, method=method, weights=weights)
    return np.concatenate([combined.partition(i)["score"].to_numpy()
                           for i in range(pool.npartitions)])


@pytest.mark.parametrize("method", ["zscore", "rank"])
@pytest.mark.parametrize(("tiny", "plain"), [
    ([5e-324, 0], [1, 0]), ([math.ldexp(2, -1070), math.ldexp(1, -1070)], [2, 1]),
    ([math.ldexp(3, -1030), math.ldexp(1, -1030)], [3, 1])])
def test_tiny_weights_give_the_scores_of_their_ratio(two_score_sets, method, tiny, plain):
    pool, scores = two_score_sets
    np.testing.assert_array_equal(_combined_scores(pool, scores, tiny, method),
                                  _combined_scores(pool, scores, plain, method))


@pytest.mark.parametrize("weights", [[1e308, 1e308], [1e308, 1.0], [1.0, 1e-320],
                                     [1.7e308, 1.7e308, 0.0]])
def test_weights_that_overflow_or_underflow_are_refused_before_any_work(
        two_score_sets, weights):
    _, scores = two_score_sets
    scores = (scores * 2)[:len(weights)]

    def no_work(*args, **kwargs):
        pytest.fail("scores were read before the weights were checked")

    with pytest.raises(InputError, match="'weights'"):
        select.combine(scores, weights=weights, runner=no_work)


@pytest.mark.parametrize("weights", [{"dsir": 1e308, "zipfit": 1e308},
                                     {"dsir": 1.0, "zipfit": 1e-320}])
def test_recipe_combine_weights_that_overflow_or_underflow_are_refused_on_load(
        tmp_path, weights):
    recipe = {"name": "w", "pool": {"paths": [str(POOL)]},
              "targets": {"code": {"paths": str(TARGETS / "python_docs.jsonl")}},
              "scorers": {"dsir": {}, "zipfit": {}}, "combine": {"weights": weights},
              "selection": {"k": 10}, "output": {"path": str(tmp_path / "out")}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with pytest.raises(InputError, match=r"combine\.weights"):
        load_recipe(str(path))


# ------------------------------------------------ percent escapes in file: URLs (g08)

@pytest.mark.parametrize(("url", "path"), [
    ("file:///w/pc%41.parquet", "/w/pcA.parquet"),
    ("file://localhost/w/sp%20ace/x.jsonl", "/w/sp ace/x.jsonl"),
    ("file:/w/%C3%A9t%C3%A9", "/w/été"),
    ("FILE:///w/100%25", "/w/100%"),
    ("file:///w/pc%41%", "/w/pcA%"),
])
def test_a_file_url_names_the_path_its_percent_escapes_decode_to(url, path):
    assert storage.local_form(url) == path


@pytest.mark.parametrize("url", ["file:///w/a%2Fb", "file:///w/a%2fb", "file:///w/a%00b"])
def test_a_file_url_escaping_a_slash_or_a_nul_is_refused(url):
    with pytest.raises(InputError, match="file: URL"):
        storage.local_form(url)


def test_select_and_report_read_the_files_percent_escaped_urls_name(tmp_path, capsys):
    """The pool, the target, the output and report's folder, each a file: URL with
    escapes: the literal ``pc%41.parquet`` beside ``pcA.parquet`` is not the one read."""
    rows = _pool_rows(90)
    pq.write_table(rows.slice(0, 60), tmp_path / "pc%41.parquet")
    pq.write_table(rows.slice(60), tmp_path / "pcA.parquet")
    folder = tmp_path / "sp ace"
    folder.mkdir()
    (folder / "t arget.jsonl").write_bytes((TARGETS / "fortunes.jsonl").read_bytes())
    url = f"file://{tmp_path}"
    code = main(["select", "--scorer", "dsir", "--pool", f"{url}/pc%41.parquet",
                 "--target", f"{url}/sp%20ace/t%20arget.jsonl", "--out",
                 f"{url}/sp%20ace/o%20ut", "--k", "40", "--workers", "1",
                 "--worker-kind", "threads"])
    assert code == 0, capsys.readouterr().err
    written = pq.read_table(folder / "o ut")
    assert written.num_rows == 30
    assert set(written["id"].to_pylist()) == set(rows.slice(60)["id"].to_pylist())
    assert main(["report", f"{url}/sp%20ace/o%20ut"]) == 0, capsys.readouterr().err
    assert (folder / "o ut" / ".report" / "index.html").exists()


def test_a_recipe_reads_and_writes_the_paths_its_escaped_urls_name(tmp_path, capsys):
    folder = tmp_path / "sp ace"
    folder.mkdir()
    pq.write_table(_pool_rows(90), folder / "p ool.parquet")
    url = f"file://{tmp_path}/sp%20ace"
    target = f"file://{TARGETS}/python_docs.jsonl"
    recipe = {"name": "u", "pool": {"paths": [f"{url}/p%20ool.parquet"]},
              "targets": {"code": {"paths": target}}, "scorers": {"dsir": {}},
              "selection": {"k": 10}, "output": {"path": f"{url}/r%20out"},
              "cluster": {"workers": 1}}
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["run", f"{url}/r.yaml"]) == 0, capsys.readouterr().err
    assert pq.read_table(folder / "r out" / "union").num_rows == 10


# --------------------------------- a save_to_disk pool with edited metadata files (g13)

@pytest.fixture
def hf_pool(tmp_path) -> Path:
    import datasets

    folder = tmp_path / "hfp"
    datasets.Dataset(_pool_rows()).save_to_disk(str(folder))
    return folder


def _edit_json(path: Path, edit) -> None:
    found = json.loads(path.read_text(encoding="utf-8"))
    edit(found)
    path.write_text(json.dumps(found), encoding="utf-8")


@pytest.mark.parametrize(("edit", "field"), [
    (lambda s: s.update(_split="../../etc"), "_split"),
    (lambda s: s.update(_split=5), "_split"),
    (lambda s: s.update(_format_columns=["nope"]), "_format_columns"),
    (lambda s: s.update(_format_type="nope"), "_format_type"),
    (lambda s: s.update(_format_kwargs=5), "_format_kwargs"),
    (lambda s: s.pop("_fingerprint"), "_fingerprint"),
], ids=["split-path", "split-int", "columns", "type", "kwargs", "no-fingerprint"])
def test_a_state_json_datasets_cannot_load_is_one_line_naming_it_and_the_key(
        hf_pool, tmp_path, capsys, edit, field):
    _edit_json(hf_pool / "state.json", edit)
    code, errors = select_errors([hf_pool], tmp_path / "out", capsys)
    refused(code, errors, "state.json", repr(field))


@pytest.mark.parametrize("edit", [
    lambda i: i.update(features=5), lambda i: i.update(splits=5),
    lambda i: i.update(features={"id": {"dtype": "int64", "_type": "Value"}})],
    ids=["features-int", "splits-int", "other-columns"])
def test_a_dataset_info_json_datasets_cannot_load_is_one_line_naming_it(
        hf_pool, tmp_path, capsys, edit):
    _edit_json(hf_pool / "dataset_info.json", edit)
    code, errors = select_errors([hf_pool], tmp_path / "out", capsys)
    refused(code, errors, "dataset_info.json")


def test_a_state_json_datasets_loads_reads_the_same_rows(hf_pool, tmp_path, capsys):
    """A split name, a fingerprint and an output format change no row: every column is
    read as Arrow, as before."""
    pq.write_table(_pool_rows(), tmp_path / "pool.parquet")
    code, errors = select_errors([tmp_path / "pool.parquet"], tmp_path / "plain", capsys)
    assert code == 0, errors
    _edit_json(hf_pool / "state.json", lambda s: s.update(
        _split="train", _format_type="numpy", _format_columns=["text"]))
    code, errors = select_errors([hf_pool], tmp_path / "out", capsys)
    assert code == 0, errors
    keep = ["id", "text", "domain", "score"]
    assert pq.read_table(tmp_path / "out").select(keep).equals(
        pq.read_table(tmp_path / "plain").select(keep))
