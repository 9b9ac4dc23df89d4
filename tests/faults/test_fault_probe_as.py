"""The twentieth probe's API runners, eval batches and edited eval results (pass 20).

- g09: a ``runner=`` given to the Python API returned results in completion order
  (``as_completed``) or the first result for every task, and its scores and chosen rows
  were attached to other partitions: other rows, no error. One dropping a result ended in
  IndexError, one returning None in TypeError. Each result now comes back tagged with its
  task, and a runner breaking the contract is one RunnerContractError naming it.
- g12: ``eval -p batch_size=100000`` on a 30-row task filled every batch to 100,000 rows by
  repeating them: minutes, then out of memory. A batch is at most the rows there are.
- g13: ``report`` drew an ``eval/results.json`` whose loss was edited (valid JSON, the same
  job digest), exit 0. eval seals it (and each training's result) with a digest of its
  contents; report refuses an edited one, and eval trains an edited result again.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS, write_jsonl
from fault_helpers import private_fingerprint_cache, ran_ok, refused_run  # noqa: F401

from dataselect import read_corpus, select
from dataselect.errors import RunnerContractError
from dataselect.execution import compute_here, default_runner, fold_all, run_stage
from dataselect.footer import RECORD_CONTENT_KEY, seal_problem, sealed
from dataselect.output import read_json, write_json
from pipelines.cli import main
from scorers import DSIR

# ------------------------------------------------------------------ g09: the runner contract


@pytest.fixture
def three_part_pool(tmp_path: Path, pool_table: pa.Table):
    """Three Parquet files of 100 shipped pool rows each (three partitions), the target."""
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(3):
        pq.write_table(pool_table.slice(100 * i, 100).select(["id", "text"]),
                       root / f"p{i}.parquet")
    pool = read_corpus(str(root / "*.parquet"), partition_bytes=1 << 17)  # a file each
    assert pool.npartitions == 3
    return pool, read_corpus(str(TARGETS / "fortunes.jsonl"))


def _computed(tasks):
    return [compute_here(task) for task in tasks]


def _folded(results, fold):
    return fold_all(results, fold) if fold is not None else results


def in_completion_order(stage, tasks, fold=None):
    """The usual first try: a thread pool, results as they complete."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(compute_here, task) for task in tasks]
        results = [f.result() for f in as_completed(futures)]
    return _folded(results, fold)


def reversed_order(stage, tasks, fold=None):
    return _folded(_computed(tasks)[::-1], fold)


def first_for_every_task(stage, tasks, fold=None):
    results = _computed(tasks)
    return _folded([results[0]] * len(results), fold)


def one_dropped(stage, tasks, fold=None):
    return _folded(_computed(tasks)[:-1], fold)


def returns_none(stage, tasks, fold=None):
    _computed(tasks)


def fold_ignored(stage, tasks, fold=None):
    return _computed(tasks)


def folds_one_twice(stage, tasks, fold=None):
    results = _computed(tasks)
    return _folded([results[0], *results], fold)


def _chosen_ids(pool, target, runner, out: Path, fit_runner=None) -> list[str]:
    scores = DSIR().fit(target, pool, runner=fit_runner or runner).score(pool)
    selection = select.top_k(pool, scores, k=20, runner=runner)
    selection.write(str(out), target=target)
    return sorted(pq.read_table(out).column("id").to_pylist())


def test_a_runner_that_folds_in_completion_order_selects_the_same_rows(three_part_pool,
                                                                       tmp_path):
    """Folding in any order is the contract; collecting results by their task's place
    too (the results then come back in task order)."""
    pool, target = three_part_pool

    def by_place(stage, tasks, fold=None):
        with ThreadPoolExecutor(2) as ex:
            futures = {ex.submit(compute_here, t): i for i, t in enumerate(tasks)}
            results = [None] * len(tasks)
            for future in as_completed(futures):
                results[futures[future]] = future.result()
        return _folded(results, fold)

    expected = _chosen_ids(pool, target, default_runner, tmp_path / "a")
    assert _chosen_ids(pool, target, by_place, tmp_path / "b",
                       fit_runner=in_completion_order) == expected


