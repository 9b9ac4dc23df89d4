"""Probe 9 faults (fix9a): values a plug-in hands over that JSON cannot hold exactly
(g01), and models whose outputs are NaN (g07)."""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, TARGETS, install_distribution, write_jsonl
from fault_helpers import private_fingerprint_cache, refused_run  # noqa: F401

from dataselect.errors import InputError, PluginError
from dataselect.scoring import Scorer, check_recordable

# ------------------------------------------- g01: plug-in values JSON cannot hold exactly


@pytest.mark.parametrize("value", [
    np.arange(2000.0), {1, 2}, b"bytes", datetime.date(2026, 1, 1), object(),
    np.datetime64("2026-01-01"), {"nested": [np.zeros(3)]}])
def test_a_plugin_value_json_holds_only_as_str_is_refused(value: object) -> None:
    """``str()`` of a numpy array elides it: two configs would be one job identity."""
    with pytest.raises(PluginError, match=r"returned from config\(\) a value that cannot "
                                          r"be recorded as JSON \(a .* has no exact JSON"):
        check_recordable({"v": value}, Scorer, "config()")


def test_numpy_numbers_from_a_plugin_are_recorded() -> None:
    check_recordable({"a": np.int64(3), "b": np.float32(0.1), "c": np.bool_(True),
                      "d": [np.float64(2.5)]}, Scorer, "config()")


PLUGIN = '''
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.scoring import Scorer


@dataclass
class Arr(Scorer):
    name: ClassVar[str] = "arr"

    @property
    def local_workers(self):
        return "threads"

    def fit(self, target, pool=None, runner=None):
        self.fingerprint_ = "x"
        return self

    def score_batch(self, batch):
        return pa.table({"id": batch["id"],
                         "score": pc.utf8_length(batch["text"]).cast(pa.float64())})

    def config(self):
        return {"weights": np.arange(2000.0)}
'''


def test_a_plugin_config_holding_a_numpy_array_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    from scorers import SCORERS

    (tmp_path / "plugin").mkdir()
    install_distribution(tmp_path / "plugin", monkeypatch, "plug_arr", PLUGIN,
                         "[dataselect.scorers]\narr = plug_arr:Arr\n")
    SCORERS.refresh()
    try:
        pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"d{i}", "text": f"row {i}"}
                                                     for i in range(20)])
        refused_run(["select", "--scorer", "arr", "--pool", str(pool), "--target",
                     str(TARGETS / "fortunes.jsonl"), "--out", str(tmp_path / "out"),
                     "--k", "5", "--workers", "1", "--worker-kind", "threads"], capsys,
                    "scorer 'arr' (plug_arr.Arr, a plug-in)", "config()",
                    "numpy.ndarray has no exact JSON form")
    finally:
        SCORERS.refresh()
    assert not (tmp_path / "out" / ".manifest.json").exists()


# --------------------------------------------------- g07: a model computing NaN


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.lm import build_tiny_causal_lm

    rows = [json.loads(line) for line in (DATA / "instructions" / "train.jsonl").open()][:100]
    texts = [m["content"] for r in rows for m in r["messages"]]
    return Path(build_tiny_causal_lm(texts, tmp_path_factory.mktemp("lm") / "m",
                                     vocab_size=300, hidden_size=32))


@pytest.mark.parametrize(("field", "value"), [
    ("rms_norm_eps", math.nan), ("rope_theta", math.inf),
    ("rope_scaling", {"rope_type": "linear", "factor": -math.inf})])
def test_a_non_finite_float_in_config_json_is_refused(
        tiny_lm: Path, tmp_path: Path, field: str, value: object) -> None:
    import shutil

    from models.lm import check_model_folder

    model = tmp_path / "m"
    shutil.copytree(tiny_lm, model)
    settings = json.loads((model / "config.json").read_text())
    settings[field] = value
    (model / "config.json").write_text(json.dumps(settings))
    with pytest.raises(InputError, match=rf"config\.json: {field}\S* must be a finite"):
        check_model_folder(str(model), "model")


