"""The YAML recipe of a batch job: what to read, whom to score against, how to choose.

A recipe is validated with pydantic before any work starts, so a typo in a key, a wrong
type or an unknown scorer parameter is one error that names the key (``scorers.dsir.
num_buckets``) and the recipe file, instead of a traceback an hour into the job. Scorer
parameters are checked against the scorer's own dataclass fields, so a recipe accepts
exactly what ``dataselect select -p KEY=VALUE`` accepts.

Numbers are checked by the same functions as the command line's flags
(:mod:`dataselect.checks`): booleans are not numbers (``k: true`` is not one row), NaN and
infinities are refused, and every count, share and size has a range. The file is read with
limits (:mod:`pipelines.recipe_yaml`), and every problem found is one line naming its key
(:mod:`pipelines.recipe_errors`).

Paths in a recipe are taken relative to the working directory the job is started from,
as on the command line (the shipped recipes are run from the repository root).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dataselect import checks, storage
from dataselect.defaults import POLICIES
from dataselect.errors import InputError
from dataselect.layout import FOLDER_NAME, FOLDER_NAME_RULE
from dataselect.params import checked, settings_model
from dataselect.policies import resolved_policy
from dataselect.scoring import needs_warmup
from models.importer import is_shortcut
from models.warmup_config import WarmupConfig
from pipelines.recipe_errors import NestedError, RecipeError, recipe_error, setting_error
from pipelines.recipe_yaml import read_recipe_yaml
from scorers import SCORERS, build_scorer, clashing_setting

# Columns a selection writes next to the pool's (writer.ADDED_COLUMNS, union's tasks,
# combine's best_task, scoring's filtered_by): a task of one of these names, or of a
# scorer's name, would make a column ``score_<task>`` or a task label that reads as another.
RESERVED_TASK_NAMES = ("score", "rank", "tasks", "best_task", "filtered_by")
# scorer errors that are about files a recipe may create later (models it builds, the
# warmup's checkpoints), not about settings
_LATER_FIELDS = ("model", "checkpoints")


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not fall back to a default silently."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Count = Annotated[int, checked(checks.check_count)]
OptionalCount = Annotated[int | None, checked(checks.check_count, optional=True)]
Seed = Annotated[int, checked(checks.check_seed)]
OptionalFraction = Annotated[float | None, checked(checks.check_fraction, optional=True)]
Fraction = Annotated[float, checked(checks.check_fraction)]
OptionalFinite = Annotated[float | None, checked(checks.check_finite, optional=True)]
Positive = Annotated[float, checked(checks.check_positive)]
NonNegative = Annotated[float, checked(checks.check_nonnegative)]
PartitionMB = Annotated[float, checked(checks.check_partition_mb)]
MemoryLimit = Annotated[str, checked(checks.check_memory_limit)]
# a column, text spec or output path: an empty one fails later, away from its key
Name = Annotated[str, checked(checks.check_name)]
OptionalName = Annotated[str | None, checked(checks.check_name, optional=True)]
Scheduler = Annotated[str | None, checked(checks.check_scheduler, optional=True)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class PoolSpec(_Strict):
    """The data to choose from."""

    paths: list[str] = Field(min_length=1)
    text: Name = "text"
    id_field: Name = "id"
    partition_mb: PartitionMB = 4.0

    _paths = field_validator("paths", mode="before")(_as_list)


class Budget(_Strict):
    """How much to keep: exactly one of a row count, a share of eligible rows, or a score
    threshold."""

    k: OptionalCount = None
    fraction: OptionalFraction = None
    threshold: OptionalFinite = None

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
    text: OptionalName = None
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
    weights: dict[str, NonNegative] = Field(default_factory=dict)


class OutputSpec(_Strict):
    path: Name
    format: Literal["parquet", "arrow"] = "parquet"
    metrics_sample: Fraction | None = None  # dataselect.writer.metrics_share
    # also write each task's and the union's datasets.load_from_disk layout (<folder>/.hf/)
    save_to_disk: pydantic.StrictBool = False


class ClusterSpec(_Strict):
    """Local cluster by default; ``scheduler`` sends the same job to a running cluster."""

    scheduler: Scheduler = None
    workers: OptionalCount = None
    memory_limit: MemoryLimit = "auto"
    worker_kind: Literal["auto", "processes", "threads"] = "auto"

    @model_validator(mode="after")
    def _local_or_scheduler(self) -> ClusterSpec:
        local = {"workers": self.workers, "memory_limit": self.memory_limit,
                 "worker_kind": self.worker_kind}
        try:
            checks.check_cluster(self.scheduler, local, "cluster.scheduler")
        except InputError as exc:
            raise setting_error(exc, (), local, "cluster") from None
        return self


class TinyModelSpec(_Strict):
    """A small Llama built from a config and trained on the pool's response tokens: what
    the model-based scorers run on where no pretrained model can be downloaded."""

    # the byte-level tokenizer's alphabet alone is 256 tokens
    vocab_size: Annotated[int, checked(checks.check_count, minimum=300)] = 1000
    hidden_size: Count = 64
    layers: Count = 2
    heads: Count = 4
    train_steps: Annotated[int, checked(checks.check_count, minimum=0)] = 200
    lr: Positive = 3e-3
    batch_size: Count = 16
    max_length: Annotated[int, checked(checks.check_count, minimum=8)] = 256
    seed: Seed = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelSpec:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of heads "
                             f"{self.heads}")
        return self


class ModelSpec(_Strict):
    """A model a scorer refers to by name (``model: NAME``): a local folder, or built."""

    path: str | None = None
    build: TinyModelSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> ModelSpec:
        if (self.path is None) == (self.build is None):
            raise ValueError("give exactly one of path or build")
        return self


class AttributionSpec(_Strict):
    """Which of each task's selected rows most influence its held-out rows: ``dataselect
    attribute --method`` run per task after the selection, over the rows the task chose
    (its ``tasks/<task>/`` parts), for the task's ``eval`` rows (``queries: eval``) or its
    target rows (``queries: target``). ``params`` are the method's settings (``proj_dim``,
    ``ridge``, ``kernel``, ``checkpoints``, BIF's sampler, ...)."""

    method: str = "trak"
    model: str | None = None  # required by a method whose settings have a model
    queries: Literal["eval", "target"] = "eval"
    k: int | Literal["all"] = 10
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _method(cls, method: str) -> str:
        """A registered method that reads the rows (a recipe attributes the rows it
        chose, not an index of their features)."""
        from attribution import ATTRIBUTIONS, pool_methods

        if method not in ATTRIBUTIONS.names() or ATTRIBUTIONS[method].reads != "pool":
            names = checks.or_list([repr(name) for name in pool_methods()])
            raise ValueError(f"Input should be {names}")
        return method

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, k: Any) -> Any:
        if k == "all" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            return k
        raise ValueError(f"must be a whole number >= 1 or 'all', got {checks.shown(k)}")

    @field_validator("params")
    @classmethod
    def _method_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # the method's module (torch, for the built-ins): imported only for recipes that
        # attribute
        from attribution.settings import accepted_keys, build_settings, takes

        method = info.data.get("method")
        if method is None:  # refused above; its settings cannot be checked
            return params
        placeholder = {"model": "."} if takes(method, "model") else {}
        if placeholder and "model" in params:
            raise ValueError("give the model as attribution.model, not in params")
        try:
            model = settings_model(accepted_keys(method)).model_validate({**placeholder,
                                                                          **params})
        except pydantic.ValidationError as exc:
            raise NestedError.of((), exc) from None
        typed = {k: v for k, v in model.model_dump(exclude_unset=True).items()
                 if k not in placeholder}
        try:
            build_settings(method, {**placeholder, **typed})
        except InputError as exc:
            raise NestedError([{"loc": (exc.field,) if exc.field else (), "msg": exc.message,
                                 "type": "value_error", "input": typed.get(exc.field or "")}]
                               ) from None
        return typed

    @model_validator(mode="after")
    def _model_given(self) -> AttributionSpec:
        from attribution.settings import takes

        if self.model is None and takes(self.method, "model"):
            raise NestedError([{"loc": ("model",), "msg": "Field required", "type": "missing",
                                 "input": None}])
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
    attribution: AttributionSpec | None = None
    seed: Seed = 0

    @field_validator("targets")
    @classmethod
    def _task_names(cls, targets: dict[str, TargetSpec]) -> dict[str, TargetSpec]:
        for name in targets:
            if not FOLDER_NAME.match(name):
                raise ValueError(f"task name {name!r} must be {FOLDER_NAME_RULE}")
            if name in SCORERS or name in RESERVED_TASK_NAMES:
                what = "a scorer's" if name in SCORERS else "an output column's"
                raise ValueError(f"task name {name!r} is {what} name: the output's "
                                 f"score_{name} column would read as either; rename the task")
        return targets

    @field_validator("scorers", mode="before")
    @classmethod
    def _scorer_names(cls, scorers: Any) -> Any:
        """``scorers: auto`` (or a list of names) means each with its default settings."""
        if isinstance(scorers, str):
            return {scorers: {}}
        if isinstance(scorers, list) and all(isinstance(n, str) for n in scorers):
            twice = sorted({n for n in scorers if scorers.count(n) > 1})
            if twice:
                raise ValueError(f"scorer {twice[0]!r} is listed twice; list it once")
            return {name: {} for name in scorers}
        return scorers

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
            if SCORERS[name].needs_model and "model" not in params:
                raise ValueError(f"scorer {name} needs model: a local folder or the name of "
                                 "an entry of models")
        if self.attribution is not None and self.attribution.queries == "eval":
            missing = [t for t, spec in self.targets.items() if not spec.eval]
            if missing:
                raise ValueError(f"attribution.queries is eval but tasks {missing} have no "
                                 "eval rows (give targets.<task>.eval, or queries: target)")
        if self.combine.weights:  # the check select.combine makes, before any work
            checks.check_weights([self.combine.weights.get(n, 1.0) for n in self.scorers],
                                 "combine.weights")
        self._check_budgets()
        self._check_given_once()
        self._check_settings()
        return self

    def _check_given_once(self) -> None:
        """A scorer's (the warmup's, the attribution's) seed or budget that the recipe's
        own ``seed`` or a task's budget also sets, to another value, is refused: both would
        run, one for the fit and the other for the selection (for scorers,
        :func:`scorers.clashing_setting`, the check the command line shares)."""
        seed = self.seed if "seed" in self.model_fields_set else None
        for task in self.targets:
            budget = self.budget_of(task)
            prefix = "selection" if budget is self.selection else f"targets.{task}.budget"
            spelled = {"seed": "seed", "k": f"{prefix}.k", "fraction": f"{prefix}.fraction"}
            given = {"seed": seed, "k": budget.k, "fraction": budget.fraction}
            for name, params in self.scorers.items():
                clash = clashing_setting(name, params, given)
                if clash is not None:
                    raise setting_error(InputError(
                        f"contradicts {spelled[clash[1]]}: {checks.shown(given[clash[1]])}; "
                        "give one", field=clash[0]), ("scorers", name), params, name)
        # the warmup's and the attribution's settings, filled from the recipe's seed when
        # they do not set it (attribution.params never holds the model: refused already)
        filled = [(("warmup",), self.warmup)]
        if self.attribution is not None:
            filled.append((("attribution", "params"), self.attribution.params))
        for prefix, params in filled:
            if seed is not None and params.get("seed", seed) != seed:
                raise setting_error(InputError(f"contradicts seed: {seed}; give one",
                                               field="seed"), prefix, params, prefix[0])

    def _check_budgets(self) -> None:
        """Every task's budget is one that the selection's policy takes."""
        for task in self.targets:
            budget = self.budget_of(task)
            prefix = "selection." if budget is self.selection else f"targets.{task}.budget."
            try:
                checks.check_policy_budget(
                    self.selection.policy, {n: getattr(budget, n) for n in
                                            ("k", "fraction", "threshold")},
                    prefix=prefix, policy_name="selection.policy")
            except InputError as exc:
                raise setting_error(exc, (), {"selection.policy": self.selection.policy},
                                     "selection") from None

    def _check_settings(self) -> None:
        """The scorers' and the warmup's own range checks, now rather than when their
        stage starts: building a scorer checks its settings (before any file it names,
        which a recipe may create later, e.g. a model it builds)."""
        per_target = len(self.scorers) == 1
        for name, params in self.scorers.items():
            try:
                per_target &= build_scorer(name, dict(params), self.seed).scores_per_target
            except InputError as exc:
                if exc.where is None and exc.field not in _LATER_FIELDS:
                    raise setting_error(exc, ("scorers", name), params, name) from None
                per_target &= bool(params.get("per_target"))  # its model comes later
        policy = resolved_policy(self.selection.policy, self.selection.threshold,
                                 self.default_policy())  # as the run resolves it
        try:
            checks.check_round_robin(policy, per_target, "selection.policy")
        except InputError as exc:
            raise setting_error(exc, (), {"selection.policy": self.selection.policy},
                                 "selection") from None
        if any(needs_warmup(SCORERS[n]) for n in self.scorers) or self.warmup:
            try:
                self.warmup_config().check()
            except InputError as exc:
                raise setting_error(exc, ("warmup",), self.warmup, "warmup") from None

    def default_policy(self) -> str:
        """What ``policy: auto`` means for this recipe's scores: the declared policy of its
        one scorer; several scorers' scores are combined z-scores or ranks, never a
        scorer's own kind, so the top rows."""
        if len(self.scorers) == 1:
            return SCORERS[next(iter(self.scorers))].default_policy
        return "top_k"

    def budget_of(self, task: str) -> Budget:
        budget = self.targets[task].budget
        return budget if budget is not None and budget.is_set else self.selection

    def warmup_config(self) -> WarmupConfig:
        return WarmupConfig(**{"seed": self.seed, **self.warmup})


