"""Faults found by the fifth hostile pass and left open at its end (issue 28): held-out rows
that a model trains on or that the selection matched, hand-edited feature stores, and the
file named when pool files disagree on a column."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, instruction_recipe
from test_fault_errors2 import _one_error_line

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from dataselect.features import FeatureStore
from pipelines.cli import main
from pipelines.evaluate import EvalSettings, plan_trainings
from pipelines.recipe import load_recipe
from pipelines.run_recipe import run_recipe

INSTRUCTIONS = DATA / "instructions"
TINY = {"seeds": (0,), "steps": 2, "hidden_size": 32, "layers": 1, "heads": 2,
        "vocab_size": 400, "batch_size": 4, "max_length": 64, "workers": 1}


def _run_with_eval(root: Path, held_out_lines: list[str]) -> Path:
    eval_file = root / "held_out.jsonl"
    eval_file.write_text("".join(held_out_lines), encoding="utf-8")
    recipe = instruction_recipe(root / "out", ("code",), {"dsir": {"num_buckets": 5000}}, 20)
    recipe["targets"]["code"]["eval"] = str(eval_file)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path))
    return root / "out"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_held_out_rows_in_the_target_are_refused(tmp_path):
    held = _lines(INSTRUCTIONS / "eval" / "code.jsonl")[:5]
    out = _run_with_eval(tmp_path, held + _lines(INSTRUCTIONS / "targets" / "code.jsonl")[:2])
    with pytest.raises(InputError, match=r"2 held-out rows of task 'code' are also in its "
                                         r"target .*allow_overlap=true") as caught:
        plan_trainings(str(out), EvalSettings(**TINY))
    assert caught.value.where.endswith("held_out.jsonl")


def test_held_out_rows_a_model_trains_on_are_refused_unless_allowed(tmp_path):
    """A held-out file holding the whole pool overlaps the selection (checked before the
    random rows); allow_overlap plans the trainings as before."""
    out = _run_with_eval(tmp_path, _lines(INSTRUCTIONS / "train.jsonl"))
    with pytest.raises(InputError, match=r"20 held-out rows of task 'code' are also in its "
                                         "selected rows"):
        plan_trainings(str(out), EvalSettings(**TINY))
    jobs, _, _, _ = plan_trainings(str(out), EvalSettings(**TINY, allow_overlap=True))
    assert [(j.arm, j.train.num_rows) for j in jobs] == [("selected", 20), ("random", 20)]


# --- a feature store edited by hand ---------------------------------------------------------
def _store(tmp_path: Path) -> FeatureStore:
    store = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 4, "views": 1})
    rng = np.random.default_rng(0)
    for part, names in enumerate([["a", "b"], ["c", "d"]]):
        store.write_part(part, pa.array(names, pa.string()),
                         rng.normal(size=(2, 1, 4)).astype(np.float32))
    return store


def _index_build(tmp_path: Path, capsys) -> tuple[int, str]:
    code = main(["index", "build", "--features", str(tmp_path / "f"), "--out",
                 str(tmp_path / "i")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("edit", "shown"), [
    (lambda s: np.save(s.matrix_path(1), np.zeros((2, 4), np.float16)),
     r"part-00001\.npy.*shape \(2, 4\), not \(rows, views, dim\) = \(2, 1, 4\)"),
    (lambda s: np.save(s.matrix_path(1), np.zeros((2, 1, 5), np.float16)),
     r"part-00001\.npy.*shape \(2, 1, 5\)"),
    (lambda s: pq.write_table(pa.table({"id": [7, 8]}), s.ids_path(1)),
     r"part-00001\.ids\.parquet.*its ids are int64, not strings"),
])
def test_index_build_on_an_edited_feature_part_is_one_line(tmp_path, capsys, edit, shown):
    edit(_store(tmp_path))
    code, err = _index_build(tmp_path, capsys)
    assert code == 2
    assert re.search(shown, _one_error_line(err)), err
    assert not (tmp_path / "i" / "index.faiss").exists()


def test_a_file_that_only_looks_like_a_feature_part_is_left_alone(tmp_path, capsys):
    store = _store(tmp_path)
    pq.write_table(pa.table({"id": ["z"]}), Path(store.folder) / "part-abcde.ids.parquet")
    assert store.parts() == [0, 1]
    code, err = _index_build(tmp_path, capsys)
    assert code == 0, err
    assert (tmp_path / "i" / "index.faiss").exists()


# --- the file named when pool files disagree on a column -----------------------------------
def _files_disagreeing_in_the_fourth(tmp_path: Path, suffix: str) -> list[str]:
    """Four files packed two to a partition; only the fourth holds ``x`` as a string."""
    rows = [{"id": f"{name}{i}", "text": f"row {i} of {name} " * 5} for i in range(20)
            for name in "abcd"]
    paths = []
    for name, x in zip("abcd", (1, None, None, "one")):
        mine = [dict(r, **({"x": x} if x is not None else {})) for r in rows
                if r["id"].startswith(name)]
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(mine), path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in mine), encoding="utf-8")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_column_conflict_names_the_file_that_holds_it(tmp_path, suffix):
    """The error named the first file of the conflicting file's partition (c), which has
    no column x at all."""
    paths = _files_disagreeing_in_the_fourth(tmp_path, suffix)
    corpus = next(c for c in (read_corpus(paths, "text", "id", 2**n) for n in range(8, 20))
                  if [len(p) for p in c.partitions] == [2, 2])
    with pytest.raises(InputError, match="holds string here but int64 in") as caught:
        corpus.unified_schema()
    assert caught.value.where == paths[3] and caught.value.field == "x"
    assert paths[0] in str(caught.value)


@pytest.mark.parametrize("value", ["-1e308", "-2.5E-3", "-.5", "-3"])
def test_a_negative_threshold_in_exponent_form_is_a_value_not_an_option(value):
    """argparse on Python 3.11 read ``--threshold -1e308`` as a missing value."""
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["select", "--pool", "p", "--target", "t", "--out", "o",
                                      "--scorer", "dsir", "--threshold", value])
    assert args.threshold == float(value)


@pytest.mark.parametrize("url", ["zip://x", "https://example.invalid/x", "github://a:b@/x",
                                 "tar://t/x"])
def test_an_output_on_a_read_only_filesystem_is_refused_before_work(tmp_path, capsys, url,
                                                                    monkeypatch):
    """zip://x named the working directory ("cannot write .../cwd: Is a directory"); web
    and git URLs failed with the store's own error."""
    monkeypatch.chdir(tmp_path)
    argv = ["select", "--pool", str(DATA / "pool"), "--target",
            str(DATA / "targets" / "fortunes.jsonl"), "--scorer", "dsir", "--k", "5",
            "--out", url]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert url in line and "can only be read" in line
    assert list(tmp_path.iterdir()) == []


