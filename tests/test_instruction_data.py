"""Checks on the committed instruction mixture (data/instructions/) and its builder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "instructions"
BUILDER = ROOT / "data" / "make_instructions.py"
TASKS = {"code", "define", "summarize", "translate"}
KEYS = {"id", "messages", "task", "subtask", "source"}
MIN_TRAIN_PER_TASK = 200
DEV_PER_TASK = 10
EVAL_PER_TASK = 40

# Real files copied into a tiny source tree for the rerun check, so it takes well under a
# second instead of the ~9 s of a full build.
PYTHON_LIB = Path("/usr/lib/python3.11")
PYTHON_FILES = ["textwrap.py", "shlex.py", "bdb.py", "shutil.py"]
WORDNET = Path("/usr/share/wordnet")
WORDNET_LINES = 80  # 29 licence lines, then synsets
MAN = Path("/usr/share/man")
MAN_PAGES = ["man1/ls.1.gz", "man2/open.2.gz", "man3/printf.3.gz", "man5/passwd.5.gz",
             "man7/ascii.7.gz", "man1/file.1.gz"]
TRANSLATED = ["man1/dpkg-deb.1.gz", "man1/dpkg-query.1.gz", "man1/dpkg-split.1.gz",
              "man1/dpkg.1.gz", "man5/deb.5.gz", "man1/apropos.1.gz"]
LANGS = ["de", "fr", "sv", "pt", "nl"]


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return read_jsonl(OUT / "train.jsonl")


@pytest.fixture(scope="module")
def dev() -> dict[str, list[dict]]:
    return {task: read_jsonl(OUT / "targets" / f"{task}.jsonl") for task in sorted(TASKS)}


def contents(rows: list[dict]) -> set[str]:
    return {m["content"] for row in rows for m in row["messages"]}


def test_task_names_and_files(train, dev):
    assert {row["task"] for row in train} == TASKS
    assert sorted(p.stem for p in (OUT / "targets").glob("*.jsonl")) == sorted(TASKS)


def test_rows_are_well_formed(train, dev):
    for row in train + [r for rows in dev.values() for r in rows]:
        assert set(row) == KEYS
        assert row["id"].startswith(f"{row['task']}-")
        assert isinstance(row["subtask"], str) and row["subtask"]
        assert isinstance(row["source"], str) and row["source"]
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"]
        for message in row["messages"]:
            assert set(message) == {"role", "content"}
            assert isinstance(message["content"], str) and message["content"].strip()


def test_ids_unique_across_train_and_targets(train, dev):
    ids = [row["id"] for row in train] + [r["id"] for rows in dev.values() for r in rows]
    assert len(ids) == len(set(ids))


def test_counts_per_task(train, dev):
    per_task = Counter(row["task"] for row in train)
    for task in TASKS:
        assert per_task[task] >= MIN_TRAIN_PER_TASK, task
        assert len(dev[task]) == DEV_PER_TASK, task
        assert {row["task"] for row in dev[task]} == {task}


def test_dev_spread_over_subtasks(train, dev):
    for task, rows in dev.items():
        subtasks = {row["subtask"] for row in train if row["task"] == task}
        counts = Counter(row["subtask"] for row in rows)
        assert set(counts) == subtasks, task
        assert max(counts.values()) - min(counts.values()) <= 1, task


def test_no_dev_text_in_train(train, dev):
    train_texts = contents(train)
    for task, rows in dev.items():
        assert not contents(rows) & train_texts, task


@pytest.fixture(scope="module")
def held_out() -> dict[str, list[dict]]:
    return {task: read_jsonl(OUT / "eval" / f"{task}.jsonl") for task in sorted(TASKS)}


def test_eval_rows_are_held_out(train, dev, held_out):
    seen_ids = {r["id"] for r in train} | {r["id"] for rows in dev.values() for r in rows}
    seen_texts = contents(train) | {t for rows in dev.values() for t in contents(rows)}
    for task, rows in held_out.items():
        assert len(rows) == EVAL_PER_TASK, task
        assert {r["task"] for r in rows} == {task}
        assert all(set(r) == KEYS for r in rows)
        assert not {r["id"] for r in rows} & seen_ids, task
        assert not contents(rows) & seen_texts, task
        counts = Counter(r["subtask"] for r in rows)
        assert len(counts) >= 3 and set(counts) <= {r["subtask"] for r in train
                                                    if r["task"] == task}, task


def test_eval_split_leaves_out_existing_text():
    """The draw skips rows that share an id or any message text with the committed rows."""
    sys.path.insert(0, str(BUILDER.parent))
    from make_instructions import eval_split

    def row(i: str, task: str, sub: str, user: str, answer: str) -> dict:
        return {"id": i, "task": task, "subtask": sub, "source": "s",
                "messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": answer}]}

    candidates = [row(f"code-{i}", "code", "core", f"q{i}", f"a{i}") for i in range(6)]
    existing = [row("code-0", "code", "core", "x", "y"), row("other", "code", "core", "z", "a3")]
    chosen = eval_split(candidates, existing, seed=0, per_task=10)["code"]
    assert sorted(r["id"] for r in chosen) == ["code-1", "code-2", "code-4", "code-5"]
    assert len(eval_split(candidates, existing, seed=0, per_task=2)["code"]) == 2


def copy_sources(root: Path) -> tuple[Path, Path, Path]:
    """A tiny tree of real source files in the layout the builder expects."""
    python, wordnet, man = root / "python", root / "wordnet", root / "man"
    python.mkdir(parents=True)
    for name in PYTHON_FILES:
        shutil.copyfile(PYTHON_LIB / name, python / name)
    wordnet.mkdir()
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET / f"data.{pos}", encoding="utf-8") as f:
            head = [line for _, line in zip(range(WORDNET_LINES), f)]
        (wordnet / f"data.{pos}").write_text("".join(head), encoding="utf-8")
    pages = [Path(p) for p in MAN_PAGES + TRANSLATED]
    pages += [Path(lang) / p for lang in LANGS for p in TRANSLATED]
    for page in pages:
        (man / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MAN / page, man / page)
    return python, wordnet, man


def build(sources: tuple[Path, Path, Path], out: Path, per_task: int) -> dict[str, bytes]:
    python, wordnet, man = sources
    cmd = [sys.executable, str(BUILDER), "--out", str(out), "--seed", "0",
           "--per-task", str(per_task), "--dev-per-task", "2", "--python-lib", str(python),
           "--wordnet", str(wordnet), "--man", str(man)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))}


def test_builder_is_deterministic(tmp_path):
    needed = [PYTHON_LIB / n for n in PYTHON_FILES]
    needed += [WORDNET / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    needed += [MAN / p for p in MAN_PAGES + TRANSLATED]
    needed += [MAN / lang / p for lang in LANGS for p in TRANSLATED]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"source files not installed here: {', '.join(missing[:3])} ...")
    sources = copy_sources(tmp_path / "src")
    first = build(sources, tmp_path / "a", per_task=6)
    second = build(sources, tmp_path / "b", per_task=6)
    assert first == second
    assert set(first) == {"train.jsonl"} | {f"targets/{t}.jsonl" for t in sorted(TASKS)}
    rows = [json.loads(line) for line in first["train.jsonl"].decode().splitlines()]
    assert Counter(row["task"] for row in rows) == dict.fromkeys(TASKS, 6)
    # dev rows are drawn before the pool, so a bigger pool leaves them unchanged
    bigger = build(sources, tmp_path / "c", per_task=9)
    for task in TASKS:
        assert bigger[f"targets/{task}.jsonl"] == first[f"targets/{task}.jsonl"]
