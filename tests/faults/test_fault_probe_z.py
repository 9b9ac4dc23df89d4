"""Pass-11 probe failure g07: a feature store folder given inside the job's own output (a
recipe's ``tasks/<task>``, ``union`` or root, a selection's ``.scores``) was refused only
after the model ran and the store was written there, in a line naming no setting; the
corrected rerun was then refused as "output of an older dataselect"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import instruction_recipe
from fault_helpers import refused_run
from test_fault_probe_u import _embed, blank_lm  # noqa: F401 (a module fixture)

from dataselect.errors import InputError
from dataselect.features import FeatureStore, check_feature_folder
from dataselect.outdir import OutputFolder, refuse_legacy


@pytest.mark.parametrize("inside", [".scores", ".scores/embed", ".stats", ".hf", ".parsed",
                                    ".report", ".manifest.json", "feats", "."])
def test_a_select_features_folder_in_what_the_job_writes_is_refused(tmp_path, inside):
    """``.scores`` and the other hidden folders a select job writes are its own: a store
    there was refused only after the fit, naming --out, and left in ``.scores``."""
    out = tmp_path / "out"
    folder = out / inside
    with pytest.raises(InputError, match="-p features") as caught:
        check_feature_folder(str(folder), str(out), [])
    assert "give -p features a folder outside --out" in str(caught.value)


@pytest.mark.parametrize("inside", [".features", ".mine", ".features/embed"])
def test_a_hidden_folder_of_the_users_in_out_is_accepted(tmp_path, inside):
    out = tmp_path / "out"
    check_feature_folder(str(out / inside), str(out), [])


RECIPE = {"setting": "scorers.embed.features", "out_setting": "output.path",
          "recipe_scorer": "embed"}


@pytest.mark.parametrize("inside", [".", "tasks", "tasks/code", "tasks/code/x",
                                    "tasks/other", "tasks/code/.scores", "tasks/code/.hf",
                                    "union", "union/x", "union/.stats", ".models",
                                    ".models/m", ".warmup", ".features", ".parsed", "eval",
                                    "report", "attribution", ".run.json"])
def test_a_recipes_features_folder_in_what_the_run_writes_is_refused(tmp_path, inside):
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"scorers\.embed\.features") as caught:
        check_feature_folder(str(out / inside), str(out), [], **RECIPE)
    line = str(caught.value)
    assert "output.path" in line and "--out" not in line, line
    assert str(out / ".features" / "embed") in line, line


@pytest.mark.parametrize("inside", [".features/embed", "union/.feat", "tasks/code/.feat",
                                    "feats", ".mine"])
def test_a_recipes_features_folder_elsewhere_in_its_folder_is_accepted(tmp_path, inside):
    out = tmp_path / "run"
    check_feature_folder(str(out / inside), str(out), [], **RECIPE)


@pytest.mark.parametrize(("kind", "inside"), [
    ("job", ".scores"), ("job", ".hf"), ("job", ".stats/x"), ("selection", ".parsed"),
    ("union", ".scores"), ("recipe", "tasks/code"), ("recipe", "union/.hf"),
    ("recipe", ".models"), ("recipe", ".features"), ("recipe", "eval")])
def test_a_feature_store_in_another_outputs_own_folders_is_refused(tmp_path, kind, inside):
    """Given another job's output (``-p features=A/.scores`` for a job writing B, or
    ``dataselect features --out A/.hf``), the store was written into A's bookkeeping: A's
    rerun then wrote into the store or refused it as a stranger."""
    other = tmp_path / "a"
    OutputFolder.claim(other, kind, None)
    with pytest.raises(InputError, match="-p features") as caught:
        check_feature_folder(str(other / inside), str(tmp_path / "b"), [])
    assert str(other) in str(caught.value)
    with pytest.raises(InputError, match="--out"):
        FeatureStore.create(other / inside, {"model": "m", "side": "pool"})
    assert not (other / inside).exists()


@pytest.mark.parametrize(("kind", "inside"), [("job", ".features"), ("recipe", ".features/x"),
                                              ("recipe", "tasks/code/.feat")])
def test_a_feature_store_in_a_hidden_folder_of_the_users_is_accepted(tmp_path, kind, inside):
    other = tmp_path / "a"
    OutputFolder.claim(other, kind, None)
    FeatureStore.create(other / inside, {"model": "m", "side": "pool"})


def _recipe_with_store_in_task(tmp_path: Path) -> Path:
    """A recipe folder whose ``tasks/code`` holds a feature store, as a refused run of an
    earlier version left it."""
    out = tmp_path / "run"
    FeatureStore.create(out / "tasks" / "code", {"model": "m", "side": "pool"})
    OutputFolder.claim(out, "recipe", None)
    return out


def test_a_feature_store_in_a_task_folder_is_not_called_older_output(tmp_path):
    refuse_legacy(str(_recipe_with_store_in_task(tmp_path)))


def test_a_recipe_refuses_a_store_in_its_task_folder_before_any_work(
        tmp_path, capsys, monkeypatch):
    """The corrected rerun was refused as "output of an older dataselect (tasks/code/
    _manifest.json)"; now the task folder is named, before the models are prepared."""
    import pipelines.run_recipe as run_recipe

    def ran(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the run started before its task folders were checked")

    out = _recipe_with_store_in_task(tmp_path)
    monkeypatch.setattr(run_recipe, "_prepare_models", ran)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(instruction_recipe(out, ("code",), {"dsir": {}}, 5)),
                    encoding="utf-8")
    line = refused_run(["run", str(path)], capsys, str(out / "tasks" / "code"), "features")
    assert "older" not in line, line


@pytest.mark.slow  # the tiny model (module fixture) and torch's import
@pytest.mark.parametrize("inside", ["tasks/code", "union", "."])
def test_a_recipes_features_in_its_own_output_are_refused_before_the_model(
        blank_lm, tmp_path, capsys, monkeypatch, inside):  # noqa: F811
    from scorers.embed import Embed

    def ran(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model ran before the features folder was checked")

    monkeypatch.setattr(Embed, "fit", ran)
    out = tmp_path / "run"
    recipe = instruction_recipe(out, ("code",), {"embed": {
        "model": str(blank_lm), "features": str(out / inside)}}, 5)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    refused_run(["run", str(path)], capsys, "scorers.embed.features", "output.path")
    assert not out.exists()


@pytest.mark.slow  # the tiny model (module fixture) and torch's import
def test_select_features_in_its_own_scores_folder_are_refused_before_the_fit(
        blank_lm, tmp_path, capsys, monkeypatch):  # noqa: F811
    from scorers.embed import Embed

    def ran(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model ran before the features folder was checked")

    monkeypatch.setattr(Embed, "fit", ran)
    out = tmp_path / "sel"
    line = refused_run(_embed(blank_lm, out, out / ".scores"), capsys, "-p features",
                       ".scores")
    assert "another --out" not in line, line
    assert not out.exists()
