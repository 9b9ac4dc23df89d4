"""The Scorer contract written down: every attribute a pipeline reads from a scorer is
declared on the base class or a protocol, declared capabilities are checked when a scorer
loads, and selection policies are applied through one registry."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pytest
from conftest import ROOT
from test_plugins import PLUGIN, install_plugin

from dataselect import policies
from dataselect.defaults import POLICIES, SELECTION_POLICIES
from dataselect.errors import InputError
from dataselect.featurize import Featurizer
from dataselect.scoring import Scorer, TakesWarmup, declared_problem, needs_warmup
from scorers import SCORERS


@dataclass
class Plain(Scorer):
    name: ClassVar[str] = "plain"

    def fit(self, target, pool=None, runner=None):
        return self

    def score_batch(self, batch: pa.Table) -> pa.Table:
        return pa.table({"id": batch["id"], "score": [0.0] * batch.num_rows})

    def config(self):
        return {}


@pytest.fixture(autouse=True)
def _fresh_registry():
    SCORERS.refresh()
    yield
    SCORERS.refresh()


def test_what_a_fit_leaves_is_declared_on_the_base_with_defaults():
    """A scorer that never set them reads as unfitted with no stats, and each scorer's
    stats are its own (a shared default dict would collect every scorer's)."""
    first, second = Plain(), Plain()
    assert first.fit_fingerprint() == "unfitted" and first.fingerprint_ == "unfitted"
    assert first.fit_stats_ == {}
    first.fit_stats_["rows"] = 3
    assert second.fit_stats_ == {} and first.fit_stats_ == {"rows": 3}
    second.fit_stats_ = {"rows": 4}
    assert second.fit_stats_ == {"rows": 4}
    assert "fit_stats_" in Scorer.__dict__ and "fingerprint_" in Scorer.__dict__


SCORER_ATTRIBUTES = {"fit_stats_", "fingerprint_", "featurize_batch", "feature_description",
                     "needs_warmup", "needs_model", "pool_features", "default_policy",
                     "takes_budget", "scores_from_features"}


@pytest.mark.parametrize("package", ["pipelines", "dataselect", "scorers"])
def test_no_scorer_attribute_is_read_with_getattr_or_hasattr(package):
    """``getattr(scorer, "fit_stats_", {})`` hid that the base never declared it. (The
    settings layer, params.py, reads ``takes_budget`` of any settings class, scorer or not.)"""
    for path in (ROOT / package).rglob("*.py"):
        if path == ROOT / "dataselect" / "params.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)):
                assert node.args[1].value not in SCORER_ATTRIBUTES, (str(path), node.lineno)


def test_feature_scorers_are_found_through_the_featurizer_protocol():
    able = {name for name in SCORERS if isinstance(SCORERS[name], Featurizer)}
    assert able == {name for name in SCORERS if SCORERS[name].pool_features}
    assert {"embed", "less"} <= able and "dsir" not in able


def test_a_lora_warmup_is_declared_by_the_scorers_that_take_one():
    assert "needs_warmup" not in vars(Scorer)
    assert needs_warmup(SCORERS["less"]) and not needs_warmup(SCORERS["embed"])


def test_the_builtins_declare_nothing_inconsistent():
    assert {name: declared_problem(SCORERS[name]) for name in SCORERS} == dict.fromkeys(SCORERS)


@pytest.mark.parametrize(("declared", "message"), [
    ({"needs_model": True}, "declares needs_model but has no 'model' parameter"),
    ({"takes_budget": True}, "declares takes_budget but has no 'k' parameter"),
    ({"pool_features": True}, "declares pool_features but has no 'features' parameter"),
])
def test_a_declared_need_without_its_parameter_is_named(declared, message):
    cls = type("Odd", (Plain,), {**declared, "__annotations__": {}})
    assert declared_problem(dataclass(cls)).startswith(message)


def test_a_warmup_without_a_model_is_named():
    cls = dataclass(type("Odd", (TakesWarmup, Plain), {"checkpoints": None,
                                                       "__annotations__": {"checkpoints":
                                                                           "list | None"}}))
    assert "takes LoRA warmup checkpoints but declares needs_model False" in \
        declared_problem(cls)


INCONSISTENT = PLUGIN.replace('    scale: float = 1.0\n',
                              '    pool_features: ClassVar[bool] = True\n'
                              '    features: str | None = None\n    scale: float = 1.0\n')


def test_a_plugin_declaring_what_it_cannot_do_is_refused_in_one_line(tmp_path, monkeypatch):
    """pool_features without features to compute: refused when the scorer loads, before
    any work, not as an AttributeError deep in a job."""
    install_plugin(tmp_path, monkeypatch, source=INCONSISTENT)
    with pytest.raises(InputError, match=r"^field 'scorer': scorer 'length' \(plug_scorer:"
                       r"Length\) declares pool_features but computes no features: add "
                       r"featurize_batch and feature_description$"):
        SCORERS["length"]


def test_every_policy_name_is_applied_through_the_one_registry():
    assert set(policies.POLICIES) == {*SELECTION_POLICIES, policies.THRESHOLD}
    assert POLICIES[1:] == SELECTION_POLICIES and POLICIES[0] == "auto"


def test_the_declared_policy_is_looked_up_in_the_registry(monkeypatch):
    """``auto`` resolves to the scorer's declaration, and that name is what the registry
    applies: replacing the registry's entry changes what runs, with nothing else to edit."""
    ran = []
    monkeypatch.setitem(policies.POLICIES, "round_robin",
                        lambda pool, scores, budget, runner: ran.append(budget) or "chosen")
    budget = policies.Budget(k=5)
    assert policies.choose_rows(None, None, "auto", budget, "round_robin", None) == "chosen"
    assert ran == [budget]


@pytest.mark.parametrize("module", ["pipelines/jobs.py", "pipelines/run_recipe.py",
                                    "pipelines/recipe.py"])
def test_pipelines_call_no_policy_function_by_name(module):
    text = (ROOT / module).read_text(encoding="utf-8")
    for name in ("top_k", "top_fraction", "threshold", "importance_resample", "round_robin"):
        assert f"select.{name}(" not in text, (module, name)
