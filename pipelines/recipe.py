"""The YAML recipe of a batch job: what to read, whom to score against, how to choose.

A recipe is validated with pydantic before any work starts, so a typo in a key, a wrong
type or an unknown scorer parameter is one error that names the key (``scorers.dsir.
num_buckets``) and the recipe file, instead of a traceback an hour into the job. Scorer
parameters are checked against the scorer's own dataclass fields, so a recipe accepts
exactly what ``dataselect select -p KEY=VALUE`` accepts.

Paths in a recipe are taken relative to the working directory the job is started from,
as on the command line (the shipped recipes are run from the repository root).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import typing
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dataselect.errors import InputError
from pipelines.jobs import POLICIES
from scorers import SCORERS
from scorers.lora_warmup import WarmupConfig

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RecipeError(InputError):
    """A recipe that cannot be run as written; names the file and the key."""


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not fall back to a default silently."""

    model_config = ConfigDict(extra="forbid")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class PoolSpec(_Strict):
    """The data to choose from."""

    paths: list[str] = Field(min_length=1)
    text: str = "text"
    id_field: str = "id"
    partition_mb: float = Field(4.0, gt=0)

    _paths = field_validator("paths", mode="before")(_as_list)


class Budget(_Strict):
    """How much to keep: exactly one of a row count, a share of eligible rows, or a score
    threshold."""

    k: int | None = Field(None, gt=0)
    fraction: float | None = Field(None, gt=0, le=1)
    threshold: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Budget:
        given = [n for n in ("k", "fraction", "threshold") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of k, fraction or threshold, not {given}")
        return self

    @property
    def is_set(self) -> bool:
        return any(getattr(self, n) is not None for n in ("k", "fraction", "threshold"))


class TargetSpec(_Strict):
    """One target task: examples of what is wanted (with an optional subtask column, which
    LESS aggregates over), held-out rows for ``dataselect eval``, and an optional budget
    that overrides the recipe's."""

    paths: list[str] = Field(min_length=1)
    text: str | None = None
    eval: list[str] = Field(default_factory=list)
    budget: Budget | None = None

    _paths = field_validator("paths", "eval", mode="before")(_as_list)


class SelectionSpec(Budget):
    """Policy and default budget. ``per_task``: every task chooses its own rows from the
    whole pool (the LESS paper's setup) and the union is their set union. ``global``: one
    budget over the pool ranked by each row's best task score; a chosen row belongs to the
    task it scored highest for."""

    policy: Literal[POLICIES] = "auto"  # type: ignore[valid-type]
    scope: Literal["per_task", "global"] = "per_task"


class CombineSpec(_Strict):
    """How several scorers make one score (weights default to 1 each)."""

    method: Literal["zscore", "rank"] = "zscore"
    weights: dict[str, float] = Field(default_factory=dict)


class OutputSpec(_Strict):
    path: str
    format: Literal["parquet", "arrow"] = "parquet"
    metrics_sample: float = Field(0.1, gt=0, le=1)


class ClusterSpec(_Strict):
    """Local cluster by default; ``scheduler`` sends the same job to a running cluster."""

    scheduler: str | None = None
    workers: int | None = Field(None, gt=0)
    memory_limit: str = "auto"
    worker_kind: Literal["auto", "processes", "threads"] = "auto"


class TinyModelSpec(_Strict):
    """A small Llama built from a config and trained on the pool's response tokens: what
    the model-based scorers run on where no pretrained model can be downloaded."""

    vocab_size: int = Field(1000, ge=300)
    hidden_size: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    train_steps: int = Field(200, ge=0)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(256, ge=8)
    seed: int = 0


class ModelSpec(_Strict):
    """A model a scorer refers to by name (``model: NAME``): a local folder, or built."""

    path: str | None = None
    build: TinyModelSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> ModelSpec:
        if (self.path is None) == (self.build is None):
            raise ValueError("give exactly one of path or build")
        return self


class Recipe(_Strict):
    """A whole batch job. ``warmup`` holds the LESS LoRA warmup settings, used when the
    less scorer is given no ``checkpoints``."""

    name: str | None = None
    pool: PoolSpec
    targets: dict[str, TargetSpec] = Field(min_length=1)
    scorers: dict[str, dict[str, Any]] = Field(min_length=1)
    combine: CombineSpec = Field(default_factory=CombineSpec)
    selection: SelectionSpec
    output: OutputSpec
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    warmup: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("targets")
    @classmethod
    def _task_names(cls, targets: dict[str, TargetSpec]) -> dict[str, TargetSpec]:
        for name in targets:
            if not TASK_NAME.match(name):
                raise ValueError(f"task name {name!r} must be letters, digits, '_', '-' "
                                 "or '.', starting with a letter or digit (it names a folder)")
        return targets

    @field_validator("scorers")
    @classmethod
    def _scorer_params(cls, scorers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        checked = {}
        for name, params in scorers.items():
            if name not in SCORERS:
                raise ValueError(f"unknown scorer {name!r}; choose from {sorted(SCORERS)}")
            checked[name] = _check_params(name, params, (name,))
        return checked

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, warmup: dict[str, Any]) -> dict[str, Any]:
        return _check_params("warmup", warmup, ())

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        unknown = sorted(set(self.combine.weights) - set(self.scorers))
        if unknown:
            raise ValueError(f"combine.weights names scorers not in the recipe: {unknown}")
        if not self.selection.is_set and any(
                t.budget is None or not t.budget.is_set for t in self.targets.values()):
            raise ValueError("selection needs a budget (k, fraction or threshold), or every "
                             "task its own budget")
        if self.selection.scope == "global" and any(t.budget for t in self.targets.values()):
            raise ValueError("per-task budgets need selection.scope: per_task")
        for name, params in self.scorers.items():
            model = params.get("model")
            if isinstance(model, str) and model in self.models:
                continue
            if name in ("less", "bads", "embed") and "model" not in params:
                raise ValueError(f"scorer {name} needs model: a local folder or the name of "
                                 "an entry of models")
        return self

    def budget_of(self, task: str) -> Budget:
        budget = self.targets[task].budget
        return budget if budget is not None and budget.is_set else self.selection

    def warmup_config(self) -> WarmupConfig:
        return WarmupConfig(**{"seed": self.seed, **self.warmup})


class _NestedError(ValueError):
    """Errors of a nested validation, kept with their own keys so the message names
    ``scorers.dsir.num_buckets`` and not just ``scorers``."""

    def __init__(self, prefix: tuple[Any, ...], exc: pydantic.ValidationError):
        super().__init__(str(exc))
        self.errors = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors()]


