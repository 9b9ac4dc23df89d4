"""What several fault test files share: a private fingerprint cache for every test, a
small ``dataselect select`` run that returns its exit code and error lines, and a time
limit for a block that could wait forever (a FIFO opened)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DATA, TARGETS

from dataselect import fingerprint
from pipelines.cli import main


@pytest.fixture(autouse=True)
def private_fingerprint_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache of its own, on disk and in memory (a module that
    imports this fixture gets it for each of its tests)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DATASELECT_CACHE", str(cache))
    monkeypatch.setattr(fingerprint, "_memory", {})
    return cache


# how the refusal of a file dataselect wrote, then someone edited or swapped, reads
EDITED = "is not the one dataselect wrote here"


def shipped_pool(tmp_path: Path) -> Path:
    """300 rows of the shipped pool as one Parquet file (one partition)."""
    path = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 300), path)
    return path


def select_errors(pool: list[str | Path], out: Path, capsys: pytest.CaptureFixture,
                  *extra: str, target: Path = TARGETS / "fortunes.jsonl") -> tuple[int, str]:
    """``dataselect select --scorer dsir`` on small data: exit code and error lines."""
    defaults = {"--k": "5", "--workers": "1", "--worker-kind": "threads"}
    budgets = {"--k", "--fraction", "--threshold"}
    given = set(extra) | (budgets if budgets & set(extra) else set())
    kept = [part for flag, value in defaults.items() if flag not in given
            for part in (flag, value)]  # a flag is given once: the test's own value wins
    code = main(["select", "--scorer", "dsir", "--pool", *map(str, pool), "--target",
                 str(target), "--out", str(out), *kept, *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "\n".join(line for line in err.splitlines() if "error" in line.lower())


def refused(code: int, errors: str, *parts: str) -> None:
    """Exit status 2 with one error line holding every one of ``parts``."""
    assert code == 2, errors
    assert len(errors.splitlines()) == 1, errors
    for part in parts:
        assert part in errors, errors


def dsir_select(pool: Path, out: Path, *extra: str, k: int = 20,
                target: str = "python_docs") -> list[str]:
    """The argv of a small DSIR ``select`` on thread workers against a shipped target."""
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target",
            str(TARGETS / f"{target}.jsonl"), "--out", str(out), "--k", str(k),
            "--workers", "1", "--worker-kind", "threads", *extra]


def refused_run(argv: list[str], capsys: pytest.CaptureFixture, *parts: str) -> str:
    """Run the command: exit status 2, one error line holding every one of ``parts``, no
    traceback; the line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = "\n".join(line for line in err.splitlines() if "error" in line.lower())
    refused(code, errors, *parts)
    return errors


def ran_ok(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Run the command: exit status 0 (its stderr shown otherwise)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging the suite, when the block blocks (a FIFO opened)."""
    def give_up(*_: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def two_rank_stores(tmp_path: Path) -> tuple[Any, list[Any]]:
    """A 160-row JSONL pool in several partitions and two score stores written for it,
    with many tied scores (``i % 5`` and ``i % 9``): what the rank-combination probes
    shuffle through the stores' work folders."""
    from conftest import write_jsonl
    from scoring_helpers import FixedScorer

    from dataselect import read_corpus

    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(160)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=700)
    written = [FixedScorer({f"u{i}": float(i % m) for i in range(160)}, frozenset(),
                           label=str(m)).score(pool).write(tmp_path / f"s{m}")
               for m in (5, 9)]
    return pool, written


def combined_scores(pool: Any, scores: Any) -> np.ndarray:
    """Every partition's scores of ``scores``, concatenated in pool order."""
    return np.concatenate([scores.partition(i)["score"].to_numpy()
                           for i in range(pool.npartitions)])
