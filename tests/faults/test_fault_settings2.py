"""Settings, round 2: one validation for the command line, the Python API and recipes.

Settings that contradict each other are refused (never one silently ignored); every public
function checks its numbers, booleans and argument types, and takes a path where a user
would pass one; recipes refuse a key given twice; every command that reads a pool refuses
the pools select refuses; a k beyond the eligible rows says so; and ``dataselect report``
deletes only its own files, draws the pool only as the job read it, and draws labels as
written."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import TARGETS, write_jsonl
from scoring_helpers import FixedScorer

from dataselect import NgramHasher, metrics, read_corpus, select
from dataselect.checks import SettingError
from dataselect.errors import DuplicateIdError, InputError
from dataselect.featurize import featurize
from pipelines.cli import main
from pipelines.jobs import SelectJob, run_select_job
from pipelines.recipe import RecipeError, load_recipe
from pipelines.report import write_report
from pipelines.summary import plain_console
from scorers.auto.scorer import Auto
from scorers.dsir import DSIR
from scorers.fasttext.scorer import FastText

TARGET = str(TARGETS / "python_docs.jsonl")
NAN = math.nan
DOMAINS = ("code", "docs", "$\\frac{a}{", "cost $5")  # the last two: mathtext to matplotlib


def _records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}",
             "domain": DOMAINS[i % len(DOMAINS)]} for i in range(start, start + n)]


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    folder = tmp_path / "pool"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", _records(20))
    return folder


def _select(pool: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target", TARGET,
            "--out", str(out), "--workers", "1", *extra]


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress bars may stand above it
    assert code == 2 and last.startswith("dataselect: error: ") and "Traceback" not in err, err
    return last


# ------------------------------------------------------------------ contradicting settings

CONTRADICTIONS = [("round_robin", "--threshold", "1"), ("round_robin", "--fraction", "0.5"),
                  ("top_k", "--threshold", "0"), ("importance_resample", "--threshold", "0")]


@pytest.mark.parametrize(("policy", "flag", "value"), CONTRADICTIONS)
def test_a_budget_the_policy_does_not_take_is_refused_on_the_command_line(
        policy, flag, value, pool, tmp_path, capsys):
    err = _one_line_exit_2(_select(pool, tmp_path / "out", "--policy", policy,
                                   f"{flag}={value}"), capsys)
    assert "'--policy'" in err and f"not {flag}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("policy", "flag", "value"), CONTRADICTIONS)
def test_a_budget_the_policy_does_not_take_is_refused_in_python(policy, flag, value):
    job = SelectJob(scorer="dsir", pool=["p"], target=["t"], out="o", policy=policy,
                    **{flag[2:]: float(value)})
    with pytest.raises(SettingError) as info:
        job.validate()
    assert info.value.field == "policy"


def test_round_robin_with_scores_that_keep_no_per_target_scores_is_refused_first(
        pool, tmp_path, capsys):
    err = _one_line_exit_2(_select(pool, tmp_path / "out", "--policy", "round_robin", "--k",
                                   "3"), capsys)
    assert "round_robin needs one score per target example" in err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize(("scorers", "refused"), [
    ("{dsir: {}}", True), ("{embed: {model: m}}", True),
    ("{embed: {model: m, per_target: true}, dsir: {}}", True),  # combined: one score a row
    ("{embed: {model: m, per_target: true}}", False),
])
def test_a_round_robin_recipe_needs_per_target_scores(scorers, refused, pool, tmp_path):
    path = _recipe(tmp_path, pool, "round_robin", extra="models: {m: {build: {}}}\n")
    path.write_text(path.read_text().replace("scorers: {dsir: {}}", f"scorers: {scorers}"))
    if not refused:
        assert load_recipe(path).selection.policy == "round_robin"
        return
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == "selection.policy"


@pytest.mark.parametrize("flags", [("--workers", "2"), ("--memory-limit", "4GiB"),
                                   ("--worker-kind", "threads")])
def test_local_cluster_flags_with_a_scheduler_are_refused(flags, pool, tmp_path, capsys):
    argv = _select(pool, tmp_path / "out", "--k", "3", "--scheduler", "tcp://127.0.0.1:1")
    at = argv.index("--workers")  # the helper's own --workers 1: a flag is given once
    argv[at:at + 2] = flags
    err = _one_line_exit_2(argv, capsys)
    assert f"'{flags[0]}'" in err and "--scheduler" in err


@pytest.mark.parametrize(("argv", "flag"), [
    (["index", "build", "--kind", "flat", "--nprobe", "4"], "--nprobe"),
    (["index", "build", "--kind", "hnsw", "--nlist", "4"], "--nlist"),
    (["index", "build", "--hnsw-m", "8"], "--hnsw-m"),  # the default kind is flat
    (["attribute", "--scorer", "less", "--index", "i", "--pool", "p", "--queries", "q"],
     "--pool"),  # --method less reads the pool's index
])
def test_feature_flags_for_another_kind_or_method_are_refused(argv, flag, tmp_path, capsys):
    rest = ["--features", str(tmp_path)] if argv[0] == "index" else []
    err = _one_line_exit_2([*argv, *rest, "--out", str(tmp_path / "out")], capsys)
    assert f"field '{flag}'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("settings", "field"), [
    ({"overwrite": "false"}, "overwrite"), ({"save_to_disk": 1}, "save_to_disk"),
    ({"output_format": "csv"}, "output_format"), ({"text_field": None}, "text_field"),
    ({"pool": 3}, "pool"), ({"scheduler": "tcp://h:1", "workers": 2}, "workers"),
])
def test_select_job_checks_every_setting(settings, field):
    job = SelectJob(**{"scorer": "dsir", "pool": ["p"], "target": ["t"], "out": "o", "k": 3,
                       **settings})
    with pytest.raises(InputError) as info:
        job.validate()
    assert info.value.field == field


# ------------------------------------------------------------------ recipes

RECIPE = """\
pool: {{paths: ["{pool}"]}}
targets:
  t: {{paths: "{target}"{budget}}}
