"""Security: dataselect never reads, writes or deletes outside ``--out`` through a link.

A symbolic link planted anywhere inside an output folder (``OUT/.stats`` pointing at
another folder, then the same job with ``--overwrite``) made dataselect delete and rewrite
files in the link's target. Every folder dataselect writes is checked here with a link
planted in its place; each test failed before links were refused (the victim's files were
deleted or rewritten, or the job wrote through the link and exited 0). Outputs nested in
another dataselect output (either order) are refused too: the outer one would read as the
union of both.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import POOL_GLOB, TARGETS

from dataselect import layout
from dataselect.errors import OutputConflictError
from dataselect.outdir import MARKER, OutputFolder, claim_output, remove_listed
from dataselect.output import remove_stale_temporaries, write_json
from pipelines.cli import main

TARGET = str(TARGETS / "python_docs.jsonl")


def _select(out: Path, *extra: str, k: int = 50) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target", TARGET,
            "--k", str(k), "--out", str(out), "--workers", "1", "--worker-kind", "threads",
            *extra]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished selection (with its .hf copy), to copy and plant links into."""
    out = tmp_path_factory.mktemp("links") / "finished"
    assert main(_select(out, "--save-to-disk")) == 0
    return out


def _victim_like(source: Path, victim: Path) -> Path:
    """A folder outside the output holding copies of ``source``'s files (so a job
    following a link there finds the names it expects, and would delete or rewrite them)."""
    victim.mkdir()
    if source.is_dir():
        for path in source.iterdir():
            if path.is_file():
                (victim / path.name).write_bytes(path.read_bytes())
    else:
        (victim / source.name).write_bytes(source.read_bytes())
    (victim / "precious.txt").write_text("not dataselect's")
    return victim


def _plant(out: Path, name: str, victim: Path) -> None:
    """Replace ``out/name`` (a folder or file) with a link to its copy in ``victim``."""
    place = out / name
    if place.is_dir():
        import shutil

        shutil.rmtree(place)
        place.symlink_to(victim, target_is_directory=True)
    else:
        place.unlink()
        place.symlink_to(victim / place.name)


PLANTED = [layout.STATS_DIR, layout.SCORES_DIR, f"{layout.SCORES_DIR}/dsir", layout.HF_DIR,
           layout.MANIFEST_FILE, "part-00000.parquet"]