@pytest.mark.parametrize("runner, said", [
    (reversed_order, "returned task 2's result in place 0"),
    (first_for_every_task, "returned task 0's result in place 1"),
    (one_dropped, "returned 2 results for 3 tasks"),
    (returns_none, "returned None"),
])
def test_a_runner_that_returns_other_results_is_refused(three_part_pool, runner, said):
    pool, target = three_part_pool
    scores = DSIR().fit(target, pool).score(pool)
    with pytest.raises(RunnerContractError, match=said) as caught:
        select.top_k(pool, scores, k=20, runner=runner)
    assert f"runner {runner.__name__!r}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("runner, said", [
    (one_dropped, "returned 2 of the 3 tasks' results folded"),
    (returns_none, "returned None"),
    (fold_ignored, "returned a list"),
    (folds_one_twice, "folded a task's result in twice"),
])
def test_a_runner_that_folds_other_results_is_refused(three_part_pool, runner, said):
    """DSIR's fit folds its partitions' counts."""
    pool, target = three_part_pool
    with pytest.raises(RunnerContractError, match=said) as caught:
        DSIR().fit(target, pool, runner=runner)
    assert f"runner {runner.__name__!r}" in str(caught.value)


def test_a_completion_order_runner_is_refused_not_silent(three_part_pool, tmp_path):
    """The probe's case: the selection with results in completion order was other rows,
    exit normally. Reversed stands in for a completion order that differs (threads may
    happen to finish in order)."""
    pool, target = three_part_pool
    with pytest.raises(RunnerContractError, match="reversed_order"):
        _chosen_ids(pool, target, reversed_order, tmp_path / "o")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("part-*"))


def test_run_stage_checks_results_of_dask_tasks_too():
    """A task that is a Dask delayed object (not a partition task) is tagged the same
    way."""
    import dask

    tasks = [dask.delayed(lambda i=i: i * 10)() for i in range(4)]
    assert run_stage(default_runner, "s", tasks) == [0, 10, 20, 30]
    with pytest.raises(RunnerContractError, match="result in place 0"):
        run_stage(lambda stage, t, fold=None: default_runner(stage, t)[::-1], "s", tasks)


# ------------------------------------------------------------ g12: a batch is at most the rows


def test_a_batch_is_at_most_the_rows_there_are(monkeypatch):
    """``fit_causal_lm`` with batch_size 100,000 on 3 rows tokenizes batches of 3 rows
    (the tokenizer is stopped at the first batch: the size is what is tested)."""
    import torch

    from models import lm

    sizes = []

    class Stop(Exception):
        pass

    def tokenize(tokenizer, batch, max_length):
        sizes.append(batch.num_rows)
        raise Stop

    monkeypatch.setattr(lm, "tokenize", tokenize)
    rows = pa.table({"text": ["a", "b", "c"]})
    with pytest.raises(Stop):
        lm.fit_causal_lm(torch.nn.Linear(2, 2), None, rows, steps=2, lr=1e-3,
                         batch_size=100_000, max_length=8, seed=0)
    assert sizes == [3]


# ------------------------------------------------------------ g13: eval results sealed


def test_a_sealed_record_reads_back_whole_and_an_edit_is_seen(tmp_path):
    record = {"summary": {"t": {"loss": {"selected": {"mean": 4.123456789012345}}}},
              "runs": [{"loss": 1e-300, "seed": 2**60, "nan": float("nan")}], "x": "é"}
    path = tmp_path / "r.json"
    write_json(sealed(record), path)
    back = read_json(path)
    assert seal_problem(back) is None
    back["summary"]["t"]["loss"]["selected"]["mean"] = 0.5
    assert "edited" in seal_problem(back)
    back.pop(RECORD_CONTENT_KEY)
    assert "older" in seal_problem(back)


