"""Recipes: validation errors name the key and file; a run equals the jobs it stands for,
writes the union, resumes, and a global budget hands each row to its best task."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, POOL_GLOB, ROOT, TARGETS

from dataselect.errors import InputError, OutputConflictError
from pipelines.jobs import SelectJob, run_select_job
from pipelines.recipe import RecipeError, load_recipe
from pipelines.run_recipe import run_recipe

INSTRUCTIONS = DATA / "instructions"
TASKS = ("python_docs", "fortunes", "licenses")


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def dsir_recipe(out: Path, **selection) -> dict:
    return {
        "name": "test",
        "pool": {"paths": [POOL_GLOB], "text": "text", "partition_mb": 0.5},
        "targets": {t: {"paths": str(TARGETS / f"{t}.jsonl")} for t in TASKS},
        "scorers": {"dsir": {"num_buckets": 5000}},
        "selection": selection or {"k": 200},
        "output": {"path": str(out)},
        "cluster": {"workers": 2},
    }


def ids_of(folder: Path) -> list[str]:
    return [i for f in sorted(folder.glob("part-*.parquet"))
            for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


def part_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("part-*.parquet"))}


@pytest.fixture(scope="module")
def dsir_run(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("dsir_run")
    recipe = dsir_recipe(root / "out")
    path = write_recipe(root / "recipe.yaml", recipe)
    run = run_recipe(load_recipe(path), str(path))
    return root / "out", recipe, run


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "pipelines" / "recipes")
                                        .glob("*.yaml")))
def test_shipped_recipes_validate(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(f"pipelines/recipes/{name}")
    assert recipe.output.path.startswith("out/recipes/")


def test_shipped_less_recipe_mirrors_the_paper(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe("pipelines/recipes/less_per_task.yaml")
    assert recipe.selection.fraction == 0.05 and recipe.selection.scope == "per_task"
    assert set(recipe.targets) == {"code", "define", "summarize", "translate"}
    assert recipe.warmup["fraction"] == 0.05 and recipe.warmup["epochs"] == 4
    assert all(t.eval for t in recipe.targets.values())


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda r: r["selection"].update(polcy="top_k"), "selection.polcy", "unknown key"),
    (lambda r: r["scorers"]["dsir"].update(num_buckets="many"), "scorers.dsir.num_buckets",
     "must be an integer"),
    (lambda r: r["scorers"]["dsir"].update(num_bucket=3), "scorers.dsir.num_bucket",
     "unknown key"),
    (lambda r: r["scorers"].update(dsr={}), "scorers", "unknown scorer 'dsr'"),
    (lambda r: r["selection"].update(fraction=0.1), "selection", "give one of k"),
    (lambda r: r["selection"].update(k=-1), "selection.k", "must be an integer >= 1"),
    (lambda r: r["targets"]["fortunes"].update(paths="nope.jsonl"),
     "targets.fortunes.paths[0]", "matches no file"),
    (lambda r: r.update(targets={"bad/name": {"paths": POOL_GLOB}}), "targets",
     "task name 'bad/name'"),
    (lambda r: r["scorers"].update(less={"proj_dim": 8}), "", "scorer less needs model"),
    (lambda r: r.pop("output"), "output", "Field required"),
])
def test_recipe_errors_name_key_and_file(tmp_path, change, field, words):
    recipe = dsir_recipe(tmp_path / "out")
    change(recipe)
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.where == str(path)
    assert (info.value.field or "") == field
    assert words in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("pool:\n  paths: [a, b\n  text: c\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML") as info:
        load_recipe(path)
    assert info.value.where.startswith(f"{path}:")


@pytest.mark.slow
def test_each_task_equals_its_select_job(dsir_run, tmp_path):
    """A recipe task is the select job with the same settings: the same ids, in order."""
    out, _, run = dsir_run
    job = SelectJob(scorer="dsir", pool=[POOL_GLOB], target=[str(TARGETS / "fortunes.jsonl")],
                    out=str(tmp_path / "job"), k=200, scorer_params={"num_buckets": 5000},
                    partition_bytes=int(0.5 * 2**20), workers=2)
    run_select_job(job)
    assert ids_of(out / "tasks" / "fortunes") == ids_of(tmp_path / "job")
    for task in TASKS:
        assert run["tasks"][task]["selected"] == 200


def test_union_is_the_set_union_with_the_tasks_that_chose_each_row(dsir_run):
    out, _, run = dsir_run
    chosen = {task: set(ids_of(out / "tasks" / task)) for task in TASKS}
    union = pa.concat_tables(pq.read_table(f) for f in sorted((out / "union")
                                                               .glob("part-*.parquet")))
    ids = union["id"].to_pylist()
    assert len(ids) == len(set(ids)) == run["union"]["selected"]
    assert set(ids) == set().union(*chosen.values())
    for row_id, tasks in zip(ids, union["tasks"].to_pylist()):
        assert tasks == [t for t in TASKS if row_id in chosen[t]]
    in_two = sum(1 for t in union["tasks"].to_pylist() if len(t) > 1)
    assert run["union"]["counts"]["overlap"] == in_two
    pool_ids = pa.concat_tables(pq.read_table(p) for p in sorted((DATA / "pool")
                                                                  .glob("*.parquet")))["id"]
    order = {i: n for n, i in enumerate(pool_ids.to_pylist())}
    assert [order[i] for i in ids] == sorted(order[i] for i in ids)  # pool order


@pytest.mark.slow
def test_rerun_resumes_and_interrupted_parts_are_rebuilt(dsir_run, tmp_path):
    out, recipe, _ = dsir_run
    before = part_bytes(out)
    path = write_recipe(tmp_path / "again.yaml", recipe)
    again = run_recipe(load_recipe(path))
    assert part_bytes(out) == before
    manifest = yaml.safe_load((out / "tasks" / "fortunes" / ".manifest.json").read_text())
    assert manifest["output"]["partitions_reused"] == len(manifest["output"]["parts"])
    assert again["union"]["selected"] == len(ids_of(out / "union"))
    # a crash after some parts: remove one task part, one union part and the run record
    os.remove(out / "tasks" / "licenses" / "part-00001.parquet")
    os.remove(out / "union" / "part-00000.parquet")
    os.remove(out / ".run.json")
    run_recipe(load_recipe(path))
    assert part_bytes(out) == before


def test_changed_settings_need_overwrite(dsir_run, tmp_path):
    _, recipe, _ = dsir_run
    changed = {**recipe, "selection": {"k": 150}}
    path = write_recipe(tmp_path / "changed.yaml", changed)
    with pytest.raises(OutputConflictError):
        run_recipe(load_recipe(path))


@pytest.mark.slow
def test_global_budget_gives_each_row_to_its_best_task(tmp_path):
    recipe = dsir_recipe(tmp_path / "out", k=300, scope="global", policy="top_k")
    path = write_recipe(tmp_path / "global.yaml", recipe)
    run = run_recipe(load_recipe(path))
    out = tmp_path / "out"
    stores = {t: pa.concat_tables(pq.read_table(f) for f in sorted(
        (out / "tasks" / t / ".scores" / "dsir").glob("part-*.parquet"))) for t in TASKS}
    ids = stores[TASKS[0]]["id"].to_pylist()
    matrix = np.column_stack([stores[t]["score"].to_numpy() for t in TASKS])
    best = matrix.max(axis=1)
    order = np.lexsort((np.arange(len(ids)), -best))[:300]  # ties: earlier pool row
    expected = {ids[i]: TASKS[int(matrix[i].argmax())] for i in order}
    got = {i: t for t in TASKS for i in ids_of(out / "tasks" / t)}
    assert got == expected
    assert sum(run["tasks"][t]["selected"] for t in TASKS) == 300
    assert run["union"]["selected"] == 300 and run["union"]["counts"]["overlap"] == 0


def test_combined_scorers_per_task(tmp_path):
    """Two scorers are combined into one score per task (columns of both kept)."""
    recipe = dsir_recipe(tmp_path / "out", k=50)
    recipe["scorers"]["zipfit"] = {"mode": "fast"}
    recipe["combine"] = {"method": "rank", "weights": {"dsir": 3}}
    recipe["targets"] = {"fortunes": recipe["targets"]["fortunes"]}
    path = write_recipe(tmp_path / "combined.yaml", recipe)
    run_recipe(load_recipe(path))
    table = pq.read_table(sorted((tmp_path / "out" / "tasks" / "fortunes")
                                 .glob("part-*.parquet"))[0])
    assert {"score_dsir", "score_zipfit", "score", "rank"} <= set(table.column_names)
    assert table.num_rows > 0


def test_cli_run_reports_recipe_errors(tmp_path, capsys):
    from pipelines.cli import main

    recipe = dsir_recipe(tmp_path / "out")
    recipe["selection"]["bogus"] = 1
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    assert main(["run", str(path)]) == 2
    assert "selection.bogus" in capsys.readouterr().err


def test_eval_without_held_out_rows_is_an_error(dsir_run):
    from pipelines.evaluate import EvalSettings, run_eval

    out, _, _ = dsir_run
    with pytest.raises(InputError, match="held-out rows"):
        run_eval(str(out), EvalSettings(steps=1, seeds=(0,)))


def test_a_dsir_recipe_hashes_the_pool_once_for_all_its_tasks(tmp_path, monkeypatch):
    """Every task's DSIR fit, scores and KL metric share one hashing of the pool (kept under
    ``.parsed/`` while the run lasts), where each task used to hash it again."""
    from dataselect.corpus import read_corpus
    from dataselect.ngrams import NgramHasher

    hashed: list[int] = []
    call = NgramHasher.__call__
    monkeypatch.setattr(NgramHasher, "__call__",
                        lambda self, texts: hashed.append(len(texts)) or call(self, texts))
    recipe = dsir_recipe(tmp_path / "out")
    recipe["scorers"] = {"dsir": {}}  # the metric's hasher too, so it shares the n-grams
    run_recipe(load_recipe(write_recipe(tmp_path / "recipe.yaml", recipe)))
    pool_rows = read_corpus(POOL_GLOB).to_table().num_rows
    target_rows = sum(read_corpus(str(TARGETS / f"{t}.jsonl")).to_table().num_rows
                      for t in TASKS)
    # the pool once; each target for its fit and for its metric; and, hashed again, rows
    # of partitions that hold few of a task's selected rows or of its metric's sample,
    # which hash faster than their saved n-grams are masked (writer.HASH_OVER_COUNT): far
    # from the pool a second time, which each task used to hash
    assert pool_rows + 2 * target_rows <= sum(hashed) < 2 * pool_rows
    assert not (tmp_path / "out" / ".parsed").exists()


def test_overwrite_with_a_task_dropped_removes_its_old_selection(tmp_path):
    """``run --overwrite`` with fewer tasks: the dropped task's dataset must not stay
    loadable beside the new run (as if the new recipe had chosen it); a user's own file in
    its folder stays."""
    recipe = dsir_recipe(tmp_path / "out", k=50)
    run_recipe(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    out = tmp_path / "out"
    dropped = TASKS[-1]
    assert ids_of(out / "tasks" / dropped)
    (out / "tasks" / dropped / "notes.txt").write_text("mine")
    fewer = {**recipe, "targets": {t: v for t, v in recipe["targets"].items() if t != dropped}}
    with pytest.raises(OutputConflictError):  # without --overwrite: refused, nothing gone
        run_recipe(load_recipe(write_recipe(tmp_path / "fewer.yaml", fewer)))
    assert ids_of(out / "tasks" / dropped)
    run = run_recipe(load_recipe(write_recipe(tmp_path / "fewer.yaml", fewer)), overwrite=True)
    assert set(run["tasks"]) == set(TASKS) - {dropped}
    assert sorted(p.name for p in (out / "tasks").iterdir()) == sorted(TASKS)  # mine stays
    assert [p.name for p in (out / "tasks" / dropped).rglob("*")] == ["notes.txt"]
    for task in run["tasks"]:
        assert ids_of(out / "tasks" / task)
