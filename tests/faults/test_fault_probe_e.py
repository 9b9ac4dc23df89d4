"""Faults found by the sixth hostile pass (issue 28): hard links planted in the model folders
dataselect builds, HF save_to_disk folders whose state.json names files outside them, an
overwrite that deleted a folder the previous run never wrote, a user's own file at a name
dataselect writes, and a pool column clashing with a recipe's combined score column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, instruction_recipe
from test_fault_errors2 import _one_error_line
from test_fault_probe_b import recipe_run  # noqa: F401 (a fixture)

import dataselect
from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from pipelines.cli import main
from pipelines.evaluate import EvalSettings, _base_model
from pipelines.recipe import TinyModelSpec, load_recipe
from pipelines.run_recipe import build_model, run_recipe

INSTRUCTIONS = DATA / "instructions"
TARGET = DATA / "targets" / "python_docs.jsonl"


def _pool(tmp_path: Path, rows: int = 120) -> Path:
    path = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, rows), path)
    return path


def _select(tmp_path: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "zipfit", "--target", str(TARGET), "--k", "5",
            "--pool", str(pool), "--out", str(out), "--workers", "1",
            "--worker-kind", "threads", *extra]


def _edit_state(folder: Path, filename: str) -> None:
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": filename}]
    (folder / "state.json").write_text(json.dumps(state))


def _plant_link(folder: Path, name: str, victim: Path) -> None:
    """A hard link at ``folder/name`` to ``victim``, a file outside any output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).unlink(missing_ok=True)
    os.link(victim, folder / name)


