"""Pass-10 probe failures g04, g09, g13, g14: job identities that two configs shared, a
record trusted on its stored digest alone, data files of others read as a selection's, and
a feature store folder refused late under the name of another setting."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import DATA, TARGETS, write_jsonl
from fault_helpers import dsir_select, private_fingerprint_cache, refused_run  # noqa: F401

from dataselect.errors import InputError, PluginError
from dataselect.scoring import Scorer, check_recordable
from pipelines.cli import main

# --- g04: a plug-in value that JSON would record as another one -------------------------


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float32("inf"),
                                   np.float64("nan"), [1.0, math.inf], {"x": -math.inf}],
                         ids=["inf", "-inf", "nan", "np32-inf", "np64-nan", "in-list",
                              "in-map"])
def test_a_non_finite_config_value_is_refused(value):
    """inf, -inf and NaN were all recorded as null: two configs, one job identity, and the
    second scorer's write resumed the first's scores."""
    with pytest.raises(PluginError, match="NaN or infinity"):
        check_recordable({"cap": value}, Scorer, "config()")


@pytest.mark.parametrize("value", [{1: "a"}, {"m": [{True: 1}]}, {None: 0}, {1.5: 2}],
                         ids=["int", "nested-bool", "none", "float"])
def test_a_key_that_is_not_text_is_refused(value):
    """``{1: 'a'}`` was recorded as ``{'1': 'a'}``: the same identity as that config."""
    with pytest.raises(PluginError, match="not text"):
        check_recordable(value, Scorer, "config()")


def test_fit_statistics_may_hold_no_number_but_only_text_keys():
    """Fit statistics are a record, not an identity: NaN is written as null there (a
    diagnostic of constant scores), but a key that is not text is still refused."""
    check_recordable({"spearman": math.nan}, Scorer, "fit", identity=False)
    with pytest.raises(PluginError, match="not text"):
        check_recordable({2: 1.0}, Scorer, "fit", identity=False)


@dataclass
class _Capped(Scorer):
    """A plug-in whose config holds an infinity of either sign."""

    name: ClassVar[str] = "capped_u"
    sign: int = 1

    def fit(self, target: Any, pool: Any = None, runner: Any = None) -> _Capped:
        self.fingerprint_ = "x"
        return self

    def score_batch(self, batch: Any) -> Any:
        raise AssertionError("not scored in this test")

    def config(self) -> dict[str, Any]:
        return {"cap": self.sign * math.inf}


def test_a_plug_ins_infinite_config_is_one_line_naming_it():
    with pytest.raises(PluginError, match=r"capped_u.*config\(\).*NaN or infinity"):
        _Capped(sign=-1).config()


# --- g09: a record checked against the marker's identity, not only its stored digest ---


def _forged(tmp_path: Path) -> tuple[Path, Path]:
    """Two selections of one pool, seeds 0 and 1; the seed-1 manifest copied into the
    seed-0 folder with its job_digest set to the seed-0 job's."""
    pool = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 120), pool)
    for seed in (0, 1):
        assert main(dsir_select(pool, tmp_path / f"o{seed}", "--seed", str(seed), k=5)) == 0
    zero, one = (json.loads((tmp_path / f"o{s}" / ".manifest.json").read_text())
                 for s in (0, 1))
    one["job_digest"] = zero["job_digest"]
    (tmp_path / "o0" / ".manifest.json").write_text(json.dumps(one))
    return pool, tmp_path / "o0"


def test_a_manifest_of_another_job_with_this_jobs_digest_is_refused(tmp_path, capsys):
    _, out = _forged(tmp_path)
    refused_run(["report", str(out)], capsys, ".manifest.json", "job.seed", "another job")
    from dataselect import load_hf

    with pytest.raises(InputError, match=r"job\.seed"):
        load_hf(out)


def test_a_record_is_compared_with_the_identity_it_claims():
    from dataselect.footer import record_contradicts

    job = {"settings": {"seed": 0, "pool": ["/abs/p"], "k": 5}, "output_revision": 5}
    assert record_contradicts({"job": {"seed": 0, "pool": ["p"], "k": 5, "out": "o"}},
                              job) is None
    assert record_contradicts({"job": {"seed": 1, "k": 5}}, job) == "job.seed"
    run = {"settings": {"selection": {"k": 5}, "pool": {"paths": ["/abs/p"]}}}
    assert record_contradicts({"recipe": {"selection": {"k": 6}, "pool": {"paths": ["p"]}}},
                              run) == "recipe.selection.k"
    union = {"selections": {}, "counts": {"a": 3}, "format": "parquet"}
    assert record_contradicts({"counts": {"per_task": {"a": 4}},
                               "output": {"format": "parquet"}}, union) == "counts.per_task"
    assert record_contradicts({"counts": {"per_task": {"a": 3}},
                               "output": {"format": "arrow"}}, union) == "output.format"
    chosen = {"selection": {"policy": {"k": 5}, "scores": {"s": 1}}, "format": "parquet"}
    assert record_contradicts({"selection": {"k": 7}, "scores": {"s": 1}}, chosen) \
        == "selection"


# --- g14: data files that every reader of a selection folder would read with its parts --


def finished_selection(tmp_path: Path, *flags: str) -> tuple[Path, Path]:
    """A finished DSIR selection of 120 pool rows, with ``flags`` added: (pool, out)."""
    pool = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 120), pool)
    out = tmp_path / "out"
    assert main(dsir_select(pool, out, *flags, k=5)) == 0
    return pool, out


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path]:
    return finished_selection(tmp_path)


