"""Hostile pass 17 (issue 28): paths made absolute on the client (pass 16's fix) met the
working folder's own name and its absence; recipes and a `~`; folder inputs holding
`.json.xz`.

- Run from a folder named ``run[1]`` (or ``a*``), ``--pool 'p/*.parquet'`` read
  ``run1/p`` (or the siblings' ``p/`` too), and a missing ``--target t9.jsonl`` matched
  ``run1/t9.jsonl``: the working folder's name had become part of the pattern (g20).
- Run from a folder that was deleted, any relative path was a traceback (g19).
- A recipe's ``output.path: ~/runs`` made a folder literally named ``~`` (g18).
- A folder input left ``h.json.xz`` out with only a note (g15).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import POOL_GLOB, TARGETS
from fault_helpers import dsir_select, ran_ok, refused_run

from dataselect import storage

SHIPPED = Path(POOL_GLOB).parent / "part-00000.parquet"


def _rows_in(out: Path) -> int:
    return json.loads((out / ".manifest.json").read_text())["counts"]["rows_in"]


@pytest.mark.parametrize("here", ["run[1]", "a*", "q?"])
def test_the_working_folders_own_name_is_no_pattern(tmp_path, capsys, monkeypatch, here):
    decoys = {"run[1]": ["run1"], "a*": ["ab", "ac"], "q?": ["qx"]}[here]
    for name in [here, *decoys]:
        (tmp_path / name / "p").mkdir(parents=True)
        shutil.copy(SHIPPED, tmp_path / name / "p" / f"{name.strip('[]*?')}x.parquet")
    (tmp_path / decoys[0] / "t9.jsonl").write_text('{"text": "a decoy target"}\n')
    monkeypatch.chdir(tmp_path / here)
    out = tmp_path / here / "o"
    ran_ok(dsir_select("p/*.parquet", out), capsys)
    assert _rows_in(out) == pq.read_metadata(SHIPPED).num_rows
    argv = dsir_select("p/*.parquet", tmp_path / here / "o2")
    argv[argv.index("--target") + 1] = "t9.jsonl"
    refused_run(argv, capsys, "t9.jsonl", "no such file")


def test_a_spec_keeps_the_working_folders_name_literal(tmp_path, monkeypatch):
    here = tmp_path / "x[1]"
    (here / "p").mkdir(parents=True)
    (here / "d[2].jsonl").write_text('{"text": "a row"}\n')
    monkeypatch.chdir(here)
    escaped = str(tmp_path / "x[[]1]")
    assert storage.absolute_spec("p/*.parquet") == os.path.join(escaped, "p", "*.parquet")
    assert storage.absolute_spec("missing.jsonl") == os.path.join(escaped, "missing.jsonl")
    assert storage.absolute_spec("d[2].jsonl") == str(here / "d[2].jsonl")  # exists: itself
    assert storage.absolute_spec("p") == str(here / "p")
    assert storage.unescaped(storage.absolute_spec("m[3]*.jsonl")) == str(here / "m[3]*.jsonl")
    assert storage.absolute_spec("s3://b/p/*") == "s3://b/p/*"


def test_a_typed_wildcard_matching_a_folder_named_with_it_still_matches_all(tmp_path, capsys,
                                                                          monkeypatch):
    """Pass 18 g01: the first fix of g20 took every existing folder of a pattern literally,
    so 'q/sub*/*.parquet' read only a folder literally named 'sub*' when one existed."""
    parts = sorted(SHIPPED.parent.glob("part-*.parquet"))[:3]
    for name, part in zip(("subA", "subB", "sub*"), parts):
        (tmp_path / "q" / name).mkdir(parents=True)
        shutil.copy(part, tmp_path / "q" / name / "a.parquet")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    ran_ok(dsir_select("q/sub*/*.parquet", out), capsys)
    assert _rows_in(out) == sum(pq.read_metadata(part).num_rows for part in parts)


def test_a_deleted_working_folder_is_one_line(tmp_path, capsys, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for argv in (dsir_select("p", Path("o")), dsir_select(SHIPPED, Path("o"))):
        refused_run(argv, capsys, "the folder this command runs in is gone", "absolute paths")


def _recipe(tmp_path: Path, output: str, pool: str = POOL_GLOB) -> Path:
    recipe = {"name": "home", "pool": {"paths": [pool], "text": "text"},
              "targets": {"docs": {"paths": str(TARGETS / "python_docs.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 5000}}, "selection": {"k": 20},
              "output": {"path": output}, "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_a_tilde_in_a_recipes_paths_is_the_home_folder(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    shutil.copy(SHIPPED, home / "data" / "pool.parquet")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    ran_ok(["run", str(_recipe(tmp_path, "~/runs/a", "~/data"))], capsys)
    assert (home / "runs" / "a" / ".run.json").is_file() and not (tmp_path / "~").exists()
    refused_run(["run", str(_recipe(tmp_path, "~nosuchuser9/runs"))], capsys,
                "output.path", "~nosuchuser9", "knows no user")
    assert not (tmp_path / "~nosuchuser9").exists()


@pytest.mark.parametrize("name", ["h.json.xz", "h.json.lz4", "rows.json.zip"])
def test_compressed_json_in_a_folder_input_is_refused(tmp_path, capsys, name):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(SHIPPED, folder / "pool.parquet")
    (folder / name).write_bytes(b"compressed rows")
    refused_run(dsir_select(folder, tmp_path / "o"), capsys, str(folder / name),
                "does not read")


def test_an_output_a_glob_can_match_is_refused_from_a_folder_named_with_wildcards(
        tmp_path, capsys, monkeypatch):
    """From ``run[1]``, ``--pool 'p/*' --out p/sel`` was accepted (the pattern looked in
    ``run1``) and wrote into the user's ``p/``; from a plain folder it is refused."""
    here = tmp_path / "run[1]"
    for folder in (here, tmp_path / "run1"):  # run1: what the pattern read instead
        (folder / "p").mkdir(parents=True)
        shutil.copy(SHIPPED, folder / "p" / "a.parquet")
    monkeypatch.chdir(here)
    line = refused_run(dsir_select("p/*", Path("p/sel")), capsys, str(here / "p" / "sel"))
    assert "glob" in line
    assert sorted(os.listdir(here / "p")) == ["a.parquet"]