def test_the_scorer_list_as_json_is_strict_json():
    """A plug-in's NaN or infinite default was printed as a bare NaN (probe 6, W22)."""
    from pipelines.scorer_table import scorers_json

    text = scorers_json([{"name": "p", "defaults": {"a": float("nan"), "b": float("inf"),
                                                     "c": [1.5, float("-inf")]}}])
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == [
        {"name": "p", "defaults": {"a": None, "b": None, "c": [1.5, None]}}]


@pytest.mark.parametrize(("repeated", "flag"), [
    (["--k", "5", "--k", "10"], "--k"), (["--seed", "1", "--seed", "2"], "--seed"),
    (["--scorer", "zipfit"], "--scorer"), (["--out", "b"], "--out"),
    (["--policy", "top_k", "--policy", "round_robin"], "--policy"),
])
def test_a_flag_that_takes_one_value_given_twice_is_refused(capsys, repeated, flag):
    """argparse kept the last value silently: --k 5 --k 10 selected 10 rows, --scorer dsir
    --scorer zipfit ran zipfit, --out a --out b wrote only b (probe 6, W25)."""
    from pipelines.cli import build_parser

    argv = ["select", "--pool", "p", "--target", "t", "--out", "o", "--scorer", "dsir",
            *repeated]
    if "--k" not in repeated:
        argv += ["--k", "5"]
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert f"{flag} given twice; give it once" in capsys.readouterr().err


def test_flags_given_once_leave_no_trace_in_the_arguments():
    from pipelines.cli import build_parser

    args = build_parser().parse_args(["select", "--pool", "p", "--target", "t", "--out", "o",
                                      "--scorer", "dsir", "--k", "5", "-p", "a=1", "-p",
                                      "b=2"])
    assert (args.k, args.param) == (5, ["a=1", "b=2"]) and not hasattr(args, "_flags_given")