def _check_params(name: str, params: Any, prefix: tuple[Any, ...]) -> dict[str, Any]:
    try:
        model = _params_model(name).model_validate(params or {})
    except pydantic.ValidationError as exc:
        raise _NestedError(prefix, exc) from None
    return model.model_dump(exclude_unset=True)


@functools.cache
def _params_model(name: str) -> type[BaseModel]:
    """A strict pydantic model of a scorer's (or the warmup's) dataclass fields, so recipe
    values are checked against the types the scorer declares."""
    cls = WarmupConfig if name == "warmup" else SCORERS[name]
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        annotation = hints[f.name]
        if "Sequence" in str(annotation):  # YAML gives lists
            annotation = list[str]
        fields[f.name] = (annotation, None)
    return pydantic.create_model(f"{name}_params", __config__=ConfigDict(extra="forbid"),
                                 **fields)


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe; ``overrides`` (dotted keys, e.g. ``output.path``) replace
    values before validation, for command-line flags."""
    where = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise RecipeError("recipe file not found", where=where) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"not valid YAML: {problem}", where=where) from None
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a YAML mapping of keys (pool, targets, scorers, "
                          "selection, output, ...)", where=where)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    try:
        recipe = Recipe.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise _recipe_error(exc, where) from None
    _check_paths(recipe, where)
    return recipe


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _recipe_error(exc: pydantic.ValidationError, where: str) -> RecipeError:
    """One clause per problem, each naming its dotted key and the value found; the first
    key is the error's field."""
    problems = []
    for error in exc.errors():
        nested = error.get("ctx", {}).get("error")
        if isinstance(nested, _NestedError):
            problems += [{**e, "loc": (*error["loc"], *e["loc"])} for e in nested.errors]
        else:
            problems.append(error)
    clauses, first = [], None
    for error in problems:
        key = _dotted(error["loc"])
        found = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(found, dict) else \
            f" (got {found!r})"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        if first is None:
            first = key
            clauses.append(f"{message}{shown}")
        else:
            clauses.append(f"{key}: {message}{shown}" if key else f"{message}{shown}")
    return RecipeError("; ".join(clauses), where=where, field=first or None)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_paths(recipe: Recipe, where: str) -> None:
    """Every input path must match something now, not when its stage starts."""
    keyed = [(f"pool.paths[{i}]", p) for i, p in enumerate(recipe.pool.paths)]
    for task, spec in recipe.targets.items():
        keyed += [(f"targets.{task}.paths[{i}]", p) for i, p in enumerate(spec.paths)]
        keyed += [(f"targets.{task}.eval[{i}]", p) for i, p in enumerate(spec.eval)]
    keyed += [(f"models.{n}.path", m.path) for n, m in recipe.models.items() if m.path]
    for key, path in keyed:
        if not (os.path.exists(path) or glob.glob(path)):
            raise RecipeError(f"{path!r} matches no file or folder (paths are relative to "
                              f"the working directory, {os.getcwd()})", where=where, field=key)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain JSON-able data, defaults filled in (recorded in ``_run.json``)."""
    return recipe.model_dump(mode="json")