scorers: {{dsir: {{}}}}
selection: {{policy: {policy}, k: 3}}
output: {{path: "{out}"}}
{extra}"""


def _recipe(tmp_path: Path, pool: Path, policy: str = "auto", budget: str = "",
            extra: str = "") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(pool=pool, target=TARGET, budget=budget, policy=policy,
                                  out=tmp_path / "out", extra=extra), encoding="utf-8")
    return path


@pytest.mark.parametrize(("policy", "budget"), [
    ("round_robin", ", budget: {fraction: 0.5}"), ("round_robin", ", budget: {threshold: 1}"),
    ("top_k", ", budget: {threshold: 1}")])
def test_a_recipe_budget_the_policy_does_not_take_is_refused(policy, budget, pool, tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(tmp_path, pool, policy, budget))
    assert info.value.field == "selection.policy" and "targets.t.budget." in str(info.value)


def test_a_recipe_with_a_scheduler_and_local_workers_is_refused(pool, tmp_path):
    path = _recipe(tmp_path, pool, extra="cluster: {scheduler: 'tcp://h:1', workers: 2}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == "cluster.workers"


@pytest.mark.parametrize(("extra", "key", "line"), [
    ("selection: {k: 5}\n", "'selection'", 7),                  # a second top-level key
    ("targets:\n  u: {paths: x}\n", "'targets'", 7),
    ("cluster:\n  workers: 1\n  workers: 2\n", "'workers'", 9),  # nested
    ("models: {m: {path: a, path: b}}\n", "'path'", 7),          # flow mapping, one line
])
def test_a_key_given_twice_is_refused_with_file_line_and_key(extra, key, line, pool,
                                                             tmp_path):
    path = _recipe(tmp_path, pool, extra=extra)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: key {key} appears twice"), message
    assert "\n" not in message


def test_two_tasks_named_alike_are_refused(pool, tmp_path):
    path = _recipe(tmp_path, pool)
    text = path.read_text().replace("targets:\n", f"targets:\n  t: {{paths: \"{TARGET}\"}}\n")
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"recipe.yaml:4: key 't' appears twice"):
        load_recipe(path)


def test_a_merge_key_may_still_be_overridden(pool, tmp_path):
    path = _recipe(tmp_path, pool, extra="base: &b {k: 3}\n")
    text = path.read_text().replace("base: &b {k: 3}\n", "").replace(
        "selection: {policy: auto, k: 3}", "defaults: &b {policy: top_k, k: 3}\n"
        "selection: {<<: *b, k: 4}")
    path.write_text(text)
    with pytest.raises(RecipeError) as info:  # "defaults" is no recipe key: validation ran
        load_recipe(path)
    assert info.value.field == "defaults"


@pytest.mark.parametrize(("old", "new", "field"), [
    ('pool: {paths:', 'pool: {text: "", paths:', "pool.text"),
    ('pool: {paths:', 'pool: {id_field: "", paths:', "pool.id_field"),
    ('output: {path: "', 'output: {path: "", x: "', "output.path"),
])
def test_recipe_names_are_not_empty(old, new, field, pool, tmp_path):
    path = _recipe(tmp_path, pool)
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == field


def test_recipe_booleans_are_booleans(pool, tmp_path):
    path = _recipe(tmp_path, pool)
    path.write_text(path.read_text().replace('output: {path:', 'output: {save_to_disk: 1, path:'))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == "output.save_to_disk"


# ------------------------------------------------------------------ Python API arguments

@pytest.fixture
def scored(pool):
    corpus = read_corpus(str(pool))
    return corpus, FixedScorer({f"d{i}": float(i) for i in range(20)}).score(corpus)


@pytest.mark.parametrize(("call", "field", "kind"), [
    (lambda p: read_corpus(p, partition_bytes=NAN), "partition_bytes", SettingError),
    (lambda p: read_corpus(p, partition_bytes=True), "partition_bytes", SettingError),
    (lambda p: read_corpus(p, partition_bytes=2**41), "partition_bytes", SettingError),
    (lambda p: read_corpus(3), "paths", TypeError),
    (lambda p: read_corpus([p, None]), "paths", TypeError),
    (lambda p: read_corpus(p, text=None), "text", TypeError),
    (lambda p: read_corpus(p).replanned(NAN), "partition_bytes", SettingError),
    (lambda p: read_corpus(p).read_partition(5), "index", SettingError),
    (lambda p: read_corpus(p).read_partition(-1), "index", SettingError),
    (lambda p: read_corpus(p).place(0, 99), "position", SettingError),
    (lambda p: read_corpus(p).cached_in(None), "folder", TypeError),
    (lambda p: NgramHasher(num_buckets=NAN), "num_buckets", SettingError),
    (lambda p: NgramHasher(ngram=True), "ngram", SettingError),
    (lambda p: NgramHasher()("one string"), "texts", TypeError),
    (lambda p: metrics.kl_reduction(np.ones(3), np.ones(3), np.ones(3), smoothing=NAN),
     "smoothing", SettingError),
    (lambda p: DSIR(length_normalize="no"), "length_normalize", TypeError),
    (lambda p: FastText(lowercase=1), "lowercase", TypeError),
    (lambda p: Auto(combine="false"), "combine", TypeError),
    (lambda p: DSIR.load(0), "path", TypeError),  # 0 would open standard input
])
def test_api_arguments_are_checked(call, field, kind, pool):
    with pytest.raises(kind) as info:
        call(str(pool))
    assert info.value.field == field


@pytest.mark.parametrize(("write", "field", "kind"), [
    ({"metrics_sample": NAN}, "metrics_sample", SettingError),
    ({"metrics_sample": 0}, "metrics_sample", SettingError),
    ({"metrics_sample": True}, "metrics_sample", SettingError),
    ({"overwrite": "no"}, "overwrite", TypeError),
    ({"save_to_disk": 1}, "save_to_disk", TypeError),
    ({"fmt": "csv"}, "fmt", SettingError),
    ({"target": 5}, "target", TypeError),
])
def test_write_checks_its_settings_before_writing(write, field, kind, scored, tmp_path):
    selection = select.top_k(*scored, k=3)
    with pytest.raises(kind) as info:
        selection.write(str(tmp_path / "out"), **write)
    assert info.value.field == field
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("call", "field", "kind"), [
    (lambda p, s: select.top_k(p, "not a store", k=3), None, InputError),
    (lambda p, s: select.top_k(p, 3, k=3), "scores", TypeError),
    (lambda p, s: select.top_k(3, s, k=3), "pool", TypeError),
    (lambda p, s: select.round_robin(p, s, k=3, column=None), "column", TypeError),
    (lambda p, s: select.combine([s, "x"]), "scores", TypeError),
    (lambda p, s: select.combine([s, s], method="mean"), "method", SettingError),
    (lambda p, s: select.combine([s, s], weights=[1.0]), "weights", SettingError),
    (lambda p, s: DSIR().fit(None, p), "target", TypeError),
    (lambda p, s: DSIR().fit(TARGET, 7), "pool", TypeError),
    (lambda p, s: DSIR().score(7), "corpus", TypeError),
])
def test_a_wrong_argument_is_an_error_naming_it(call, field, kind, scored):
    with pytest.raises(kind) as info:
        call(*scored)
    assert isinstance(info.value, InputError)  # one line on the command line
    assert info.value.field == field


def test_paths_are_taken_where_a_user_passes_them(pool, tmp_path):
    path = str(pool)
    from_paths = DSIR(num_buckets=500).fit(TARGET, path)
    scores = from_paths.score(path).write(str(tmp_path / "store"))
    corpus = read_corpus(path)
    from_corpora = DSIR(num_buckets=500).fit(read_corpus(TARGET), corpus).score(corpus)
    assert scores.partition(0)["score"].equals(from_corpora.partition(0)["score"])
    by_path = select.top_k(path, str(tmp_path / "store"), k=5)
    assert by_path.positions[0].tolist() == select.top_k(corpus, scores, k=5).positions[
        0].tolist()


# ------------------------------------------------------------------ pools every command refuses

@pytest.fixture
def duplicated_pool(tmp_path: Path) -> Path:
    folder = tmp_path / "dup"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", _records(5))
    write_jsonl(folder / "b.jsonl", _records(5, start=4))  # d4 again
    return folder


def test_score_refuses_ids_repeated_across_files_as_select_does(duplicated_pool, tmp_path,
                                                                capsys):
    for command in ("score", "select"):
        argv = _select(duplicated_pool, tmp_path / command, "--partition-mb", "0.0001")
        argv[0] = command
        if command == "select":
            argv += ["--k", "3"]
        err = _one_line_exit_2(argv, capsys)
        assert "duplicate id 'd4'" in err and "b.jsonl:1" in err and "a.jsonl:5" in err


class _ZeroFeatures:
    """A featurizer with one zero feature per row."""

    name = "zeros"
    uses_response_spans = False
    local_workers = "threads"

    def featurize_batch(self, batch: pa.Table, side: str = "pool") -> np.ndarray:
        return np.zeros((batch.num_rows, 1, 2), np.float32)

    def feature_description(self, side: str = "pool") -> dict:
        return {"scorer": "zeros", "dim": 2, "views": 1}


def test_features_refuse_ids_repeated_across_files(duplicated_pool, tmp_path):
    corpus = read_corpus(str(duplicated_pool), partition_bytes=100)
    with pytest.raises(DuplicateIdError, match="duplicate id 'd4'"):
        featurize(_ZeroFeatures(), corpus, str(tmp_path / "features"))


# ------------------------------------------------------------------ k beyond the pool

def test_k_beyond_the_eligible_rows_selects_them_all_and_says_so(pool, tmp_path, capsys):
    assert main(_select(pool, tmp_path / "out", "--k", "50")) == 0
    printed = capsys.readouterr().out
    assert "note: k = 50 asked for more rows than the 20 eligible ones: 20 selected" in printed
    manifest = json.loads((tmp_path / "out" / ".manifest.json").read_text())
    assert manifest["counts"]["k_requested"] == 50 and manifest["counts"]["selected"] == 20
    assert manifest["notes"] == [
        "k = 50 asked for more rows than the 20 eligible ones: 20 selected, fewer than k"]


def test_a_threshold_no_row_reaches_says_nothing_was_selected(scored):
    selection = select.threshold(*scored, 100.0)
    assert selection.num_selected == 0
    assert selection.notes == ["nothing selected: no eligible row scored at least the "
                               "threshold (filtered: none)"]


def test_k_within_the_pool_adds_no_note(scored, tmp_path):
    selection = select.top_k(*scored, k=20)
    assert selection.notes == [] and "k_requested" not in selection.counts
    manifest = selection.write(str(tmp_path / "out"))
    assert "notes" not in manifest


def test_the_api_records_k_beyond_the_pool(scored, tmp_path):
    for selection in (select.top_k(*scored, k=21),
                      select.importance_resample(*scored, k=99, seed=1)):
        assert selection.num_selected == 20 and selection.counts["k_requested"] > 20
        assert selection.notes and "fewer than k" in selection.notes[0]


def test_a_recipe_records_k_beyond_the_pool(pool, tmp_path, capsys):
    path = _recipe(tmp_path, pool, budget=", budget: {k: 40}", extra="cluster: {workers: 1}\n")
    assert main(["run", str(path)]) == 0
    assert "note: t: k = 40 asked for more rows than the 20 eligible ones" in \
        capsys.readouterr().out
    run = json.loads((tmp_path / "out" / ".run.json").read_text())
    assert run["tasks"]["t"]["counts"]["k_requested"] == 40 and run["tasks"]["t"]["notes"]


# ------------------------------------------------------------------ report

@pytest.fixture
def selected(pool, tmp_path) -> Path:
    out = tmp_path / "selected"
    run_select_job(SelectJob(scorer="dsir", pool=[str(pool)], target=[TARGET], k=8,
                             out=str(out), workers=1), console=plain_console(file=io.StringIO()))
    return out


def test_report_keeps_the_users_files_and_draws_labels_literally(selected, capsys):
    folder = selected / ".report"
    folder.mkdir()
    (folder / "my_notes.png").write_bytes(b"mine")
    assert main(["report", str(selected)]) == 0  # domains hold $\frac{a}{ and $5
    assert (folder / "composition_domain.png").exists()
    assert main(["report", str(selected)]) == 0  # a rerun replaces only its own files
    assert (folder / "my_notes.png").read_bytes() == b"mine"
    capsys.readouterr()
    (folder / "kl_reduction.png").unlink()
    (folder / "kl_reduction.png").write_bytes(b"also mine")  # a listed name, changed since
    err = _one_line_exit_2(["report", str(selected)], capsys)
    assert "kl_reduction.png: was changed since dataselect report wrote it" in err
    assert (folder / "kl_reduction.png").read_bytes() == b"also mine"
    (folder / "kl_reduction.png").unlink()  # moved away: the report writes it again
    assert main(["report", str(selected)]) == 0


def test_report_refuses_to_replace_a_page_edited_since(selected, capsys):
    """The rerun deleted and rewrote the user's notes in index.html (pass 20, g03)."""
    assert main(["report", str(selected)]) == 0
    page = selected / ".report" / "index.html"
    page.write_text(page.read_text() + "<p>my notes</p>")
    capsys.readouterr()
    err = _one_line_exit_2(["report", str(selected)], capsys)
    assert "index.html: was changed since dataselect report wrote it" in err
    assert page.read_text().endswith("<p>my notes</p>")
    assert main(["report", str(selected)]) == 2  # and on every rerun


def test_report_refuses_a_name_it_did_not_write(selected, capsys):
    folder = selected / ".report"
    folder.mkdir()
    (folder / "index.html").write_text("my page")
    err = _one_line_exit_2(["report", str(selected)], capsys)
    assert "index.html: exists and is not a file dataselect report wrote" in err
    assert (folder / "index.html").read_text() == "my page"


def test_report_refuses_a_report_folder_that_links_elsewhere(selected, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (selected / ".report").symlink_to(elsewhere)
    err = _one_line_exit_2(["report", str(selected)], capsys)
    assert "is a symbolic link" in err and list(elsewhere.iterdir()) == []


def test_report_refuses_a_pool_changed_since_the_job(selected, pool, capsys):
    write_jsonl(pool / "a.jsonl", _records(21))
    err = _one_line_exit_2(["report", str(selected)], capsys)
    assert "the pool changed since the job ran" in err and "a.jsonl" in err
    assert not (selected / ".report").exists()


def test_report_via_the_api_also_refuses_a_changed_pool(selected, pool):
    (pool / "a.jsonl").write_text((pool / "a.jsonl").read_text().replace("code", "edoc"))
    with pytest.raises(InputError, match="the pool changed since the job ran"):
        write_report(str(selected))