def test_a_model_with_a_nan_weight_is_refused_naming_it(
        tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "m"
    shutil.copytree(tiny_lm, model)
    weights = load_file(model / "model.safetensors")
    name = next(n for n in weights if "layers.0.mlp.down_proj" in n)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(line for line in list(
        (DATA / "instructions" / "train.jsonl").open())[:20]))
    refused_run(["select", "--scorer", "embed", "-p", f"model={model}", "--pool", str(pool),
                 "--target", str(DATA / "instructions" / "targets" / "code.jsonl"),
                 "--text-field", "messages", "--k", "5", "--workers", "1",
                 "--worker-kind", "threads", "--out", str(tmp_path / "out")], capsys,
                str(model), "NaN or infinite")


def test_unit_rows_of_finite_model_outputs_are_normalised() -> None:
    from dataselect.features import model_unit_rows

    rows = model_unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]), "m")
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(InputError, match="NaN or infinite"):
        model_unit_rows(np.array([[np.nan, 1.0]]), "m")


class _NanFeaturizer:
    """A featurizer (a plug-in's) whose model diverged: every vector NaN."""

    name = "nanfeat"
    uses_response_spans = False

    def feature_description(self, side: str = "pool") -> dict:
        return {"model": "nan", "dim": 4, "views": 1}

    def featurize_batch(self, batch, side: str = "pool") -> np.ndarray:
        return np.full((batch.num_rows, 1, 4), np.nan, np.float32)


def test_non_finite_features_from_any_featurizer_are_refused(tmp_path: Path) -> None:
    """The store normalises vectors: NaN ones would become zero rows "without features"."""
    from dataselect import read_corpus
    from dataselect.featurize import featurize

    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"d{i}", "text": f"row {i}"}
                                                 for i in range(5)])
    with pytest.raises(PluginError, match=r"'nanfeat'.*NaN or infinite features"):
        featurize(_NanFeaturizer(), read_corpus(str(pool)), str(tmp_path / "f"))


# ------------------------------------------- g05: Hugging Face folders read as plain ones


def _hf_folder(path: Path, rows: int = 5) -> Path:
    import datasets

    datasets.Dataset.from_list([{"id": f"h{i}", "text": f"hf row {i}"} for i in range(rows)]
                               ).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["dataset_dict.json", "state.json", "dataset_info.json"])
def test_a_fifo_among_a_hf_folders_bookkeeping_is_named(tmp_path: Path, name: str) -> None:
    """A FIFO there made the folder a plain one, its JSON read as rows ("malformed JSON")."""
    import datasets

    from dataselect.formats import expand_paths

    folder = tmp_path / "dd"
    if name == "dataset_dict.json":
        datasets.DatasetDict({"train": datasets.Dataset.from_list(
            [{"id": "a", "text": "x"}])}).save_to_disk(str(folder))
    else:
        _hf_folder(folder)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    with pytest.raises(InputError, match="is not a regular file") as caught:
        expand_paths(str(folder))
    assert caught.value.where == str(folder / name)


def test_a_hf_folder_inside_a_folder_given_is_named(tmp_path: Path) -> None:
    from dataselect.formats import expand_paths

    (tmp_path / "w").mkdir()
    write_jsonl(tmp_path / "w" / "pool.jsonl", [{"id": "a", "text": "x"}])
    _hf_folder(tmp_path / "w" / "hf")
    with pytest.raises(InputError, match="save_to_disk folder inside the folder given") \
            as caught:
        expand_paths(str(tmp_path / "w"))
    assert caught.value.where == str(tmp_path / "w" / "hf")
    # given as its own input, and the other file by name: read
    assert len(expand_paths([str(tmp_path / "w" / "hf"),
                             str(tmp_path / "w" / "pool.jsonl")])) == 2
