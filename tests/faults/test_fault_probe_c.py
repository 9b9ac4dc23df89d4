"""Probe round C (the fourth hostile pass): plug-ins that exit or name themselves as paths,
scores Arrow would not cast, an index written past the file-size limit, local clusters too
large to start, repeated evaluation tasks, and manifests that strict JSON readers refuse."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_fault_errors2 import (  # noqa: F401  (the fixture)
    ROOT,
    _dsir_argv,
    _one_error_line,
    broken_plugin,
)

from dataselect import checks
from dataselect.errors import InputError
from dataselect.features import FeatureStore
from dataselect.output import write_json
from pipelines.cli import main

# --- plug-ins ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test here may register a plug-in: the registry forgets it afterwards (after the
    test's sys.path is restored), or later tests would list its name."""
    from scorers import SCORERS

    yield
    SCORERS.refresh()


EXITING_PLUGIN = '''
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from dataselect.scoring import Scorer


@dataclass
class Length(Scorer):
    name: ClassVar[str] = "length"
    where: str = "score_batch"
    code: int = 0
    how: str = "fine"

    @property
    def local_workers(self) -> str:
        return "threads"

    def fit(self, target, pool=None, runner=None):
        self.fingerprint_ = self.how
        if self.where == "fit":
            sys.exit(self.code)
        return self

    def score_batch(self, batch):
        n = batch.num_rows
        if self.where == "score_batch":
            sys.exit(self.code)
        if self.how == "two_scores":
            return pa.Table.from_arrays([batch["id"], pa.array(np.ones(n)),
                                         pa.array(np.ones(n))], ["id", "score", "score"])
        if self.how == "huge_uint":
            return pa.table({"id": batch["id"], "score": pa.array(
                [2**64 - 1 - i for i in range(n)], pa.uint64())})
        if self.how == "nan_config":
            return pa.table({"id": batch["id"], "score": np.arange(n, dtype=float)})
        return pa.table({"id": batch["id"], "score": np.arange(n, dtype=float)})

    def config(self):
        return {"where": self.where, "code": self.code,
                "x": float("nan") if self.how == "nan_config" else 1.0}
'''


@pytest.fixture
def exiting_plugin(broken_plugin, tmp_path):  # noqa: F811
    from scorers import SCORERS

    (tmp_path / "plugin" / "plug_scorer.py").write_text(EXITING_PLUGIN)
    sys.modules.pop("plug_scorer", None)
    SCORERS.refresh()


def _plugin_argv(tmp_path: Path, *params: str, command: str = "select") -> list[str]:
    argv = _dsir_argv(tmp_path, "--workers", "1")
    argv[argv.index("dsir")] = "length"
    argv[3:3] = [item for p in params for item in ("-p", p)]
    if command == "score":
        argv = ["score", *[a for a in argv[1:] if a not in ("--k", "5")]]
    return argv


@pytest.mark.parametrize("command", ["select", "score"])
@pytest.mark.parametrize(("where", "code"), [("fit", 0), ("score_batch", 0),
                                             ("score_batch", 1)])
def test_a_plugin_calling_sys_exit_is_one_line_naming_it(tmp_path, capsys, exiting_plugin,
                                                        command, where, code):
    """sys.exit(0) in a plug-in's fit or score_batch ended the job with exit 0, nothing
    printed and nothing written; sys.exit(1) with exit 1 and no message."""
    assert main(_plugin_argv(tmp_path, f"where={where}", f"code={code}",
                             command=command)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"scorer 'length' (plug_scorer.Length, a plug-in) raised SystemExit in {where}" \
        in line


@pytest.mark.parametrize(("how", "expected"), [
    ("two_scores", "returned 'score' more than once"),
])
def test_a_plugin_returning_a_column_twice_breaks_the_contract(tmp_path, capsys,
                                                                exiting_plugin, how, expected):
    assert main(_plugin_argv(tmp_path, "where=nowhere", f"how={how}")) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_integer_scores_past_the_doubles_exact_range_are_rounded_not_refused(
        tmp_path, exiting_plugin):
    """A uint64 score of 2**64 - 1 reached Arrow's checked cast as a traceback; it is a
    number, taken to the nearest double like any integer score."""
    import pyarrow.parquet as pq

    assert main(_plugin_argv(tmp_path, "where=nowhere", "how=huge_uint")) == 0
    scores = pq.read_table(tmp_path / "out")["score"].to_pylist()
    assert len(scores) == 5 and all(s == pytest.approx(2.0**64) for s in scores)


def test_a_plugins_nan_config_is_refused_not_written(tmp_path, exiting_plugin, capsys):
    """config() holding NaN made both manifests bare ``NaN``, which is not JSON; written as
    null, NaN and both infinities were one job identity (pass 10, g04), so it is refused
    in one line naming the plug-in, and nothing is written."""
    assert main(_plugin_argv(tmp_path, "where=nowhere", "how=nan_config")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "NaN or infinity" in err and "config()" in err, err
    assert not (tmp_path / "out" / ".manifest.json").exists()


def test_manifests_are_strict_json_whatever_floats_they_hold(tmp_path):
    write_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -np.inf}},
               tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "a": None, "b": [None, 1.5], "c": {"d": None}}