def _check_params(name: str, params: Any, prefix: tuple[Any, ...]) -> dict[str, Any]:
    try:
        model = settings_model(WarmupConfig if name == "warmup" else SCORERS[name]
                               ).model_validate(params or {})
    except pydantic.ValidationError as exc:
        raise NestedError.of(prefix, exc) from None
    return model.model_dump(exclude_unset=True)


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe; ``overrides`` (dotted keys, e.g. ``output.path``) replace
    values before validation, for command-line flags."""
    where = checks.check_utf8_name(os.fspath(path), "recipe")
    raw = read_recipe_yaml(path, where)
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a YAML mapping of keys (pool, targets, scorers, "
                          "selection, output, ...)", where=where)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    try:
        recipe = Recipe.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise recipe_error(exc, where) from None
    _home_expanded(recipe, where)
    _check_paths(recipe, where)
    return recipe


def absolute_paths(recipe: Recipe) -> Recipe:
    """``recipe`` with its local paths absolute, in place (:func:`dataselect.storage.
    absolute`): its pool, targets, eval rows, output folder, model folders and scorers'
    feature stores and checkpoints. A run makes them so before planning; loading keeps
    them as written, for its messages.

    Why: a recipe's ``cluster.scheduler`` runs its tasks on workers in folders of their
    own, where a relative ``pool.paths`` named another file (or none: "cannot fingerprint
    the file") and a relative output folder another folder."""
    return _map_paths(recipe, lambda key, path: storage.absolute_spec(path)
                      if key.startswith(("pool.", "targets.")) else storage.absolute(path))


def _map_paths(recipe: Recipe, change: Callable[[str, str], str]) -> Recipe:
    """``recipe`` with ``change(key, path)`` applied, in place, to each local path it
    names (``key`` as a refusal names it: ``pool.paths[0]``): pool, targets, eval rows,
    output folder, model folders (not shortcuts), scorers' feature stores and
    checkpoints."""
    recipe.pool.paths = [change(f"pool.paths[{i}]", p) for i, p in enumerate(recipe.pool.paths)]
    for task, spec in recipe.targets.items():
        spec.paths = [change(f"targets.{task}.paths[{i}]", p) for i, p in enumerate(spec.paths)]
        spec.eval = [change(f"targets.{task}.eval[{i}]", p) for i, p in enumerate(spec.eval)]
    recipe.output.path = change("output.path", recipe.output.path)
    for name, spec in recipe.models.items():
        if spec.path and not is_shortcut(spec.path):
            spec.path = change(f"models.{name}.path", spec.path)
    for name, params in recipe.scorers.items():
        for key in ("features", "checkpoints"):
            value = params.get(key)
            if isinstance(value, str) and value:
                params[key] = change(f"scorers.{name}.{key}", value)
            elif isinstance(value, list):
                params[key] = [change(f"scorers.{name}.{key}[{i}]", v)
                               if isinstance(v, str) and v else v for i, v in enumerate(value)]
    return recipe


def _home_expanded(recipe: Recipe, where: str) -> None:
    """A leading ``~`` or ``~user`` in the recipe's paths read as that home folder, in
    place. Why: no shell reads a YAML file, so ``output.path: ~/runs/a`` made a folder
    literally named ``~`` in the working directory, while a ``~`` in the cache settings
    is the home folder; and ``pool.paths: [~/data]`` matched nothing. A ``~user`` naming
    no user here is refused."""
    def expand(key: str, path: str) -> str:
        try:
            return storage.home_expanded(path)
        except InputError as exc:
            raise RecipeError(exc.message, where=where, field=key) from None

    _map_paths(recipe, expand)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _check_paths(recipe: Recipe, where: str) -> None:
    """Every input path must match something now, not when its stage starts."""
    keyed = [(f"pool.paths[{i}]", p) for i, p in enumerate(recipe.pool.paths)]
    for task, spec in recipe.targets.items():
        keyed += [(f"targets.{task}.paths[{i}]", p) for i, p in enumerate(spec.paths)]
        keyed += [(f"targets.{task}.eval[{i}]", p) for i, p in enumerate(spec.eval)]
    # a model shortcut (``path: smollm2``) is fetched and converted when the run starts
    keyed += [(f"models.{n}.path", m.path) for n, m in recipe.models.items()
              if m.path and not is_shortcut(m.path)]
    for key, path in [*keyed, ("output.path", recipe.output.path)]:
        checks.check_utf8_name(path, key)
    for key, path in keyed:
        # data may be in an object store; a model is loaded from a local folder
        found = (os.path.exists(path) or glob.glob(path)) if key.startswith("models.") \
            else storage.matches(path)
        if not found:
            raise RecipeError(f"{path!r} matches no file or folder (paths are relative to "
                              f"the working directory, {storage.working_folder()})",
                              where=where, field=key)
    if storage.is_remote(recipe.output.path):
        raise RecipeError("a recipe's output folder must be local: it holds models, "
                          "evaluation runs and a report besides the selections (its pool "
                          "and targets may be URLs); write it here, then copy tasks/ and "
                          "union/ to the store", where=where, field="output.path")


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain JSON-able data, defaults filled in (recorded in ``.run.json``)."""
    return recipe.model_dump(mode="json")
