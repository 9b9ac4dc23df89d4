"""Pass-11 probe failures g03, g06, g08: a plug-in's config changed only in ways Python's
``==`` ignores (named as an edited part file), task names with non-ASCII letters (refused
as "not letters"), and a model config.json refused for a number in a key the model never
reads."""
# the fixture tiny_lm is imported, then taken as an argument:
# ruff: noqa: F811

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl
from test_fault_probe_r import tiny_lm  # noqa: F401
from test_fault_probe_w import _edited_config

from dataselect import read_corpus
from dataselect.errors import InputError, OutputConflictError
from dataselect.scoring import Scorer
from pipelines.recipe import RecipeError, load_recipe

# --- g03: identities compared as JSON text, not with == ----------------------------------

# (first config value, second): equal under ==, two texts in JSON (and in the footers)
_EQ_BUT_NOT_SAME = {"bool-int": (True, 1), "zero-sign": (0.0, -0.0),
                    "int-float": (2**53, float(2**53))}


@dataclass
class _Flag(Scorer):
    """A plug-in whose config() holds ``value``."""

    name: ClassVar[str] = "flag_y"
    value: Any = None

    @property
    def local_workers(self) -> str:
        return "threads"

    def fit(self, target: Any, pool: Any = None, runner: Any = None) -> _Flag:
        self.fingerprint_ = "x"
        return self

    def score_batch(self, batch: Any) -> Any:
        return pa.table({"id": batch["id"],
                         "score": pc.utf8_length(batch["text"]).cast(pa.float64())})

    def config(self) -> dict[str, Any]:
        return {"flag": self.value}


@pytest.mark.parametrize("pair", list(_EQ_BUT_NOT_SAME.values()), ids=list(_EQ_BUT_NOT_SAME))
def test_a_config_changed_only_under_eq_is_named_as_the_setting(tmp_path: Path,
                                                                 pair: tuple) -> None:
    """Before: the claim took the second config for the same job, and the part (whose
    footer digest is of the JSON text) was refused as "edited or replaced since"."""
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl",
                                       [{"id": f"d{i}", "text": "x" * i} for i in range(1, 9)])))
    store = str(tmp_path / "store")
    _Flag(value=pair[0]).fit(pool).score(pool).write(store)
    with pytest.raises(OutputConflictError, match=r"differs in: config\.flag\)"):
        _Flag(value=pair[1]).fit(pool).score(pool).write(store)


def test_same_json_is_type_and_sign_exact() -> None:
    from dataselect.output import same_json

    for first, second in _EQ_BUT_NOT_SAME.values():
        assert first == second and not same_json(first, second)
    assert same_json({"a": [1, 2.5], "b": None}, {"b": None, "a": (1, 2.5)})
    assert not same_json({"a": 1}, {"a": 1, "b": None})


def test_the_differences_name_each_changed_sub_setting() -> None:
    from dataselect.outdir import _differences

    old = {"config": {"flag": True, "cap": 0.0, "same": 1}, "seed": 0}
    new = {"config": {"flag": 1, "cap": -0.0, "same": 1, "added": None}, "seed": 0}
    assert _differences(old, new) == "config.added, config.cap, config.flag"


# --- g06: task names are ASCII, and the refusal says so ----------------------------------


@pytest.mark.parametrize("name", ["caf\u00e9", "\u00e9t\u00e9", "cafe\u0301", "\u0441ode"])
def test_a_non_ascii_task_name_is_refused_as_not_ascii(tmp_path: Path, name: str) -> None:
    """Before: "must be letters, digits, ...", though 'é' is a letter. The names stay
    ASCII (two spellings of 'café', NFC and NFD, look alike but name two folders; a
    Cyrillic 'с' looks like 'c'), and the line says "ASCII letters"."""
    recipe = {"pool": {"paths": POOL_GLOB},
              "targets": {name: {"paths": str(TARGETS / "fortunes.jsonl")}},
              "scorers": {"dsir": {}}, "selection": {"policy": "top_k", "k": 5},
              "output": {"path": str(tmp_path / "out")}}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"must be ASCII letters, digits") as info:
        load_recipe(path)
    assert info.value.field == "targets" and "starting with an ASCII letter" in str(info.value)


def test_the_folder_name_rule_calls_no_non_ascii_letter_a_non_letter() -> None:
    from dataselect.layout import FOLDER_NAME, FOLDER_NAME_RULE

    assert FOLDER_NAME_RULE.startswith("ASCII letters, digits")
    assert "a letter or digit" not in FOLDER_NAME_RULE
    assert FOLDER_NAME.match("cafe_1.b") and not FOLDER_NAME.match("caf\u00e9")


# --- g08: only the keys the model reads are range-checked ---------------------------------


@pytest.mark.parametrize("settings", [
    {"my_note": 1e300}, {"my_list": [1e39, -1e300]}, {"my_map": {"x": 1e39}},
    {"my_note": float("nan")}, {"my_int": 10**30}], ids=["float", "list", "map", "nan", "int"])
def test_a_number_in_a_key_the_model_does_not_read_is_kept(
        tiny_lm: Path, tmp_path: Path, settings: dict) -> None:
    """transformers only stores a key its config class does not define; the model's code
    never reads it. Before: refused as "beyond float32's range"."""
    from models.lm import check_model_folder

    check_model_folder(str(_edited_config(tiny_lm, tmp_path, **settings)), "model")


@pytest.mark.parametrize(("field", "value"), [
    ("rms_norm_eps", 1e39), ("rope_theta", 1e39), ("n_embd_note", None),
    ("rope_scaling", {"rope_type": "linear", "factor": 1e300})])
def test_a_key_the_model_reads_is_still_range_checked(
        tiny_lm: Path, tmp_path: Path, field: str, value: object) -> None:
    """Declared keys, and the legacy ones the class turns into others (rope_theta and
    rope_scaling into rope_parameters), are still refused in one line naming the key."""
    from models.lm import check_model_folder

    if value is None:  # a declared key beside a user's one of a similar name
        model = _edited_config(tiny_lm, tmp_path, n_embd_note=1e300, rms_norm_eps=1e308)
        field = "rms_norm_eps"
    else:
        model = _edited_config(tiny_lm, tmp_path, **{field: value})
    with pytest.raises(InputError, match=rf"config\.json: {field}\S* = .* beyond float32") \
            as info:
        check_model_folder(str(model), "model")
    assert info.value.where == str(model)


def test_loading_a_model_that_computes_nan_is_refused_naming_it(
        tiny_lm: Path, tmp_path: Path) -> None:
    """config.json's other keys are left to what the model computes: the load's probe
    refuses NaN states wherever a model is loaded (bads, eval, warm-up, attribute too),
    not only where embed and less check their outputs."""
    import torch
    from safetensors.torch import load_file, save_file

    from models.lm import load_causal_lm

    model = _edited_config(tiny_lm, tmp_path)
    weights = load_file(model / "model.safetensors")
    name = next(n for n in weights if "layers.0.mlp.down_proj" in n)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="computed NaN or infinite values") as info:
        load_causal_lm(str(model), torch.device("cpu"))
    assert info.value.where == str(model)