@pytest.mark.parametrize("name", PLANTED)
@pytest.mark.parametrize("rerun", ["overwrite", "resume"])
def test_a_link_planted_in_a_finished_output_is_refused_and_its_target_untouched(
        finished, tmp_path, name, rerun, capsys):
    out = tmp_path / "out"
    import shutil

    shutil.copytree(finished, out, symlinks=True)
    victim = _victim_like(out / name, tmp_path / "victim")
    _plant(out, name, victim)
    before = _digests(victim)
    args = _select(out, "--overwrite", k=60) if rerun == "overwrite" else _select(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(out / name) in err
    assert _digests(victim) == before


@pytest.mark.parametrize("name", [layout.PARSED_DIR, layout.STATS_DIR, layout.SCORES_DIR])
def test_a_link_planted_before_the_first_run_is_refused(tmp_path, name, capsys):
    """A folder holding only dataselect's marker and a link where the job will write."""
    out = tmp_path / "out"
    out.mkdir()
    write_json({"tool": "dataselect", "kind": "job", "identity": None, "files": []},
               out / MARKER)
    victim = tmp_path / "victim"
    victim.mkdir()
    (out / name).symlink_to(victim, target_is_directory=True)
    assert main(_select(out)) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert list(victim.iterdir()) == []


KINDS = ["job", "selection", "union", "recipe", "scores", "features", "index", "warmup",
         "model", "attributions"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["top", "deep"])
def test_every_kind_of_output_folder_refuses_a_link_anywhere_below_it(tmp_path, kind, where):
    out = tmp_path / "out"
    OutputFolder.claim(out, kind, None)
    victim = tmp_path / "victim"
    victim.mkdir()
    folder = out if where == "top" else out / layout.TASKS_DIR / "t" / layout.SCORES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d").symlink_to(victim, target_is_directory=True)
    with pytest.raises(OutputConflictError, match="symbolic link"):
        OutputFolder.claim(out, kind, None)
    with pytest.raises(OutputConflictError, match="symbolic link"), \
            claim_output(out, kind, None):
        pass
    with pytest.raises(OutputConflictError, match="symbolic link"):
        OutputFolder.reopen(out, [kind])


def test_deleting_listed_files_never_follows_a_link_even_unchecked(tmp_path):
    """remove_listed is link-proof by itself (descriptors, O_NOFOLLOW): a link swapped in
    after the folder was checked is refused, not followed."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "part-00000.json").write_text("{}")
    (victim / ".tmp-abcpart-00000.json").write_text("{}")
    (out / layout.STATS_DIR).symlink_to(victim, target_is_directory=True)
    (out / "sub" / "part-00000.parquet").write_text("x")
    with pytest.raises(OutputConflictError, match="symbolic link"):
        remove_listed(str(out), ["sub/part-00000.parquet", f"{layout.STATS_DIR}/part-00000.json"])
    assert sorted(p.name for p in victim.iterdir()) == [".tmp-abcpart-00000.json",
                                                       "part-00000.json"]
    # a listed name that is itself a link loses the link, never its target
    os.unlink(out / layout.STATS_DIR)
    (out / "part-00001.parquet").symlink_to(victim / "part-00000.json")
    assert remove_listed(str(out), ["part-00001.parquet"]) == 1
    assert (victim / "part-00000.json").exists() and not (out / "part-00001.parquet").exists()


def test_stale_temporaries_are_removed_without_following_links(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    (folder / ".tmp-0123456789abcdef-a").symlink_to(victim, target_is_directory=True)
    (folder / ".tmp-0123456789abcdef-b").mkdir()
    (folder / ".tmp-0123456789abcdef-c").write_text("half")
    assert remove_stale_temporaries(folder, lambda name: True) == 2
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-0123456789abcdef-b"]
    assert (victim / "keep").exists()


# --- outputs nested in outputs ----------------------------------------------------------


def test_an_output_inside_a_finished_selection_is_refused(finished, tmp_path, capsys):
    before = _digests(finished)
    assert main(_select(finished / "inner")) == 2
    assert "lies inside" in capsys.readouterr().err
    assert _digests(finished) == before and not (finished / "inner").exists()


def test_a_selection_around_another_output_is_refused(finished, tmp_path, capsys):
    outer = tmp_path / "outer"
    outer.mkdir()
    import shutil

    shutil.copytree(finished, outer / "inner")
    assert main(_select(outer)) == 2
    err = capsys.readouterr().err
    assert "holds" in err and str(outer / "inner") in err
    assert sorted(p.name for p in outer.iterdir()) == ["inner"]


def test_bookkeeping_under_hidden_names_and_recipe_tasks_still_nest(tmp_path):
    """What nests by design: a score store in a job's .scores/, and a recipe's task
    selections under tasks/."""
    job = tmp_path / "job"
    OutputFolder.claim(job, "job", None)
    OutputFolder.claim(job / layout.SCORES_DIR / "dsir", "scores", None)
    OutputFolder.claim(job, "job", {"x": 1})
    recipe = tmp_path / "recipe"
    OutputFolder.claim(recipe, "recipe", None)
    OutputFolder.claim(recipe / layout.TASKS_DIR / "a", "selection", None)
    OutputFolder.claim(recipe / layout.UNION_DIR, "union", None)
    OutputFolder.claim(recipe, "recipe", {"x": 1})
    with pytest.raises(OutputConflictError, match="lies inside"):
        OutputFolder.claim(recipe / layout.TASKS_DIR / "a" / "b", "selection", None)


# --- writers that add to a finished output: report, evaluation, recipes --------------


def test_report_refuses_a_link_in_the_output_and_writes_nothing_through_it(
        finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "mine.png").write_bytes(b"a user's plot")
    (out / ".report").symlink_to(victim, target_is_directory=True)
    assert main(["report", str(out)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert sorted(p.name for p in victim.iterdir()) == ["mine.png"]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import yaml

    root = tmp_path_factory.mktemp("links_recipe")
    recipe = {
        "name": "links", "pool": {"paths": [POOL_GLOB], "text": "text"},
        "targets": {"python_docs": {"paths": TARGET}},
        "scorers": {"dsir": {"num_buckets": 5000}}, "selection": {"k": 50},
        "output": {"path": str(root / "out")}, "cluster": {"workers": 1},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["run", str(path)]) == 0
    return path, root / "out"


@pytest.mark.parametrize("name", [layout.TASKS_DIR, f"{layout.TASKS_DIR}/python_docs/.stats",
                                  layout.UNION_DIR, "eval"])
def test_recipes_and_evaluation_refuse_a_planted_link(recipe_run, tmp_path, name, capsys):
    import shutil

    from pipelines.evaluate import EvalSettings, run_eval

    path, out = recipe_run
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("x")
    place = out / name
    if place.exists():
        shutil.move(place, tmp_path / "moved")
    place.symlink_to(victim, target_is_directory=True)
    try:
        assert main(["run", str(path), "--overwrite"]) == 2
        assert "symbolic link" in capsys.readouterr().err
        with pytest.raises(OutputConflictError, match="symbolic link"):
            run_eval(str(out), EvalSettings(seeds=(0,), steps=1, workers=1))
        assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    finally:
        place.unlink()
        if (tmp_path / "moved").exists():
            shutil.move(tmp_path / "moved", place)


# --- a second probe's cases: the lock file, the marker's list, the API, .parsed ---------


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_a_lock_file_that_is_not_dataselects_own_is_refused_and_left_alone(
        finished, tmp_path, kind, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out, symlinks=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    lock = out / ".dataselect.lock"
    if kind == "hard link":
        os.link(notes, lock)
    else:
        os.mkfifo(lock)
    assert main(_select(out)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ".dataselect.lock" in err
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("files", ["part-00000.parquet", ["../victim.txt"], [3], ["", "a"]])
def test_a_marker_whose_list_is_not_names_inside_the_folder_is_refused(
        tmp_path, files, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("p", "a", "r"):
        (out / name).write_text("mine")
    (tmp_path / "victim.txt").write_text("mine")
    write_json({"tool": "dataselect", "kind": "job", "identity": {"x": 1}, "files": files},
               out / MARKER)
    assert main(_select(out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a valid marker" in err
    assert {p.name for p in out.iterdir()} >= {"p", "a", "r"}
    assert (tmp_path / "victim.txt").exists()


def test_the_api_refuses_outputs_inside_a_pool_folder(tmp_path):
    import shutil

    from dataselect import read_corpus, select
    from dataselect.errors import InputError
    from scorers import DSIR

    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    shutil.copy(sorted(Path(POOL_GLOB).parent.glob("*.parquet"))[0], pool_dir)
    pool = read_corpus(str(pool_dir))
    scores = DSIR().fit(read_corpus(TARGET), pool).score(pool)
    with pytest.raises(InputError, match="lies inside the input"):
        scores.write(str(pool_dir / ".scores" / "dsir"))
    stored = scores.write(str(tmp_path / "store"))
    with pytest.raises(InputError, match="lies inside the input"):
        select.top_k(pool, stored, k=5).write(str(pool_dir / "out"))
    assert sorted(p.name for p in pool_dir.iterdir()) == sorted(
        p.name for p in Path(POOL_GLOB).parent.glob("*.parquet"))[:1]


def test_a_users_file_in_the_parse_cache_folder_survives_the_job(tmp_path, capsys):
    from conftest import write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": str(i), "text": f"document {i} about python modules and functions"}
        for i in range(40)])
    out = tmp_path / "out"
    def args(k: int, *extra: str) -> list[str]:
        return ["select", "--scorer", "dsir", "--pool", str(pool), "--target", TARGET,
                "--k", str(k), "--out", str(out), "--workers", "1", "--worker-kind",
                "threads", *extra]

    assert main(args(5)) == 0
    (out / layout.PARSED_DIR).mkdir()
    (out / layout.PARSED_DIR / "mine.txt").write_text("mine")
    assert main(args(6, "--overwrite")) == 0
    assert (out / layout.PARSED_DIR / "mine.txt").read_text() == "mine"
    assert [p.name for p in (out / layout.PARSED_DIR).iterdir()] == ["mine.txt"]


def test_an_output_name_too_long_is_one_line(tmp_path, capsys):
    assert main(_select(tmp_path / ("x" * 300))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "longer than the file system allows" in err


# --- a third probe's cases: outputs inside feature stores, indexes and model folders ---


def test_an_attribution_file_or_output_inside_a_feature_store_or_index_is_refused(tmp_path):
    from dataselect.outdir import check_output_file

    OutputFolder.claim(tmp_path / "fe", "features", None)
    OutputFolder.claim(tmp_path / "ix", "index", None)
    with pytest.raises(OutputConflictError, match="lies inside"):
        check_output_file(tmp_path / "fe" / "x.parquet", "attributions")
    for outer in ("fe", "ix"):
        for kind in ("selection", "index", "features"):
            with pytest.raises(OutputConflictError, match="lies inside"):
                OutputFolder.claim(tmp_path / outer / "sub", kind, None)
    with pytest.raises(OutputConflictError, match="holds"):
        OutputFolder.claim(tmp_path, "index", None)
    check_output_file(tmp_path / "elsewhere.parquet", "attributions")  # still fine


def test_features_and_attributions_refuse_an_out_inside_their_inputs_or_model(tmp_path):
    from types import SimpleNamespace

    from conftest import write_jsonl

    from dataselect import read_corpus
    from dataselect.errors import InputError
    from pipelines.feature_jobs import model_paths, run_features_job

    folder = tmp_path / "queries"
    folder.mkdir()
    write_jsonl(folder / "q.jsonl", [{"id": "a", "text": "hello there"}])
    model = tmp_path / "model"
    model.mkdir()
    featurizer = SimpleNamespace(model=str(model), checkpoints="a,b", local_workers="threads")
    assert model_paths(featurizer) == [str(model)]
    corpus = read_corpus(str(folder))
    for out in (folder / "fe", model / "fe"):
        with pytest.raises(InputError, match="lies inside the input"):
            run_features_job(featurizer, corpus, str(out))
        assert not out.exists()


@pytest.mark.slow
def test_a_model_folder_with_cut_weights_or_impossible_sizes_is_one_line(tmp_path):
    import json as _json

    import torch

    from dataselect.errors import InputError
    from models.lm import build_tiny_causal_lm, load_causal_lm

    texts = [f"document number {i} about python and data" for i in range(50)]
    folder = build_tiny_causal_lm(texts, tmp_path / "m", vocab_size=300, hidden_size=32)
    weights = next(Path(folder).glob("*.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(InputError, match="cannot load the model"):
        load_causal_lm(str(folder), torch.device("cpu"))
    folder = build_tiny_causal_lm(texts, tmp_path / "n", vocab_size=300, hidden_size=32)
    config = Path(folder) / "config.json"
    settings = _json.loads(config.read_text())
    settings["hidden_size"] = -32
    config.write_text(_json.dumps(settings))
    with pytest.raises(InputError, match="cannot load the model"):
        load_causal_lm(str(folder), torch.device("cpu"))