def _foreign(out: Path, kind: str) -> str:
    """Put a foreign data file or folder of ``kind`` in ``out``; its name."""
    part = out / "part-00000.parquet"
    if kind == "zz":
        shutil.copy(part, out / "zz.parquet")
        return "zz.parquet"
    if kind == "stray-part":
        shutil.copy(part, out / "part-99999.parquet")
        return "part-99999.parquet"
    if kind == "jsonl":
        write_jsonl(out / "more.jsonl.gz", [{"id": "x", "text": "y"}], compress="gzip")
        return "more.jsonl.gz"
    (out / "saved").mkdir()  # a user's save_to_disk folder
    shutil.copy(part, out / "saved" / "data-00000-of-00001.arrow")
    (out / "saved" / "state.json").write_text("{}")
    return "saved"


@pytest.mark.parametrize("kind", ["zz", "stray-part", "jsonl", "folder"])
def test_a_foreign_data_file_in_a_finished_selection_is_refused(finished, capsys, kind):
    """The rerun of the same job, report and load_hf took the folder as finished, while
    pandas read 10 rows of a 5-row selection."""
    pool, out = finished
    name = _foreign(out, kind)
    refused_run(dsir_select(pool, out, k=5), capsys, name, "move it away")
    refused_run(["report", str(out)], capsys, name, "move it away")
    from dataselect import load_hf

    with pytest.raises(InputError, match="move it away"):
        load_hf(out)


def test_hidden_files_are_not_the_selections(finished, capsys):
    """Readers skip hidden names: the rerun resumes. (A visible NOTES.txt is refused since
    pass 11: pyarrow reads every visible file, whatever its name; test_fault_probe_x.)"""
    pool, out = finished
    shutil.copy(out / "part-00000.parquet", out / ".mine.parquet")
    (out / ".NOTES.txt").write_text("mine")
    assert main(dsir_select(pool, out, k=5)) == 0
    assert (out / ".mine.parquet").exists() and (out / ".NOTES.txt").exists()


def test_a_foreign_data_file_in_an_api_selection_folder_is_refused(finished, tmp_path):
    """A selection written through the API (a recipe's task folder is one) checks its
    folder before it writes again, too."""
    api_selection_refuses(finished[0], tmp_path, "zz.parquet")


def api_selection_refuses(pool_file: Path, tmp_path: Path, name: str) -> None:
    """Write a selection of ``pool_file`` through the API, copy its part to ``name`` in
    its folder, and check that writing it again is refused naming ``name``."""
    from dataselect import read_corpus, select
    from scorers import DSIR

    pool = read_corpus(str(pool_file))
    target = read_corpus(str(TARGETS / "python_docs.jsonl"))
    chosen = select.top_k(pool, DSIR().fit(target, pool).score(pool), 5)
    out = tmp_path / "api"
    chosen.write(str(out))
    shutil.copy(out / "part-00000.parquet", out / name)
    with pytest.raises(InputError, match=re.escape(name) + ".*move it away"):
        chosen.write(str(out))


# --- g13: a bad -p features is refused before any work, naming -p features ----------------


@pytest.fixture(scope="module")
def blank_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model: enough for embed to be built; it must never run here."""
    from models.lm import build_tiny_causal_lm

    rows = [json.loads(line) for line in (DATA / "instructions" / "train.jsonl").open()][:50]
    folder = tmp_path_factory.mktemp("blank_lm") / "m"
    build_tiny_causal_lm([m["content"] for r in rows for m in r["messages"]], folder,
                         vocab_size=300, hidden_size=32)
    return folder


def _embed(model: Path, out: Path, features: Path) -> list[str]:
    return ["select", "--scorer", "embed", "-p", f"model={model}", "-p",
            f"features={features}", "--pool", str(DATA / "instructions" / "train.jsonl"),
            "--target", str(DATA / "instructions" / "targets" / "code.jsonl"),
            "--text-field", "messages", "--k", "5", "--out", str(out), "--workers", "1",
            "--worker-kind", "threads"]


@pytest.mark.slow  # the tiny model's tokenizer and torch's import: about 9 s
@pytest.mark.parametrize("where", ["inside-out", "model-folder", "is-out", "holds-out"])
def test_a_bad_features_folder_is_refused_before_the_model_runs(
        blank_lm, tmp_path, capsys, monkeypatch, where):
    from scorers.embed import Embed

    def ran(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model ran before the features folder was checked")

    monkeypatch.setattr(Embed, "fit", ran)
    out = tmp_path / "o" / "sel"
    features = {"inside-out": out / "feats", "model-folder": blank_lm, "is-out": out,
                "holds-out": tmp_path / "o"}[where]
    line = refused_run(_embed(blank_lm, out, features), capsys, "-p features")
    assert "another --out" not in line and "another dataselect job" not in line, line
    assert not out.exists()


def test_a_hidden_features_folder_inside_out_passes_the_check(tmp_path):
    from dataselect.features import check_feature_folder

    out = tmp_path / "out"
    check_feature_folder(str(out / ".features"), str(out), [])


@pytest.mark.slow  # the tiny model (module fixture)
def test_a_recipes_bad_features_folder_is_refused_before_any_work(
        blank_lm, tmp_path, capsys, monkeypatch):
    """A recipe's ``scorers.<name>.features`` is checked before models, warmups and fits,
    and the line names that setting."""
    import yaml
    from conftest import instruction_recipe

    from scorers.embed import Embed

    def ran(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model ran before the features folder was checked")

    monkeypatch.setattr(Embed, "fit", ran)
    recipe = instruction_recipe(tmp_path / "run", ("code",),
                                {"embed": {"model": str(blank_lm), "features": str(blank_lm)}},
                                5)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    refused_run(["run", str(path)], capsys, "scorers.embed.features", str(blank_lm))
    assert not (tmp_path / "run").exists()