@pytest.mark.slow
def test_recipe_model_build_never_writes_through_a_hard_link(tmp_path: Path) -> None:
    """S11: a hard link at a recipe model's blank/config.json or trained/tokenizer.json is
    replaced by the new file; the file it also named (outside the output) is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out" / ".models" / "base"
    _plant_link(folder / "blank", "config.json", victim)
    _plant_link(folder / "trained", "tokenizer.json", victim)
    pool = read_corpus(str(INSTRUCTIONS / "train.jsonl"), text="messages")
    spec = TinyModelSpec(vocab_size=300, hidden_size=16, layers=1, heads=2, train_steps=1,
                         batch_size=4, max_length=32)
    trained, built = build_model(pool, spec, str(folder))
    assert built and victim.read_text() == "precious"
    assert json.loads((folder / "blank" / "config.json").read_text())["hidden_size"] == 16
    assert "model" in json.loads(Path(trained, "tokenizer.json").read_text())
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


@pytest.mark.slow
def test_eval_base_model_never_writes_through_a_hard_link(tmp_path: Path) -> None:
    """S7: the same for ``dataselect eval``'s base model folder (config, tokenizer files)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pool = read_corpus(str(INSTRUCTIONS / "train.jsonl"), text="messages")
    settings = EvalSettings(vocab_size=300, hidden_size=16, layers=1, heads=2)
    base, _ = _base_model(pool, settings, str(tmp_path / "eval"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        _plant_link(Path(base), name, victim)
    os.remove(os.path.join(base, "_built.json"))
    _base_model(pool, settings, str(tmp_path / "eval"))
    assert victim.read_text() == "precious"
    assert json.loads(Path(base, "config.json").read_text())["hidden_size"] == 16


@pytest.mark.parametrize("filename", ["../../h2/.hf/data-00000-of-00001.arrow",
                                      "/etc/hostname", "dataset_info.json", "missing.arrow"])
def test_load_hf_refuses_a_state_naming_a_file_not_its_own(tmp_path: Path, filename: str
                                                            ) -> None:
    """S10: an edited ``.hf/state.json`` is refused in one line naming it, never followed
    out of the output folder (nor a raw ArrowInvalid for a file that is not Arrow)."""
    pool = _pool(tmp_path)
    for name in ("h1", "h2"):
        assert main(_select(tmp_path, pool, tmp_path / name, "--save-to-disk")) == 0
    _edit_state(tmp_path / "h1" / ".hf", filename)
    with pytest.raises(InputError, match=r"state\.json") as caught:
        dataselect.load_hf(tmp_path / "h1")
    assert "\n" not in str(caught.value)


def test_hf_pool_whose_state_names_an_outside_file_is_refused(tmp_path: Path,
                                                               capsys) -> None:
    """W17: a save_to_disk pool folder whose state.json names ``../outside.arrow`` is
    refused before any work: its identity covers the files inside the folder only."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    folder = tmp_path / "hfp" / "ds"
    datasets.Dataset.from_parquet(str(_pool(tmp_path))).save_to_disk(str(folder))
    os.replace(folder / "data-00000-of-00001.arrow", tmp_path / "hfp" / "outside.arrow")
    _edit_state(folder, "../outside.arrow")
    assert main(_select(tmp_path, folder, tmp_path / "o")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "state.json" in line and "outside.arrow" in line
    assert not (tmp_path / "o").exists()


def _write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.slow
def test_run_overwrite_deletes_only_the_tasks_the_replaced_run_had(tmp_path: Path) -> None:
    """D4: a separate selection moved to ``RUN/tasks/mine`` (a task the recipe never had)
    survives ``run --overwrite``; a task the replaced run had and the new one lacks goes."""
    recipe = instruction_recipe(tmp_path / "rr", ("code", "define"),
                                {"dsir": {"num_buckets": 1000}}, 20)
    recipe["cluster"]["worker_kind"] = "threads"
    run_recipe(load_recipe(_write_recipe(tmp_path / "r.yaml", recipe)))
    assert main(_select(tmp_path, _pool(tmp_path), tmp_path / "rr" / "tasks" / "mine")) == 0
    mine = sorted(p.relative_to(tmp_path) for p in (tmp_path / "rr" / "tasks" / "mine").rglob("*"))
    recipe["targets"].pop("define")
    recipe["selection"]["k"] = 21
    run_recipe(load_recipe(_write_recipe(tmp_path / "r.yaml", recipe)), overwrite=True)
    tasks = tmp_path / "rr" / "tasks"
    assert sorted(p.relative_to(tmp_path) for p in (tasks / "mine").rglob("*")) == mine
    assert sorted(p.name for p in tasks.iterdir()) == ["code", "mine"]


def test_select_refuses_a_users_file_at_a_part_name_it_did_not_list(tmp_path: Path,
                                                                    capsys) -> None:
    """D5: a user's own ``part-00001.parquet`` beside a one-part selection is refused, not
    replaced, when a rerun with smaller partitions would write a second part."""
    pool = _pool(tmp_path, 300)
    assert main(_select(tmp_path, pool, tmp_path / "px")) == 0
    mine = tmp_path / "px" / "part-00001.parquet"
    pq.write_table(pa.table({"mine": [1, 2, 3]}), mine)
    capsys.readouterr()
    argv = _select(tmp_path, pool, tmp_path / "px", "--overwrite", "--partition-mb", "0.1")
    argv[argv.index("--k") + 1] = "200"  # a flag is given once
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    # refused before any work as a file the marker does not list (test_fault_probe_x)
    assert "part-00001.parquet" in line and "move it away" in line
    assert pq.read_table(mine).column_names == ["mine"]


def test_save_to_disk_refuses_a_users_file_in_hf(tmp_path: Path, capsys) -> None:
    """D6: a user's own ``.hf/dataset_info.json`` is refused, not replaced, when
    ``--save-to-disk`` is added to a finished job."""
    pool = _pool(tmp_path)
    assert main(_select(tmp_path, pool, tmp_path / "hx")) == 0
    (tmp_path / "hx" / ".hf").mkdir()
    mine = tmp_path / "hx" / ".hf" / "dataset_info.json"
    mine.write_text('{"mine": true}')
    capsys.readouterr()
    assert main(_select(tmp_path, pool, tmp_path / "hx", "--save-to-disk")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "dataset_info.json" in line and "not written by dataselect" in line
    assert mine.read_text() == '{"mine": true}'
    with pytest.raises(InputError, match="not written by dataselect"):
        dataselect.load_hf(tmp_path / "hx")
    assert mine.read_text() == '{"mine": true}'


def test_eval_refuses_a_users_results_file(recipe_run: Path, capsys) -> None:  # noqa: F811
    """D7: a user's own ``RUN/eval/results.json`` from before any ``dataselect eval`` is
    refused (like the report's unlisted names), not replaced."""
    mine = recipe_run / "eval" / "results.json"
    mine.parent.mkdir()
    mine.write_text('{"mine": 1}')
    capsys.readouterr()
    assert main(["eval", str(recipe_run), "--seeds", "0", "--steps", "1", "--workers", "1",
                 "-p", "hidden_size=16", "-p", "layers=1", "-p", "heads=2",
                 "-p", "vocab_size=300"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "results.json" in line and "not written by dataselect" in line
    assert mine.read_text() == '{"mine": 1}'


def _scored_pool(tmp_path: Path, column: str, suffix: str) -> Path:
    rows = [json.loads(line) for line in (INSTRUCTIONS / "train.jsonl").open()][:200]
    for i, row in enumerate(rows):
        row[column] = f"user-{i}"
    path = tmp_path / f"train{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("column", "scope", "scorers"), [
    ("score_code", "global", {"dsir": {"num_buckets": 1000}}),
    ("score_dsir", "per_task", {"dsir": {"num_buckets": 1000}, "zipfit": {}}),
])
def test_recipe_refuses_a_pool_column_its_combined_scores_add_before_work(
        tmp_path: Path, capsys, column: str, scope: str, scorers: dict) -> None:
    """D1: a pool column ``score_<task>`` (global budget) or ``score_<scorer>`` (several
    scorers) is refused before any fit or score, naming the file and the column."""
    pool = _scored_pool(tmp_path, column, ".parquet")
    recipe = instruction_recipe(tmp_path / "out", ("code", "define"), scorers, 40)
    recipe["pool"]["paths"] = str(pool)
    recipe["selection"]["scope"] = scope
    recipe["cluster"]["worker_kind"] = "threads"
    assert main(["run", str(_write_recipe(tmp_path / "g.yaml", recipe))]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.parquet" in line and column in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_recipe_names_the_jsonl_pool_file_of_a_clashing_column(tmp_path: Path,
                                                                capsys) -> None:
    """D1 for a JSONL pool (its columns are known only once parsed): refused after the
    first task, before the second task's work, naming the file and the column."""
    pool = _scored_pool(tmp_path, "score_code", ".jsonl")
    recipe = instruction_recipe(tmp_path / "out", ("code", "define"),
                                {"dsir": {"num_buckets": 1000}}, 40)
    recipe["pool"]["paths"] = str(pool)
    recipe["selection"]["scope"] = "global"
    recipe["cluster"]["worker_kind"] = "threads"
    assert main(["run", str(_write_recipe(tmp_path / "g.yaml", recipe))]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.jsonl" in line and "score_code" in line
    assert not (tmp_path / "out" / "tasks" / "define" / ".scores").exists()