@pytest.mark.parametrize("name", ["/abs/path", "../../escape", "..", ".hidden", "a/b", ""])
def test_a_scorer_registered_under_a_path_like_name_is_refused(tmp_path, capsys, monkeypatch,
                                                               name):
    """A plug-in registered (and calling itself) '/abs/dir' had its score store written at
    /abs/dir, and '../../x' at OUT/../x: the name is a folder of the output."""
    from test_plugins import install_plugin

    from scorers import SCORERS

    root = tmp_path / "plugin"
    root.mkdir()
    install_plugin(root, monkeypatch)
    source = (root / "plug_scorer.py").read_text()
    (root / "plug_scorer.py").write_text(
        source.replace('name: ClassVar[str] = "length"', f"name: ClassVar[str] = {name!r}"))
    info = next(root.glob("*.dist-info"))
    (info / "entry_points.txt").write_text(
        f"[dataselect.scorers]\n{name} = plug_scorer:Length\n")
    SCORERS.refresh()
    if name not in SCORERS.names():  # an entry point with no name is not listed at all
        return
    with pytest.raises(InputError, match="a scorer's name must be ASCII letters, digits"):
        SCORERS[name]
    outside = Path("/abs") if name.startswith("/") else tmp_path
    assert not (outside / "path").exists() and not (tmp_path.parent / "escape").exists()


# --- an index past the file-size limit ----------------------------------------------------

def test_index_build_past_the_file_size_limit_is_one_line(tmp_path):
    """faiss.write_index reported EFBIG as a RuntimeError ("File too large") with a
    traceback; it is the same one line as every other write past ulimit -f."""
    store = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 64, "views": 1})
    vectors = np.random.default_rng(0).normal(size=(400, 1, 64)).astype(np.float32)
    store.write_part(0, pa.array([f"r{i}" for i in range(400)]), vectors)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    done = subprocess.run(
        [sys.executable, "-m", "pipelines.console", "index", "build", "--features",
         str(tmp_path / "f"), "--out", str(tmp_path / "i")], preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert "File too large" in line and "ulimit -f" in line


def test_faiss_errors_keep_other_runtime_errors():
    from attribution.index import faiss_os_errors

    with pytest.raises(OSError) as raised, faiss_os_errors("/x/index.faiss"):
        raise RuntimeError("Error in faiss::write_index: ... (No space left on device)")
    assert raised.value.errno == 28 and raised.value.filename == "/x/index.faiss"
    with pytest.raises(RuntimeError, match="something else"), faiss_os_errors("/x"):
        raise RuntimeError("something else")


# --- local clusters and evaluation settings -----------------------------------------------

@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_more_local_workers_than_a_machine_can_start_is_one_line(tmp_path, capsys, kind):
    """--workers 100000 with process workers built Dask nannies one at a time for minutes
    (deaf to Ctrl-C) before failing."""
    too_many = checks.max_local_workers() + 1
    argv = _dsir_argv(tmp_path, "--workers", str(too_many), "--worker-kind", kind)
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{too_many} local workers" in line and f"at most {checks.max_local_workers()}" \
        in line
    assert not (tmp_path / "out").exists()


def test_the_python_api_refuses_too_many_local_workers_too():
    from pipelines.cluster import dask_client

    with pytest.raises(InputError, match="local workers"), \
            dask_client(workers=checks.max_local_workers() + 1, kind="threads"):
        pass


def test_a_cluster_may_have_as_many_workers_as_it_likes():
    checks.check_cluster("tcp://127.0.0.1:8786", {"workers": None})
    checks.check_local_workers(checks.max_local_workers())


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--tasks", "a,a", "tasks repeat"),
    ("--tasks", "a,,b", "has an empty item"),
    ("--seeds", "0,,1", "has an empty item"),
])
def test_eval_refuses_repeated_or_empty_items(tmp_path, capsys, flag, value, expected):
    """--tasks a,a trained every model twice and counted it twice; 0,,1 read as 0,1."""
    try:
        code = main(["eval", str(tmp_path), flag, value, "--steps", "1"])
    except SystemExit as exited:  # a flag argparse refuses: its usage line and exit 2
        code = exited.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err


