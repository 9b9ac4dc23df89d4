"""A scorer from outside this repository: one module plus one entry point, and it works from
the command line, in recipes and in the Python API, with its parameters checked by the same
code as the built-in scorers'. Pipelines act on what a scorer declares, never on its name."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, POOL_GLOB, TARGETS, install_distribution

from dataselect.errors import InputError
from dataselect.scoring import needs_warmup
from pipelines.cli import main
from scorers import BUILTIN, SCORERS

PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from dataselect.scoring import Scorer


@dataclass
class Length(Scorer):
    """Longer documents are more wanted (times ``scale``)."""

    name: ClassVar[str] = "length"
    default_policy: ClassVar[str] = "{policy}"
    scale: float = 1.0

    @property
    def local_workers(self) -> str:
        return "threads"

    def fit(self, target, pool=None, runner=None):
        self.fingerprint_ = f"scale={{self.scale}}"
        return self

    def score_batch(self, batch):
        length = pc.utf8_length(batch["text"]).cast(pa.float64())
        return pa.table({{"id": batch["id"], "score": pc.multiply(length, self.scale)}})

    def config(self):
        return {{"scale": self.scale}}
'''


def install_plugin(root: Path, monkeypatch: pytest.MonkeyPatch, policy: str = "top_k",
                   target: str = "plug_scorer:Length", source: str = PLUGIN) -> None:
    """A package ``plug_scorer`` with a ``dataselect.scorers`` entry point, as pip would
    install it (a module and a dist-info folder on sys.path); ``source`` is its module, a
    template that ``policy`` fills."""
    install_distribution(root, monkeypatch, "plug_scorer", source.format(policy=policy),
                         f"[dataselect.scorers]\nlength = {target}\n")
    SCORERS.refresh()


@pytest.fixture(autouse=True)
def _fresh_registry():
    SCORERS.refresh()
    yield
    SCORERS.refresh()


def test_the_builtin_names_are_listed_without_importing_any_scorer():
    assert list(SCORERS) == sorted(BUILTIN)
    assert SCORERS._classes == {}


def test_a_plugin_scorer_selects_from_the_command_line(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch)
    assert "length" in SCORERS
    out = tmp_path / "out"
    argv = ["select", "--scorer", "length", "-p", "scale=2", "--pool", POOL_GLOB,
            "--target", str(TARGETS / "python_docs.jsonl"), "--k", "25", "--out", str(out),
            "--workers", "1"]
    assert main(argv) == 0
    chosen = pq.read_table(out)
    pool = pq.ParquetDataset(str(DATA / "pool")).read()
    lengths = dict(zip(pool["id"].to_pylist(), pc.utf8_length(pool["text"]).to_pylist()))
    picked = set(chosen["id"].to_pylist())
    assert len(picked) == 25
    assert min(lengths[i] for i in picked) >= max(n for i, n in lengths.items()
                                                  if i not in picked)  # the 25 longest
    assert sorted(chosen["score"].to_pylist()) == sorted(2.0 * lengths[i] for i in picked)
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["selection"]["policy"] == "top_k"
    assert manifest["scores"]["config"] == {"scale": 2.0}


@pytest.mark.parametrize("bad", ["scale=nan", "scale=true", "scales=2"])
def test_a_plugin_scorers_parameters_are_checked_like_the_builtins(bad, tmp_path,
                                                                    monkeypatch, capsys):
    install_plugin(tmp_path, monkeypatch)
    argv = ["select", "--scorer", "length", "-p", bad, "--pool", POOL_GLOB, "--target",
            str(TARGETS / "python_docs.jsonl"), "--k", "5", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("dataselect: error: field 'scale")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["select", "run"])
def test_a_plugins_declared_round_robin_is_the_policy_auto_applies(tmp_path, monkeypatch,
                                                                   capsys, command):
    """``default_policy`` was compared with importance_resample only, so a plug-in declaring
    round_robin got top_k while ``dataselect scorers`` printed round_robin. Now the declared
    policy is the one applied; this scorer keeps one score a row, so round_robin is refused
    before any work, as when the flag asks for it."""
    from conftest import instruction_recipe

    install_plugin(tmp_path, monkeypatch, policy="round_robin")
    if command == "select":
        argv = ["select", "--scorer", "length", "--pool", POOL_GLOB, "--target",
                str(TARGETS / "python_docs.jsonl"), "--k", "5", "--out", str(tmp_path / "o")]
    else:
        recipe = instruction_recipe(tmp_path / "o", ("define",), {"length": {}}, k=5)
        recipe["selection"]["policy"] = "auto"
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        argv = ["run", str(tmp_path / "r.yaml")]
    assert main(argv) == 2
    assert "round_robin needs one score per target example" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_plugin_declaring_an_unknown_policy_is_refused_when_it_loads(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, policy="best_first")
    with pytest.raises(InputError, match="declares default_policy 'best_first'"):
        SCORERS["length"]


def test_a_plugin_scorer_runs_in_a_recipe_with_its_declared_policy(tmp_path, monkeypatch):
    from conftest import instruction_recipe

    install_plugin(tmp_path, monkeypatch, policy="importance_resample")
    recipe = instruction_recipe(tmp_path / "out", ("define",), {"length": {"scale": 0.5}},
                                k=20)
    recipe["selection"]["policy"] = "auto"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    manifest = json.loads((tmp_path / "out" / "tasks" / "define" / ".manifest.json")
                          .read_text())
    assert manifest["selection"]["policy"] == "importance_resample"  # declared, not named
    assert pq.read_table(tmp_path / "out" / "union").num_rows == 20
    recipe["scorers"] = {"length": {"scale": True}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2")]) == 2


def test_a_broken_registration_is_one_clear_error(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, target="plug_scorer_missing:Length")
    with pytest.raises(InputError, match="registered as 'plug_scorer_missing:Length', which "
                                         "cannot be imported"):
        SCORERS["length"]


def test_pipelines_never_test_a_scorers_name():
    """Declarations, not names: no pipeline module compares with a built-in scorer's name."""
    root = Path(__file__).resolve().parents[1] / "pipelines"
    # "auto" is also a value of --policy and --worker-kind, which pipelines do compare
    names = [name for name in BUILTIN if name != "auto"]
    for module in root.glob("*.py"):
        text = module.read_text()
        for name in names:
            for pattern in (f'== "{name}"', f'in ("{name}"', f', "{name}")', f'["{name}"]'):
                assert pattern not in text, f"{module.name} tests the scorer name {name!r}"


