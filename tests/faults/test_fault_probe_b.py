"""Probe round B: what dataselect reads back from its own outputs, and settings checked up
front.

A file dataselect wrote (a manifest, a run record, a marker, a store's description, a
feature matrix, an index, a part's counts) that was cut short or edited is one line naming
the file and the fix, never a traceback; an output folder a report or evaluation needs that
went missing is refused by name; ``eval`` refuses inputs that changed since the run; a
metrics sample with no rows is refused; HF-incompatible pool columns are refused before any
work with ``save_to_disk``; a scorer's missing required setting names ``-p``; ``--device``
is checked before any work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import TARGETS, write_jsonl

from attribution.index import FeatureIndex
from dataselect.errors import InputError
from dataselect.features import FeatureStore
from dataselect.output import read_json
from pipelines.cli import main

TARGET = str(TARGETS / "python_docs.jsonl")


def _records(n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}"}
            for i in range(n)]


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", _records(30))


def _select(pool: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target", TARGET,
            "--out", str(out), "--workers", "1", "--worker-kind", "threads", "--k", "5",
            *extra]


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("dataselect: error: ") and "Traceback" not in err, err
    return last


# ------------------------------------------------------------ damaged files of our own

@pytest.mark.parametrize("text", ["{bad", "[1, 2]", "\xff\xfe"])
def test_a_damaged_json_file_of_ours_is_one_line_naming_it(tmp_path, text):
    path = tmp_path / ".manifest.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=r"\.manifest\.json.*(damaged|edited)"):
        read_json(path)


@pytest.mark.parametrize("name", [".manifest.json", ".stats/part-00000.npz"])
def test_report_on_a_selection_with_a_damaged_file_names_it(pool, tmp_path, capsys, name):
    out = tmp_path / "out"
    assert main(_select(pool, out)) == 0
    damaged = out / name
    damaged.write_bytes(damaged.read_bytes()[:20] if name.endswith(".npz") else b"{bad")
    if name.endswith(".npz"):  # read back through the helper the writer uses
        from dataselect.output import load_arrays

        with pytest.raises(InputError, match=r"part-00000\.npz"):
            load_arrays(damaged)
        return
    line = _one_line_exit_2(["report", str(out)], capsys)
    assert name in line and "rerun" in line


def test_a_truncated_feature_matrix_is_one_line_naming_it(tmp_path):
    store = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 3, "views": 1})
    store.write_part(0, pa.array(["a", "b"]), np.ones((2, 1, 3), np.float32))
    matrix = Path(store.matrix_path(0))
    matrix.write_bytes(matrix.read_bytes()[:30])
    with pytest.raises(InputError, match=r"part-00000\.npy.*cannot be read"):
        store.read_part(0)
    (tmp_path / "f" / "_manifest.json").write_text("{bad")
    with pytest.raises(InputError, match=r"_manifest\.json"):
        FeatureStore.open(tmp_path / "f")


def test_a_damaged_faiss_index_or_ids_is_one_line_naming_it(tmp_path):
    vectors = np.eye(4, dtype=np.float32)
    FeatureIndex.build([(["a", "b", "c", "d"], vectors)], 4).save(tmp_path / "i")
    files = sorted(p for p in (tmp_path / "i").iterdir() if not p.name.startswith("."))
    for path in files:
        kept = path.read_bytes()
        path.write_bytes(kept[:len(kept) // 2])
        with pytest.raises(InputError, match=re.escape(path.name)):
            FeatureIndex.load(tmp_path / "i")
        path.write_bytes(kept)


# ------------------------------------------------------------ a recipe run's inputs and outputs

@pytest.fixture
def recipe_run(tmp_path: Path) -> Path:
    """A two-task recipe run over a 40-row pool, with held-out rows per task."""
    import yaml

    write_jsonl(tmp_path / "pool.jsonl", _records(40))
    targets = {}
    for task in ("a", "b"):
        write_jsonl(tmp_path / f"{task}.jsonl", _records(8))
        write_jsonl(tmp_path / f"{task}.eval.jsonl",
                    [{"id": f"e{i}", "text": f"print({i})"} for i in range(3)])
        targets[task] = {"paths": str(tmp_path / f"{task}.jsonl"),
                         "eval": str(tmp_path / f"{task}.eval.jsonl")}
    recipe = {"pool": {"paths": str(tmp_path / "pool.jsonl")}, "targets": targets,
              "scorers": {"dsir": {"num_buckets": 1000}},
              "selection": {"policy": "top_k", "k": 5}, "output": {"path": str(tmp_path / "out")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    return tmp_path / "out"


def test_report_refuses_a_run_whose_outputs_went_missing(recipe_run, capsys):
    import shutil

    part = next((recipe_run / "union").glob("part-*"))
    kept = part.read_bytes()
    part.unlink()
    line = _one_line_exit_2(["report", str(recipe_run)], capsys)
    assert "union" in line and part.name in line and "missing" in line
    part.write_bytes(kept)
    shutil.rmtree(recipe_run / "union")
    assert "union" in _one_line_exit_2(["report", str(recipe_run)], capsys)
    shutil.rmtree(recipe_run / "tasks" / "b")
    line = _one_line_exit_2(["report", str(recipe_run)], capsys)
    assert "tasks/b" in line and "missing" in line


@pytest.mark.parametrize("edited", ["a.eval.jsonl", "b.jsonl", "pool.jsonl"])
def test_eval_refuses_inputs_that_changed_since_the_run(recipe_run, capsys, edited):
    path = recipe_run.parent / edited
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    line = _one_line_exit_2(["eval", str(recipe_run), "--seeds", "0", "--steps", "1",
                             "--workers", "1"], capsys)
    assert edited in line and "changed since the run" in line
    assert not (recipe_run / "eval" / "results.json").exists()


# ------------------------------------------------------------ required settings, devices

@pytest.mark.parametrize("argv", [
    ["features", "--scorer", "embed", "--side", "pool"],
    ["features", "--scorer", "less", "--side", "pool"],
    ["select", "--scorer", "bads", "--k", "2", "--target", TARGET],
    ["select", "--scorer", "embed", "--k", "2", "--target", TARGET],
    ["attribute", "--method", "trak", "--queries", TARGET, "-k", "1"],
])
def test_a_missing_required_setting_names_p(pool, tmp_path, capsys, argv):
    place = ["--input" if argv[0] == "features" else "--pool", str(pool)]
    line = _one_line_exit_2([*argv, *place, "--out", str(tmp_path / "o")], capsys)
    assert "'model'" in line and "-p model=" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_recipe_scorer_without_its_required_setting_names_it(pool, tmp_path, capsys):
    import yaml

    recipe = {"pool": {"paths": str(pool)}, "targets": {"t": {"paths": TARGET}},
              "scorers": {"embed": {}}, "selection": {"policy": "top_k", "k": 2},
              "output": {"path": str(tmp_path / "out")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    line = _one_line_exit_2(["run", str(tmp_path / "r.yaml")], capsys)
    assert "embed" in line and "model" in line and "Traceback" not in line


def test_a_plugin_setting_without_default_is_named():
    import dataclasses

    from dataselect.params import validate_settings

    @dataclasses.dataclass
    class Plugin:
        path: str
        seed: int  # the job fills a seed in
        scale: float = 1.0

    with pytest.raises(InputError, match=r"plugin needs the setting 'path'.*-p path="):
        validate_settings(Plugin, {"scale": 2.0}, "plugin")
    assert validate_settings(Plugin, {"path": "x"}, "plugin") == {"path": "x"}


NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "meta", "", 
                                    pytest.param("cuda:7", marks=NO_CUDA),
                                    pytest.param("cuda", marks=NO_CUDA)])
def test_warmup_checks_its_device_before_any_work(pool, tmp_path, capsys, device):
    line = _one_line_exit_2(["warmup", "--model", str(tmp_path / "no-model"), "--pool",
                             str(pool), "--out", str(tmp_path / "w"), "--device", device],
                            capsys)
    assert "--device" in line and (device in line or "device" in line)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv", [
    ["select", "--scorer", "embed", "--k", "2", "--target", TARGET],
    ["select", "--scorer", "bads", "--k", "2", "--target", TARGET],
    ["features", "--scorer", "less", "--side", "pool"],
    ["attribute", "--method", "trak", "--queries", TARGET, "-k", "1"],
])
def test_a_scorer_device_that_is_no_device_is_one_line(pool, tmp_path, capsys, argv):
    place = ["--input" if argv[0] == "features" else "--pool", str(pool)]
    # the model a folder beside --out, not around it: an output inside a model folder is
    # refused too, and attribute checks its output before it builds the method
    (tmp_path / "m").mkdir()
    line = _one_line_exit_2([*argv, *place, "--out", str(tmp_path / "o"), "-p",
                             f"model={tmp_path / 'm'}", "-p", "device=bogus"], capsys)
    assert "'device'" in line and "bogus" in line


@NO_CUDA
def test_a_missing_gpu_is_one_line_where_the_model_runs():
    from dataselect.checks import SettingError
    from models.lm import pick_device

    for device in ("cuda", "cuda:7"):
        with pytest.raises(SettingError, match="no CUDA device"):
            pick_device(device)
    assert pick_device("cpu").type == "cpu"


# ------------------------------------------------------------ metrics from no rows

def test_a_metrics_sample_of_no_row_records_null_and_says_why(pool, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_select(pool, out, "--metrics-sample", "1e-300")) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / ".manifest.json").read_text())["metrics"]
    assert metrics["kl_target_pool"] is None and metrics["kl_reduction"] is None
    assert metrics["kl_target_selected"] is not None
    assert metrics["pool_sample_fraction"] == 1e-300  # as given, not rounded to 0.0
    assert "--metrics-sample" in metrics["metrics_note"]
    assert "--metrics-sample" in printed
    assert main(["report", str(out)]) == 0  # the page draws the missing number as a gap


def test_a_pool_sample_of_one_row_still_gives_the_kl():
    from dataselect.metrics import kl_reduction

    one_row = np.zeros(8, np.int64)
    one_row[3] = 2
    found = kl_reduction(np.ones(8, np.int64), one_row, np.zeros(8, np.int64))
    assert isinstance(found["kl_target_pool"], float) and found["kl_target_selected"] is None
    assert found["kl_reduction"] is None and "selection" in found["metrics_note"]


# ------------------------------------------------------------ save_to_disk and pool types

@pytest.fixture
def map_pool(tmp_path: Path) -> Path:
    import pyarrow.parquet as pq

    rows = _records(6)
    table = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                      "m": pa.array([[("k", i)] for i in range(6)],
                                    pa.map_(pa.string(), pa.int64()))})
    pq.write_table(table, tmp_path / "map.parquet")
    return tmp_path / "map.parquet"


def test_a_column_datasets_cannot_hold_is_refused_before_any_work(map_pool, tmp_path):
    from dataselect.corpus import read_corpus
    from dataselect.hf import check_hf_schema

    with pytest.raises(InputError, match=r"map\.parquet.*field 'm'.*--save-to-disk"):
        check_hf_schema(read_corpus(str(map_pool)))
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(map_pool).drop_columns(["m"]), tmp_path / "plain.parquet")
    check_hf_schema(read_corpus(str(tmp_path / "plain.parquet")))  # no error


def test_a_recipe_with_save_to_disk_refuses_a_map_column_up_front(map_pool, tmp_path, capsys):
    import yaml

    recipe = {"pool": {"paths": str(map_pool)}, "targets": {"t": {"paths": TARGET}},
              "scorers": {"dsir": {"num_buckets": 1000}},
              "selection": {"policy": "top_k", "k": 2},
              "output": {"path": str(tmp_path / "out"), "save_to_disk": True},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    line = _one_line_exit_2(["run", str(tmp_path / "r.yaml")], capsys)
    assert "'m'" in line and "save_to_disk" in line
    assert not (tmp_path / "out").exists()


def test_select_with_save_to_disk_names_a_map_column(map_pool, tmp_path, capsys):
    line = _one_line_exit_2(_select(map_pool, tmp_path / "out", "--save-to-disk"), capsys)
    assert "'m'" in line and "--save-to-disk" in line


@pytest.mark.parametrize("part", ["part-00000.parquet", ".scores/dsir/part-00000.parquet"])
def test_report_names_a_truncated_part_or_score_store_file(pool, tmp_path, capsys, part):
    out = tmp_path / "out"
    assert main(_select(pool, out)) == 0
    damaged = out / part
    damaged.write_bytes(damaged.read_bytes()[:40])
    line = _one_line_exit_2(["report", str(out)], capsys)
    assert part.split("/")[-1] in line and "rerun" in line


@pytest.mark.parametrize("name", [".run.json", "tasks/a/.manifest.json", ".dataselect.json",
                                  "union/.manifest.json", "eval/results.json"])
def test_report_on_a_run_with_a_damaged_file_names_it(recipe_run, capsys, name):
    path = recipe_run / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("{bad")
    line = _one_line_exit_2(["report", str(recipe_run)], capsys)
    assert name.split("/")[-1] in line


def test_eval_refuses_a_selection_missing_a_part(recipe_run, capsys):
    next((recipe_run / "tasks" / "a").glob("part-*")).unlink()
    line = _one_line_exit_2(["eval", str(recipe_run), "--seeds", "0", "--steps", "1",
                             "--workers", "1"], capsys)
    assert "tasks/a" in line and "missing" in line


def test_index_build_on_a_truncated_feature_part_names_it(tmp_path, capsys):
    store = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 3, "views": 1})
    store.write_part(0, pa.array(["a", "b"]), np.ones((2, 1, 3), np.float32))
    matrix = Path(store.matrix_path(0))
    matrix.write_bytes(matrix.read_bytes()[:30])
    line = _one_line_exit_2(["index", "build", "--features", str(tmp_path / "f"), "--out",
                             str(tmp_path / "i")], capsys)
    assert "part-00000.npy" in line


# --- a final short probe's cases ---------------------------------------------------------


def test_combining_two_score_sets_of_one_scorer_keeps_both_columns(tmp_path):
    from conftest import POOL_GLOB

    from dataselect import read_corpus, select
    from scorers import DSIR

    pool = read_corpus(POOL_GLOB)
    target = read_corpus(str(TARGETS / "python_docs.jsonl"))
    first = DSIR(num_buckets=4096).fit(target, pool).score(pool)
    second = DSIR(num_buckets=2048).fit(target, pool).score(pool)
    table = select.combine([first, second]).partition(0)
    assert {"score_dsir", "score_dsir_2"} <= set(table.column_names)
    assert table["score_dsir"].equals(first.partition(0)["score"].cast(pa.float64()))
    assert table["score_dsir_2"].equals(second.partition(0)["score"].cast(pa.float64()))


def test_report_on_a_manifest_of_another_shape_is_one_line(tmp_path, capsys):
    import io

    from conftest import POOL_GLOB

    from pipelines.jobs import SelectJob, run_select_job
    from pipelines.summary import plain_console

    out = tmp_path / "o"
    run_select_job(SelectJob(scorer="dsir", pool=[POOL_GLOB],
                             target=[str(TARGETS / "python_docs.jsonl")], k=20, out=str(out),
                             workers=1, worker_kind="threads"),
                   console=plain_console(file=io.StringIO()))
    manifest = out / ".manifest.json"
    record = json.loads(manifest.read_text())
    for key, value in (("counts", "lots"), ("scores", []), ("job", 3)):
        manifest.write_text(json.dumps({**record, key: value}))
        capsys.readouterr()
        assert main(["report", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "damaged or edited" in err


def test_a_feature_store_holding_nan_is_refused_by_index_build(tmp_path):
    store = FeatureStore.create(str(tmp_path / "fe"), {"dim": 4, "views": 1, "side": "pool"})
    store.write_part(0, pa.array(["a", "b", "c"]), np.ones((3, 1, 4), np.float32))
    saved = np.load(store.matrix_path(0))
    saved[1, 0, 2] = np.nan  # a valid .npy file, edited
    np.save(store.matrix_path(0), saved)
    with pytest.raises(InputError, match=r"'b'.*NaN or infinity"):
        list(store.iter_parts())