EVAL_ARGS = ["--seeds", "0", "--steps", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-task recipe run over a 40-row pool, evaluated (one seed, one step)."""
    import yaml

    root = tmp_path_factory.mktemp("as_eval")
    previous = os.environ.get("DATASELECT_CACHE")
    os.environ["DATASELECT_CACHE"] = str(root / "cache")
    try:
        write_jsonl(root / "pool.jsonl", [{"id": f"r{i}", "text": f"alpha {i} print({i})"}
                                          for i in range(40)])
        write_jsonl(root / "a.jsonl", [{"id": f"t{i}", "text": f"print({i} + 1)"}
                                       for i in range(8)])
        write_jsonl(root / "a.eval.jsonl", [{"id": f"e{i}", "text": f"def g{i}(): pass"}
                                            for i in range(3)])
        recipe = {"pool": {"paths": str(root / "pool.jsonl")},
                  "targets": {"a": {"paths": str(root / "a.jsonl"),
                                    "eval": str(root / "a.eval.jsonl")}},
                  "scorers": {"dsir": {"num_buckets": 1000}},
                  "selection": {"policy": "top_k", "k": 5},
                  "output": {"path": str(root / "out")},
                  "cluster": {"workers": 1, "worker_kind": "threads"}}
        (root / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        assert main(["run", str(root / "r.yaml")]) == 0
        assert main(["eval", str(root / "out"), *EVAL_ARGS]) == 0
    finally:
        if previous is None:
            os.environ.pop("DATASELECT_CACHE", None)
        else:
            os.environ["DATASELECT_CACHE"] = previous
    return root / "out"


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "X"
    shutil.copytree(run, copy, symlinks=True)
    return copy


def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))


@pytest.mark.slow
def test_report_refuses_an_edited_loss_and_eval_writes_it_again(evaluated_run, tmp_path,
                                                                capsys):
    out = _copy(evaluated_run, tmp_path)
    results = out / "eval" / "results.json"

    def selection_won(record):
        record["summary"]["a"]["loss"]["selected"]["mean"] = 0.5
        for run in record["runs"]:
            if run["arm"] == "selected":
                run["loss"] = 0.5

    _edit(results, selection_won)
    refused_run(["report", str(out)], capsys, "eval/results.json", "edited",
                "dataselect eval")
    assert not (out / "report" / "index.html").exists()
    ran_ok(["eval", str(out), *EVAL_ARGS], capsys)
    assert read_json(results)["summary"]["a"]["loss"]["selected"]["mean"] != 0.5
    ran_ok(["report", str(out)], capsys)
    assert ">0.5000<" not in (out / "report" / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_refuses_results_without_a_seal(evaluated_run, tmp_path, capsys):
    """As an older dataselect wrote them: where their numbers came from is unknown."""
    out = _copy(evaluated_run, tmp_path)
    _edit(out / "eval" / "results.json", lambda r: r.pop(RECORD_CONTENT_KEY))
    refused_run(["report", str(out)], capsys, "eval/results.json", "older")


@pytest.mark.slow
def test_eval_trains_an_edited_run_again(evaluated_run, tmp_path, capsys):
    """A training's result in eval/runs/ edited to another loss is not reused (its number
    would be results.json's): that training runs again, the others are reused."""
    out = _copy(evaluated_run, tmp_path)
    runs = sorted((out / "eval" / "runs").glob("*.json"))
    edited = next(p for p in runs if ".selected." in p.name)
    true_loss = read_json(edited)["loss"]
    _edit(edited, lambda r: r.update(loss=0.5))
    ran_ok(["eval", str(out), *EVAL_ARGS], capsys)
    again = read_json(edited)
    assert seal_problem(again) is None and again["loss"] == pytest.approx(true_loss)
    results = read_json(out / "eval" / "results.json")
    assert [r["loss"] for r in results["runs"] if r["arm"] == "selected"] == [again["loss"]]



@pytest.mark.slow
def test_eval_of_plain_text_rows_has_no_exact_match(evaluated_run):
    """Held-out rows of plain text are all response: no prompt to answer. Their short
    answers asked the model to generate from an empty prompt, a traceback from
    ``generate`` (found while writing these tests); exact match is left out instead."""
    summary = read_json(evaluated_run / "eval" / "results.json")["summary"]["a"]
    assert "loss" in summary and "exact_match" not in summary
