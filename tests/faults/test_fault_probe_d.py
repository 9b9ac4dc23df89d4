"""Faults found by the fifth hostile pass and left open at its end (issue 28): held-out rows
that a model trains on or that the selection matched, hand-edited feature stores, and the
file named when pool files disagree on a column."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import DATA, instruction_recipe

from dataselect.errors import InputError
from pipelines.evaluate import EvalSettings, plan_trainings
from pipelines.recipe import load_recipe
from pipelines.run_recipe import run_recipe

INSTRUCTIONS = DATA / "instructions"
TINY = {"seeds": (0,), "steps": 2, "hidden_size": 32, "layers": 1, "heads": 2,
        "vocab_size": 400, "batch_size": 4, "max_length": 64, "workers": 1}


def _run_with_eval(root: Path, held_out_lines: list[str]) -> Path:
    eval_file = root / "held_out.jsonl"
    eval_file.write_text("".join(held_out_lines), encoding="utf-8")
    recipe = instruction_recipe(root / "out", ("code",), {"dsir": {"num_buckets": 5000}}, 20)
    recipe["targets"]["code"]["eval"] = str(eval_file)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path))
    return root / "out"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_held_out_rows_in_the_target_are_refused(tmp_path):
    held = _lines(INSTRUCTIONS / "eval" / "code.jsonl")[:5]
    out = _run_with_eval(tmp_path, held + _lines(INSTRUCTIONS / "targets" / "code.jsonl")[:2])
    with pytest.raises(InputError, match=r"2 held-out rows of task 'code' are also in its "
                                         r"target .*allow_overlap=true") as caught:
        plan_trainings(str(out), EvalSettings(**TINY))
    assert caught.value.where.endswith("held_out.jsonl")


def test_held_out_rows_a_model_trains_on_are_refused_unless_allowed(tmp_path):
    """A held-out file holding the whole pool overlaps the selection (checked before the
    random rows); allow_overlap plans the trainings as before."""
    out = _run_with_eval(tmp_path, _lines(INSTRUCTIONS / "train.jsonl"))
    with pytest.raises(InputError, match=r"20 held-out rows of task 'code' are also in its "
                                         "selected rows"):
        plan_trainings(str(out), EvalSettings(**TINY))
    jobs, _, _, _ = plan_trainings(str(out), EvalSettings(**TINY, allow_overlap=True))
    assert [(j.arm, j.train.num_rows) for j in jobs] == [("selected", 20), ("random", 20)]
