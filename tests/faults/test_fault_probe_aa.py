"""Hostile pass 12: the fingerprint cache pointed into what a command reads or writes, and
a recipe's error lines naming its output folder.

``DATASELECT_CACHE`` (or ``XDG_CACHE_HOME``) naming a pool folder made dataselect write
``fingerprints/`` into the pool, an input, which the rerun then took for a changed pool;
naming ``--out``, it wrote them into its own selection and refused it afterwards as holding
a folder its marker does not list. The cache only saves time: there it is not used.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import POOL_GLOB

from dataselect import fingerprint


def _old_pool(tmp_path: Path) -> Path:
    """A pool folder whose file is old enough to be cached (not 'racy')."""
    pool = tmp_path / "pool"
    pool.mkdir()
    copy = pool / "p.parquet"
    shutil.copy(sorted(Path(POOL_GLOB).parent.glob("*.parquet"))[0], copy)
    past = time.time() - 3600
    os.utime(copy, (past, past))
    return pool


@pytest.fixture(autouse=True)
def fresh_exclusions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "_KEPT_OUT_OF", [])
    # a file copied just now changed its ctime just now: let it be cached all the same
    monkeypatch.setattr(fingerprint, "_is_racy", lambda *_: False)


@pytest.mark.parametrize("variable", ["DATASELECT_CACHE", "XDG_CACHE_HOME"])
def test_a_cache_inside_an_input_or_output_writes_nothing_there(tmp_path, monkeypatch,
                                                                variable):
    """A file hashed for its fingerprint (a model, an index) is cached only where the cache
    folder lies outside every path the command was given."""
    pool = _old_pool(tmp_path)
    monkeypatch.delenv("DATASELECT_CACHE", raising=False)
    monkeypatch.setenv(variable, str(pool))
    fingerprint.keep_cache_out_of([str(pool / "*.parquet"), str(tmp_path / "out")])
    before = sorted(p.name for p in pool.rglob("*"))
    first = fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert fingerprint.file_fingerprint(str(pool / "p.parquet")) == first
    assert sorted(p.name for p in pool.rglob("*")) == before
    monkeypatch.setenv(variable, str(tmp_path / "out" / "sub"))  # inside a new --out
    fingerprint._memory.clear()
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert not (tmp_path / "out").exists()


def test_a_cache_elsewhere_is_still_used(tmp_path, monkeypatch):
    pool = _old_pool(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DATASELECT_CACHE", str(cache))
    fingerprint.keep_cache_out_of([str(pool)])
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert list((cache / "fingerprints").glob("*" + fingerprint.ENTRY_SUFFIX))


def test_every_path_a_command_is_given_is_kept_out_of(tmp_path):
    """The command line registers its flags' and ``-p`` settings' paths, and a new
    ``--out`` that does not exist yet."""
    from pipelines.cli import _paths_given, build_parser

    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    args = build_parser().parse_args([
        "select", "--scorer", "fasttext", "--pool", "pool/*.parquet", "--target", "t.jsonl",
        "--out", "newout", "--k", "5", "-p", f"model={model}"])
    given = _paths_given(args)
    assert {"pool/*.parquet", "newout", str(model)} <= set(given)


def test_globs_and_urls_are_kept_out_by_their_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "data" / "c"))
    fingerprint.keep_cache_out_of(["s3://bucket/x", f"{tmp_path}/data/*.parquet"])
    assert not fingerprint._cache_usable()
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "elsewhere"))
    assert fingerprint._cache_usable()


def test_a_recipe_hitting_the_file_size_limit_names_its_output_folder(tmp_path):
    """``ulimit -f`` on ``dataselect run`` (the output folder from the recipe, no --out):
    the line said "cannot write: File too large" and named nothing."""
    import resource
    import subprocess
    import sys

    from conftest import TARGETS

    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"pool: {{paths: '{POOL_GLOB}'}}\n"
                      f"targets:\n  fort: {{paths: '{TARGETS / 'fortunes.jsonl'}'}}\n"
                      "scorers: {dsir: {}}\nselection: {policy: top_k, k: 5}\n"
                      f"output: {{path: '{out}'}}\ncluster: {{workers: 1}}\n")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(recipe)],
                          capture_output=True, text=True, preexec_fn=limited, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert f"cannot write {out}" in errors[0] and "File too large" in errors[0]


def test_an_error_naming_a_path_with_a_newline_is_one_line(tmp_path, capsys):
    """A file named ``x\\ny.txt`` in a finished output: the refusal printed the name as it
    is, over two lines."""
    from fault_helpers import dsir_select

    from pipelines.cli import main

    pool = _old_pool(tmp_path)
    out = tmp_path / "out"
    assert main(dsir_select(pool, out)) == 0
    (out / "x\ny.txt").write_text("mine")
    capsys.readouterr()
    assert main(dsir_select(pool, out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "x\\ny.txt" in err


def test_one_line_escapes_control_and_bidi_characters_only():
    from dataselect.errors import one_line

    assert one_line("a\nb\rc\td\x00e") == "a\\nb\\rc\\td\\x00e"
    assert one_line("txt.\u202eexe") == "txt.\\u202eexe"
    assert one_line("café/ünï 東京 €") == "café/ünï 東京 €"


def test_a_commands_paths_are_let_go_when_it_ends(tmp_path):
    """Registered for one command only: a process running many keeps no list growing, and
    no earlier command's paths out of the cache."""
    from pipelines.cli import main

    pool = _old_pool(tmp_path)
    assert main(["scorers"]) == 0 and fingerprint._KEPT_OUT_OF == []
    fingerprint.keep_cache_out_of([str(tmp_path / "kept")])
    with fingerprint.cache_kept_out_of([str(pool)]):
        assert len(fingerprint._KEPT_OUT_OF) == 2
    assert [os.path.realpath(tmp_path / "kept")] == fingerprint._KEPT_OUT_OF


def test_eval_reads_its_held_out_rows_before_building_a_base_model(tmp_path, monkeypatch):
    """Pass 12's note c59: ``eval`` built and saved its base model (minutes on a real one)
    before it found the held-out file empty. Every input is now read, and refused, first."""
    from test_fault_probe_d import INSTRUCTIONS, TINY, _lines, _run_with_eval

    from dataselect.errors import InputError
    from pipelines import evaluate
    from pipelines.evaluate import EvalSettings, plan_trainings

    out = _run_with_eval(tmp_path, _lines(INSTRUCTIONS / "eval" / "code.jsonl")[:5])
    (tmp_path / "held_out.jsonl").write_text("", encoding="utf-8")
    built = []
    monkeypatch.setattr(evaluate, "_base_model", lambda *a: built.append(a) or ("", True))
    with pytest.raises(InputError) as caught:
        plan_trainings(str(out), EvalSettings(**TINY))
    assert "held_out.jsonl" in str(caught.value) and "\n" not in str(caught.value)
    assert built == []