def test_a_working_folder_whose_name_is_not_utf8_is_named_as_such(tmp_path, capsys,
                                                                    monkeypatch):
    here = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    (here / "p").mkdir(parents=True)
    shutil.copy(SHIPPED, here / "p" / "a.parquet")
    monkeypatch.chdir(here)
    line = refused_run(dsir_select("p", tmp_path / "o"), capsys, "the folder this command "
                       "runs in has a name that is not valid UTF-8", "caf\\xe9")
    assert "absolute paths" in line


def test_a_recipes_double_star_glob_matches_files_at_its_top(tmp_path, capsys, monkeypatch):
    """Pass 18 g06: ``pool.paths: [p/**/*.parquet]`` with the files directly in ``p/`` was
    refused as matching nothing, where ``--pool`` reads them."""
    (tmp_path / "p").mkdir()
    shutil.copy(SHIPPED, tmp_path / "p" / "a.parquet")
    monkeypatch.chdir(tmp_path)
    ran_ok(["run", str(_recipe(tmp_path, str(tmp_path / "run"), "p/**/*.parquet"))], capsys)
    assert (tmp_path / "run" / ".run.json").is_file()


def test_bads_diverging_is_one_line_that_suggests_no_optimizer_in_use():
    """Pass 18 g07: a diverged BADS run was a traceback (exit 1) whose message advised
    "use optimizer=adam", the default already in use."""
    from types import SimpleNamespace

    from dataselect.errors import InputError
    from scorers.bads.sampler import BadsConfig, BadsDivergedError, BadsSampler

    assert issubclass(BadsDivergedError, InputError)
    for optimizer, advice in (("adam", False), ("sgd", True)):
        state = SimpleNamespace(steps_done=1, n_train=40, config=BadsConfig(optimizer=optimizer))
        line = BadsSampler._diverged(state, "the energy is nan")
        assert ("optimizer=adam" in line) is advice and "N_t=40" in line


def test_an_output_named_like_a_glob_folder_is_not_read_back(tmp_path, capsys, monkeypatch):
    """Pass 18 g09: with the first fix of g20, ``--out 'q/sub[AB]'`` beside ``--pool
    'q/sub[AB]/*.parquet'`` made a folder the same glob then read literally: the rerun read
    the selection as its pool. A typed wildcard matches names, never itself."""
    parts = sorted(SHIPPED.parent.glob("part-*.parquet"))[:2]
    for name, part in zip(("subA", "subB"), parts):
        (tmp_path / "q" / name).mkdir(parents=True)
        shutil.copy(part, tmp_path / "q" / name / "a.parquet")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the rerun resumes on the same pool
        ran_ok(dsir_select("q/sub[AB]/*.parquet", Path("q/sub[AB]")), capsys)
        assert _rows_in(tmp_path / "q" / "sub[AB]") == sum(pq.read_metadata(p).num_rows
                                                          for p in parts)


def test_a_part_whose_footer_disagrees_says_which_number_is_whose():
    """Pass 18 note: "its rows is 40, not 39" read as if the file held 40 where the folder
    listed 39, the other way round."""
    import pyarrow as pa

    from dataselect.errors import InputError
    from dataselect.footer import FOOTER_KEY, PartOrigin

    stamped = PartOrigin("job", 2).stamp(pa.table({"id": ["a", "b"]}))
    with pytest.raises(InputError) as caught:
        PartOrigin("job", 3).check("p.parquet", stamped.schema.metadata, 5)
    line = str(caught.value)
    assert "its footer records index 2 where the folder's list has 3" in line
    assert "its footer records rows 2 where the folder's record has 5" in line
    assert FOOTER_KEY in stamped.schema.metadata


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_feather_v1_file_is_named_as_such_not_corrupt(tmp_path, capsys):
    """Pass 18 note: a whole Feather V1 file was "truncated or corrupt: rewrite or
    re-download it"."""
    import pyarrow.feather as feather

    path = tmp_path / "old.feather"
    feather.write_feather(pq.read_table(SHIPPED), path, version=1)
    line = refused_run(dsir_select(path, tmp_path / "o"), capsys, str(path), "Feather V1")
    assert "corrupt" not in line


def test_a_models_digest_names_its_files_as_the_folder_does(tmp_path):
    """Pass 19 g04: in a Hugging Face cache layout the model's files are links to
    ``blobs/<hash>``; the digest named them by their targets, so LESS refused the same
    model copied with ``cp -rL`` as "trained on another base model"."""
    from models.lm import model_digest

    blobs, linked, copied = tmp_path / "blobs", tmp_path / "snapshot", tmp_path / "copy"
    for folder in (blobs, linked, copied):
        folder.mkdir()
    for name, data in (("config.json", b'{"model_type": "llama"}'),
                       ("model.safetensors", bytes(range(256)) * 8)):
        (blobs / f"h{len(data)}").write_bytes(data)
        (linked / name).symlink_to(blobs / f"h{len(data)}")
        (copied / name).write_bytes(data)
    assert model_digest(str(linked)) == model_digest(str(copied))
    (copied / "model.safetensors").write_bytes(bytes(range(255, -1, -1)) * 8)
    assert model_digest(str(linked)) != model_digest(str(copied))
