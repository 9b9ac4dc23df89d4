"""Scorers: one module per method, each implementing :class:`dataselect.scoring.Scorer`.

``SCORERS`` maps the names used on the command line and in recipes to their classes. Scorers
register through the ``dataselect.scorers`` entry-point group, so a package outside this
repository adds one with one module and one line of packaging metadata::

    [project.entry-points."dataselect.scorers"]
    myscorer = "mypackage.myscorer:MyScorer"

Classes are imported when first looked up, not when this package is imported
(:class:`dataselect.registry.Registry`): listing the names costs nothing, and a job imports
only the scorer it runs (the model-based ones pull in torch and transformers). The built-in
scorers are also listed here, so a source checkout whose packaging metadata is not
installed still finds them; an installed plug-in cannot take a built-in's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dataselect.errors import InputError
from dataselect.params import field_types, validate_settings
from dataselect.registry import Registry, check_own_name, import_class

if TYPE_CHECKING:
    from dataselect.scoring import Scorer

GROUP = "dataselect.scorers"
BUILTIN = {
    "auto": "scorers.auto.scorer:Auto",
    "bads": "scorers.bads.scorer:Bads",
    "dsir": "scorers.dsir:DSIR",
    "embed": "scorers.embed:Embed",
    "fasttext": "scorers.fasttext.scorer:FastText",
    "less": "scorers.less:Less",
    "zipfit": "scorers.zipfit.scorer:ZipFit",
}


def _load(name: str, target: str) -> type[Scorer]:
    """Import ``module:Class`` and check that it keeps the Scorer contract under its name.

    The base class is imported here, not with this package, so that listing scorer names
    (argparse choices for ``dataselect --help``) loads no pandas, pyarrow or Dask."""
    from dataselect.featurize import Featurizer
    from dataselect.layout import FOLDER_NAME, FOLDER_NAME_RULE
    from dataselect.scoring import Scorer, declared_problem

    if not FOLDER_NAME.match(name):  # its score store is the folder .scores/<name>
        raise InputError(f"scorer {name!r} ({target}) has a name that cannot be one: a "
                         f"scorer's name must be {FOLDER_NAME_RULE}", field="scorer")
    cls = import_class("scorer", name, target, "scorer")
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise InputError(f"scorer {name!r} ({target}) is not a dataselect Scorer subclass",
                         field="scorer")
    if (problem := declared_problem(cls)) is not None:
        raise InputError(f"scorer {name!r} ({target}) {problem}", field="scorer")
    if cls.pool_features and not isinstance(cls, Featurizer):
        raise InputError(f"scorer {name!r} ({target}) declares pool_features but computes "
                         "no features: add featurize_batch and feature_description",
                         field="scorer")
    check_own_name("scorer", name, target, cls, "scorer")
    return cls


SCORERS: Registry[Scorer] = Registry(GROUP, BUILTIN, _load, "scorer", "scorer")


def build_scorer(name: str, params: dict[str, Any], seed: int, k: int | None = None,
                 fraction: float | None = None) -> Scorer:
    """Instantiate a registered scorer; parameters are checked against its fields (unknown
    keys, wrong types), then its own ranges; ``seed`` fills a seed it was not given, and
    the budget (``k`` or ``fraction``) fills a scorer that ``takes_budget``. Here, beside
    the registry, so that jobs and the recipe schema both build scorers from below them."""
    cls = SCORERS[name]
    validate_settings(cls, params, name)
    if "seed" in field_types(cls) and "seed" not in params:
        params = {**params, "seed": seed}
    if cls.takes_budget and "k" not in params and "fraction" not in params:
        params = {**params, "k": k, "fraction": fraction}
    return cls(**params)

BUDGET_KEYS = ("k", "fraction")


def clashing_setting(name: str, params: Mapping[str, Any], given: Mapping[str, Any]
                     ) -> tuple[str, str] | None:
    """The first of the scorer's ``params`` that contradicts the job's own setting it is
    filled from (:func:`build_scorer`: the seed, and the budget of a scorer that
    ``takes_budget``), as (the scorer's key, the job's key); None when none does.
    ``given`` holds the job's settings, None where the job was not given one.

    Both kept, the scorer would fit with one value and the job select with the other
    (``-p seed=5 --seed 7``), or ``auto`` measure a budget the selection never takes
    (``-p k=5 --k 10``). An equal value says the same thing twice; a value the job was
    not given is the scorer's alone. The one check the command line, the Python API and
    recipes share; each caller words it in its own terms."""
    cls = SCORERS[name]
    if "seed" in field_types(cls) and _differs(params, "seed", given.get("seed")):
        return "seed", "seed"
    job_budget = [key for key in BUDGET_KEYS if given.get(key) is not None]
    if cls.takes_budget and job_budget:
        for key in BUDGET_KEYS:
            if key in params and params[key] != given.get(key):
                return key, job_budget[0]
    return None


def _differs(params: Mapping[str, Any], key: str, value: Any) -> bool:
    return value is not None and key in params and params[key] != value


_CLASS_NAMES = {target.partition(":")[2]: name for name, target in BUILTIN.items()}


def __getattr__(attribute: str) -> Any:
    """``from scorers import DSIR`` keeps working, importing only that scorer's module."""
    if attribute in _CLASS_NAMES:
        return SCORERS[_CLASS_NAMES[attribute]]
    raise AttributeError(f"module 'scorers' has no attribute {attribute!r}")


__all__ = ["DSIR", "SCORERS", "Auto", "Bads", "Embed", "FastText", "Less", "ZipFit",
           "build_scorer", "clashing_setting"]