def test_declarations_of_the_builtins():
    assert SCORERS["dsir"].default_policy == "importance_resample"
    assert {n for n in SCORERS if SCORERS[n].needs_model} == {"bads", "embed", "less"}
    assert {n for n in SCORERS if SCORERS[n].pool_features} == {"embed", "less"}
    assert {n for n in SCORERS if needs_warmup(SCORERS[n])} == {"less"}


def test_the_builtins_are_registered_alike_in_pyproject_and_in_the_package():
    """The built-ins are listed twice (entry points for installed copies, BUILTIN for a
    source checkout whose metadata is not installed); the two lists must not drift."""
    from conftest import ROOT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["dataselect.scorers"] == BUILTIN


def test_a_plugin_registering_a_builtin_name_is_refused_when_that_name_is_used(
        tmp_path, monkeypatch, capsys):
    """It was dropped without a word and the built-in ran (pass 20, g05); two plug-ins
    sharing a name were already refused, for the same reason."""
    install_distribution(tmp_path, monkeypatch, "plug_squat", PLUGIN.format(policy="top_k"),
                         "[dataselect.scorers]\ndsir = plug_squat:Length\n")
    SCORERS.refresh()
    with pytest.raises(InputError, match=r"'dsir' is a built-in scorer, and plug-squat "
                                         r"\(plug_squat:Length\) registers that name too"):
        SCORERS["dsir"]
    assert SCORERS["zipfit"] is not None  # the other names still work
    argv = ["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target",
            str(TARGETS / "python_docs.jsonl"), "--k", "5", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "plug-squat" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