# --- recipes: integers as written ----------------------------------------------------------

@pytest.mark.parametrize(("text", "read_as"), [("017", 15), ("0x10", 16), ("1:30", 90),
                                               ("0b11", 3)])
def test_a_recipe_integer_yaml_11_reads_otherwise_is_refused(text, read_as):
    """YAML 1.1 made ``seed: 017`` the seed 15 and ``k: 0x10`` k = 16, silently."""
    from pipelines.recipe_errors import RecipeError
    from pipelines.recipe_yaml import _parse_yaml

    with pytest.raises(RecipeError, match=f"would read it as {read_as}") as raised:
        _parse_yaml(f"selection:\n  k: {text}\n", "r.yaml")
    assert raised.value.where == "r.yaml:2"
    assert _parse_yaml("a: 17\nb: -3\nc: 1_000\nd: '017'\n", "r.yaml") == {
        "a": 17, "b": -3, "c": 1000, "d": "017"}


# --- report and eval read only inside the output folder -----------------------------------

def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_report_refuses_a_manifest_whose_scorer_leads_outside(tmp_path, capsys):
    """A manifest edited to name the scorer '../../xx' made report open
    OUT/.scores/../../xx/part-00000.parquet, outside the folder, and exit 0."""
    out = tmp_path / "out"
    assert main(_dsir_argv(tmp_path, "--workers", "1", "--worker-kind", "threads")) == 0
    outside = tmp_path / "xx"
    outside.mkdir()
    (outside / "part-00000.parquet").write_bytes((next(
        (out / ".scores" / "dsir").glob("part-*.parquet"))).read_bytes())
    _edit_json(out / ".manifest.json", lambda m: m["scores"].update(scorer="../../xx"))
    assert main(["report", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ".manifest.json" in line and "'../../xx' is not a scorer's name" in line
    assert not (out / ".report").exists() or not list((out / ".report").glob("*xx*"))


@pytest.fixture
def recipe_run(tmp_path: Path) -> Path:
    from test_fault_probe_b import recipe_run as make

    return make.__wrapped__(tmp_path)


@pytest.mark.parametrize(("edit", "shown"), [
    (lambda r: r["tasks"]["a"].update(path="../s4"), "task 'a' is not in tasks/<task>"),
    (lambda r: r.update(scorers=["../../x"]), "scorer '../../x' is not a scorer's name"),
    (lambda r: r["tasks"].update({"../x": r["tasks"].pop("a")}), "task '../x'"),
])
@pytest.mark.parametrize("command", ["report", "eval"])
def test_a_run_record_leading_outside_is_refused(recipe_run, capsys, edit, shown, command):
    """A .run.json edited to give a task the path '../s4' made report list and read
    OUT/../s4."""
    _edit_json(recipe_run / ".run.json", edit)
    argv = [command, str(recipe_run)] + (["--steps", "1", "--workers", "1"]
                                         if command == "eval" else [])
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ".run.json" in line and shown in line


def test_eval_on_a_run_record_whose_recipe_no_longer_validates_is_one_line(recipe_run,
                                                                            capsys):
    _edit_json(recipe_run / ".run.json",
               lambda r: r["recipe"]["selection"].update(k="many"))
    assert main(["eval", str(recipe_run), "--steps", "1", "--workers", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ".run.json" in line and "recipe no longer validates (selection" in line


# --- plug-ins that fail while imported; storage URLs nobody answers -----------------------

@pytest.mark.parametrize(("body", "kind"), [
    ("raise RuntimeError('no GPU here')", "RuntimeError"),
    ("def broken(:\n    pass", "SyntaxError"),
    ("import sys\nsys.exit(3)", "SystemExit"),
])
def test_a_plugin_failing_while_imported_is_one_line(tmp_path, capsys, monkeypatch, body, kind):
    """Only ImportError and AttributeError were caught: a plug-in module raising anything
    else at import was a traceback (exit 1), and sys.exit(3) ended dataselect silently."""
    from test_plugins import install_plugin

    root = tmp_path / "plugin"
    root.mkdir()
    install_plugin(root, monkeypatch)
    (root / "plug_scorer.py").write_text(body + "\n")
    expected = f"scorer 'length' (plug_scorer:Length) failed while its module was imported " \
        f"({kind}"
    assert main(_plugin_argv(tmp_path)) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert main(["scorers"]) == 0  # the listing shows the broken plug-in with its error
    listed = capsys.readouterr()
    assert expected in " ".join(listed.out.split()) and "Traceback" not in listed.err


@pytest.mark.parametrize("where", ["out", "pool"])
def test_a_storage_url_nobody_answers_is_one_line(tmp_path, capsys, where):
    """http and ftp URLs where nothing listens gave aiohttp's and ftplib's tracebacks."""
    argv = _dsir_argv(tmp_path, "--workers", "1", "--worker-kind", "threads")
    if where == "out":
        argv[argv.index("--out") + 1] = "ftp://127.0.0.1:1/x"
    else:
        argv[argv.index("--pool") + 1] = "ftp://127.0.0.1:1/x.parquet"
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot reach the storage" in line and "check the URL" in line


# --- column types whose rows Arrow cannot take ----------------------------------------------

def _typed_column(kind: str, n: int) -> pa.Array:
    if kind == "string_view":
        return pa.array([f"pool row {i} about software licenses" for i in range(n)],
                        pa.string_view())
    if kind == "run_end_encoded":
        return pa.RunEndEncodedArray.from_arrays([n], ["same"])
    return pa.UnionArray.from_sparse(pa.array([0] * n, pa.int8()), [pa.array(range(n))])


@pytest.mark.parametrize(("kind", "fmt", "column"), [
    ("string_view", "parquet", "text"), ("string_view", "parquet", "note"),
    ("string_view", "arrow", "text"), ("run_end_encoded", "arrow", "note"),
    ("sparse_union", "arrow", "note"),
])
def test_a_column_arrow_cannot_take_rows_of_is_refused_before_work(tmp_path, capsys, kind,
                                                                   fmt, column):
    """A string_view or run-end-encoded column failed in the write pass (array_take has no
    kernel), a union column when an empty part was made: tracebacks after scoring."""
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    n = 30
    table = pa.table({"id": [f"p{i}" for i in range(n)],
                      "text": [f"pool row {i} about software licenses" for i in range(n)]})
    table = table.append_column(column, _typed_column(kind, n)) if column == "note" else \
        table.set_column(1, "text", _typed_column(kind, n))
    pool = tmp_path / f"pool.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, pool)
    else:
        feather.write_feather(table, pool, compression="uncompressed")
    argv = _dsir_argv(tmp_path, "--workers", "1", "--worker-kind", "threads")
    argv[argv.index("--pool") + 1] = str(pool)
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"field '{column}': has type" in line and "cannot pick out" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_column_parquet_cannot_store_is_refused_before_work(tmp_path, capsys, fmt):
    """A month-day-nano interval column reached pq.write_table in the write pass, after
    scoring, as a traceback; written as Arrow it is kept."""
    import pyarrow.feather as feather

    n = 30
    table = pa.table({"id": [f"p{i}" for i in range(n)],
                      "text": [f"pool row {i} about software licenses" for i in range(n)],
                      "wait": pa.array([(1, 2, 3)] * n, pa.month_day_nano_interval())})
    pool = tmp_path / "pool.arrow"
    feather.write_feather(table, pool, compression="uncompressed")
    argv = _dsir_argv(tmp_path, "--workers", "1", "--worker-kind", "threads", "--format", fmt)
    argv[argv.index("--pool") + 1] = str(pool)
    if fmt == "arrow":
        assert main(argv) == 0
        return
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "field 'wait': has type month_day_nano_interval, which Parquet cannot store" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["abc", [1], True])
def test_report_on_a_manifest_whose_metric_is_not_a_number_is_one_line(tmp_path, capsys,
                                                                       value):
    out = tmp_path / "out"
    assert main(_dsir_argv(tmp_path, "--workers", "1", "--worker-kind", "threads")) == 0
    _edit_json(out / ".manifest.json", lambda m: m["metrics"].update(kl_reduction=value))
    assert main(["report", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ".manifest.json" in line and "metric 'kl_reduction'" in line


@pytest.mark.parametrize(("ids", "shown"), [
    ([["a", "b"], ["b", "c"]], "id 'b' has features twice"),
    ([["a", None], ["c", "d"]], "an id of the features is None"),
])
def test_index_build_refuses_repeated_or_null_ids(tmp_path, capsys, ids, shown):
    """Features with one id in two parts (or a null id) built an index whose search gave
    that id twice for one query (or None), exit 0."""
    store = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 4, "views": 1})
    rng = np.random.default_rng(0)
    for part, names in enumerate(ids):
        store.write_part(part, pa.array(names, pa.string()),
                         rng.normal(size=(len(names), 1, 4)).astype(np.float32))
    assert main(["index", "build", "--features", str(tmp_path / "f"), "--out",
                 str(tmp_path / "i")]) == 2
    assert shown in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "i" / "index.faiss").exists()
