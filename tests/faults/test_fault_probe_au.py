"""Hostile pass 21 (issue 28): an id written as a float among integers, and a Python API
runner whose processes are forked.

- A JSON lines pool whose ids are integers except ``5.0`` on line 6: Arrow reads the whole
  column as floats, and the refusal named line 1, an integer (g01).
- A runner built on ``ProcessPoolExecutor`` with Linux's default ``fork`` start method hung
  for ever in ``DSIR().fit``, its workers outliving the program (g02).
"""

from __future__ import annotations

import concurrent.futures as futures
import functools
import json
import multiprocessing
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS
from fault_helpers import dsir_select, private_fingerprint_cache, refused_run, within  # noqa: F401

from dataselect import read_corpus
from dataselect.errors import RunnerContractError

SHIPPED = Path(POOL_GLOB).parent / "part-00000.parquet"


def _jsonl_pool(folder: Path, ids: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = pq.read_table(SHIPPED).slice(0, len(ids)).to_pylist()
    with open(folder / "a.jsonl", "w", encoding="utf-8") as f:
        for row, id_ in zip(rows, ids, strict=True):
            f.write(json.dumps({**row, "id": id_}) + "\n")
    return folder


# --- g01: the id written as a float is the one named ---------------------------------------

@pytest.mark.parametrize(("bad", "line"), [(5.0, 6), (7.5, 8)])
def test_the_refusal_of_a_float_id_names_its_line(tmp_path, capsys, bad, line):
    ids: list = list(range(40))
    ids[line - 1] = bad
    pool = _jsonl_pool(tmp_path / "p", ids)
    refused_run(dsir_select(pool, tmp_path / "o", k=5), capsys,
                f"a.jsonl:{line}: field 'id'", "decimal point")


# --- g02: a runner whose processes are forked ----------------------------------------------

def _call(task):
    return task()


def _process_runner(method: str):
    def runner(stage, tasks, fold=None):
        context = multiprocessing.get_context(method)
        with futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            results = list(pool.map(_call, tasks))
        return functools.reduce(fold, results) if fold is not None else results
    return runner


def test_a_forking_process_runner_is_refused_instead_of_hanging(tmp_path):
    from scorers import DSIR

    pool = read_corpus(str(SHIPPED), partition_bytes=1 << 16)
    target = read_corpus(str(TARGETS / "python_docs.jsonl"))
    DSIR().fit(target, pool)  # this process has run stages (as a program would have)
    with within(60), pytest.raises(RunnerContractError, match="'spawn' or 'forkserver'"):
        DSIR().fit(target, pool, runner=_process_runner("fork"))


@pytest.mark.slow
def test_a_spawning_process_runner_selects_what_the_default_runner_does(tmp_path):
    from dataselect import select
    from scorers import DSIR

    pool = read_corpus(str(SHIPPED), partition_bytes=1 << 16)
    target = read_corpus(str(TARGETS / "python_docs.jsonl"))
    runner = _process_runner("spawn")
    ours = select.top_k(pool, DSIR().fit(target, pool, runner=runner).score(pool), k=5,
                        runner=runner)
    plain = select.top_k(pool, DSIR().fit(target, pool).score(pool), k=5)
    assert ours.write(tmp_path / "a", runner=runner)["counts"] == plain.write(
        tmp_path / "b")["counts"]
    assert pq.read_table(tmp_path / "a")["id"].to_pylist() == \
        pq.read_table(tmp_path / "b")["id"].to_pylist()
