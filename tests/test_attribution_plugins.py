"""An attribution method from outside this repository: one module plus one entry point in
the ``dataselect.attribution`` group, and it runs from ``dataselect attribute --method``
and from a recipe's ``attribution:`` section, its settings checked by the same code as the
built-in methods'. The built-ins are one registry too, listed alike in pyproject.toml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, install_distribution

from attribution import ATTRIBUTIONS, BUILTIN
from attribution.output import read_attribution_matrix
from dataselect.errors import InputError
from pipelines.cli import main

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from attribution.base import Attributor, one_table
from attribution.scores import ScoreMatrix
from dataselect.checks import check_positive


@dataclass
class OverlapSettings:
    scale: float = 1.0

    def __post_init__(self):
        check_positive(self.scale, "scale")


def words(text):
    return set(text.lower().split())


class Overlap(Attributor):
    """Influence = scale x the number of words a training row shares with the query."""

    name = "overlap"
    settings_class = OverlapSettings

    def attribute(self, train, queries):
        query = one_table(queries)
        matrix = np.array([[self.settings.scale * len(words(t) & words(q))
                            for q in query["text"].to_pylist()]
                           for t in train["text"].to_pylist()], dtype=np.float32)
        return ScoreMatrix(matrix, train["id"].to_pylist(), query["id"].to_pylist())
'''

POOL = {"a": "red apple", "b": "green apple pie", "c": "blue sky", "d": "apple sky pie",
        "e": "nothing here", "f": "a pie in the sky"}
QUERIES = {"q1": "apple pie", "q2": "sky"}


def overlap(train: str, query: str) -> int:
    return len(set(train.split()) & set(query.split()))


@pytest.fixture(autouse=True)
def _fresh_registry():
    ATTRIBUTIONS.refresh()
    yield
    ATTRIBUTIONS.refresh()


def install_method(root: Path, monkeypatch: pytest.MonkeyPatch,
                   target: str = "plug_attribution:Overlap", name: str = "overlap") -> None:
    install_distribution(root, monkeypatch, "plug_attribution", PLUGIN,
                         f"[dataselect.attribution]\n{name} = {target}\n")
    ATTRIBUTIONS.refresh()


def write_rows(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows.items()))
    return path


def _attribute(tmp_path: Path, *extra: str) -> int:
    pool = write_rows(tmp_path / "pool.jsonl", dict(list(POOL.items())[:3]))
    queries = write_rows(tmp_path / "queries.jsonl", QUERIES)
    return main(["attribute", "--method", "overlap", "--pool", str(pool), "--queries",
                 str(queries), *extra])


def test_the_builtin_methods_are_listed_without_importing_any():
    assert list(ATTRIBUTIONS) == ["less", "trak", "tracin", "bif"]
    assert ATTRIBUTIONS._classes == {}


def test_the_builtins_are_registered_alike_in_pyproject_and_in_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["dataselect.attribution"] == BUILTIN


def test_a_plugin_method_attributes_from_the_command_line(tmp_path, monkeypatch):
    install_method(tmp_path, monkeypatch)
    assert list(ATTRIBUTIONS) == ["less", "trak", "tracin", "bif", "overlap"]
    assert _attribute(tmp_path, "-p", "scale=2", "-k", "2", "--out",
                      str(tmp_path / "top.parquet")) == 0
    rows = pq.read_table(tmp_path / "top.parquet").to_pylist()
    assert rows == [  # q2's tie at 0 goes to the lower row, a
        {"query_id": "q1", "rank": 1, "train_id": "b", "score": 4.0},
        {"query_id": "q1", "rank": 2, "train_id": "a", "score": 2.0},
        {"query_id": "q2", "rank": 1, "train_id": "c", "score": 2.0},
        {"query_id": "q2", "rank": 2, "train_id": "a", "score": 0.0},
    ]
    assert _attribute(tmp_path, "-p", "scale=2", "-k", "all", "--out",
                      str(tmp_path / "dense")) == 0
    matrix, train_ids, query_ids = read_attribution_matrix(tmp_path / "dense")
    assert (train_ids, query_ids) == (["a", "b", "c"], ["q1", "q2"])
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, [[2, 0], [4, 0], [0, 2]])


@pytest.mark.parametrize(("bad", "error"), [
    ("scales=2", "field 'scales': overlap has no parameter 'scales'; known: ['scale']"),
    ("scale=nan", "field 'scale'"),
    ("scale=-1", "field 'scale': must be a finite number > 0, got -1.0"),
    ("draws=5", "field 'draws': overlap has no parameter 'draws'"),
])
def test_a_plugin_methods_settings_are_checked_like_the_builtins(bad, error, tmp_path,
                                                                  monkeypatch, capsys):
    install_method(tmp_path, monkeypatch)
    assert _attribute(tmp_path, "-p", bad, "--out", str(tmp_path / "o.parquet")) == 2
    assert error in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "o.parquet").exists()


def test_the_builtins_still_take_each_others_keys_and_refuse_unknown_ones(tmp_path,
                                                                          capsys):
    """Before each built-in model-based method had its own settings they shared one set:
    ``-p draws=`` with trak is checked (by BIF's settings) and runs; an unknown key is
    refused naming every shared key."""
    pool = write_rows(tmp_path / "pool.jsonl", POOL)
    common = ["attribute", "--pool", str(pool), "--queries", str(pool), "-p", "model=nowhere",
              "--out", str(tmp_path / "o.parquet")]
    assert main([*common, "--method", "trak", "-p", "draws=1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "field 'draws': must be an integer >= 2, got 1")
    assert main([*common, "--method", "tracin", "-p", "ridge=-1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "field 'ridge': ridge must be >= 0, got -1.0")
    assert main([*common, "--method", "bif", "-p", "nope=1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "field 'nope': bif has no parameter 'nope'; known: ['batch_size', 'beta', 'burn_in', "
        "'checkpoints', 'device', 'draws', 'kernel', 'localization', 'max_length', 'model', "
        "'proj_dim', 'projection', 'ridge', 'seed', 'step_size', 'thin']")
    assert main([*common, "--method", "trak", "-p", "draws=5"]) == 2  # accepted: the model
    assert "nowhere" in capsys.readouterr().err  # folder is what is refused


def _recipe(tmp_path: Path, attribution: dict) -> Path:
    targets = {"nature": write_rows(tmp_path / "target.jsonl", {"t1": "sky blue sky"})}
    recipe = {
        "pool": {"paths": str(write_rows(tmp_path / "pool.jsonl", POOL))},
        "targets": {task: {"paths": str(path),
                           "eval": str(write_rows(tmp_path / "eval.jsonl", QUERIES))}
                    for task, path in targets.items()},
        "scorers": {"dsir": {"num_buckets": 1000}},
        "selection": {"policy": "top_k", "k": 4},
        "output": {"path": str(tmp_path / "out")},
        "cluster": {"workers": 1},
        "attribution": attribution,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_a_plugin_method_attributes_in_a_recipe(tmp_path, monkeypatch):
    """No ``model:`` (the method has no model setting); the recipe's seed is not given to
    it either; ``k: all`` writes every score of the task's selected rows."""
    install_method(tmp_path, monkeypatch)
    path = _recipe(tmp_path, {"method": "overlap", "k": "all", "params": {"scale": 0.5}})
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    selected = [i for f in sorted((out / "tasks" / "nature").glob("part-*.parquet"))
                for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
    assert len(selected) == 4
    matrix, train_ids, query_ids = read_attribution_matrix(out / "attribution" / "nature")
    assert (train_ids, query_ids) == (selected, ["q1", "q2"])
    np.testing.assert_array_equal(matrix, [[0.5 * overlap(POOL[t], QUERIES[q])
                                            for q in query_ids] for t in train_ids])
    run = json.loads((out / ".run.json").read_text())
    assert run["attribution"]["nature"]["path"] == "attribution/nature"


@pytest.mark.parametrize(("attribution", "error"), [
    ({"method": "overlap", "params": {"scale": -1}},
     "field 'attribution.params.scale': must be a finite number > 0, got -1"),
    ({"method": "overlap", "params": {"scales": 1}},
     "field 'attribution.params.scales': unknown key (got 1)"),
    ({"method": "less", "model": "m"},
     "field 'attribution.method': Input should be 'trak', 'tracin', 'bif' or 'overlap' "
     "(got 'less')"),
    ({"method": "trak"}, "field 'attribution.model': Field required"),
])
def test_a_recipes_attribution_is_checked_against_the_registry(attribution, error, tmp_path,
                                                               monkeypatch):
    from pipelines.recipe import RecipeError, load_recipe

    install_method(tmp_path, monkeypatch)
    with pytest.raises(RecipeError) as caught:
        load_recipe(_recipe(tmp_path, attribution))
    assert error in str(caught.value)


def test_a_broken_registration_is_one_clear_error(tmp_path, monkeypatch, capsys):
    install_method(tmp_path, monkeypatch, target="plug_attribution:Missing")
    assert _attribute(tmp_path, "--out", str(tmp_path / "o.parquet")) == 2
    assert "attribution method 'overlap' is registered as 'plug_attribution:Missing', " \
           "which cannot be imported" in capsys.readouterr().err


def test_a_plugin_registering_a_builtin_name_is_refused_when_that_name_is_used(
        tmp_path, monkeypatch):
    """The built-in ran and the plug-in was dropped without a word (pass 20, g05)."""
    install_method(tmp_path, monkeypatch, name="trak")
    with pytest.raises(InputError, match=r"'trak' is a built-in .* registers that name too"):
        ATTRIBUTIONS["trak"]
    assert ATTRIBUTIONS["tracin"].__module__ == "attribution.tracin"


RAISING = PLUGIN.replace("        query = one_table(queries)\n",
                         "        raise RuntimeError('the method broke')\n")
RAISING_SETTINGS = PLUGIN.replace('        check_positive(self.scale, "scale")\n',
                                  "        raise KeyError('no such thing')\n")


@pytest.mark.parametrize(("source", "expected"), [
    (RAISING, "raised RuntimeError in attribute: the method broke"),
    (RAISING_SETTINGS, "raised KeyError in __post_init__: 'no such thing'"),
])
def test_a_plugin_method_that_raises_is_one_line_naming_it(tmp_path, monkeypatch, capsys,
                                                           source, expected):
    """An exception of a plug-in method's own code (its attribute(), its settings'
    checks) is one line naming the method and its class and saying the fault is the
    plug-in's, exit 2: not a traceback that reads as dataselect's bug."""
    install_distribution(tmp_path, monkeypatch, "plug_attribution", source,
                         "[dataselect.attribution]\noverlap = plug_attribution:Overlap\n")
    ATTRIBUTIONS.refresh()
    assert _attribute(tmp_path, "--out", str(tmp_path / "o.parquet")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "attribution method 'overlap' (plug_attribution." in err[0]
    assert expected in err[0] and "a plug-in" in err[0]
    assert not (tmp_path / "o.parquet").exists()
