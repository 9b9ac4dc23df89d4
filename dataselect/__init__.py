"""dataselect: score a pool of training data against a target, select, write Arrow/Parquet.

The public API::

    from dataselect import read_corpus, select
    from scorers import DSIR

    pool, target = read_corpus("pool/*.parquet"), read_corpus("target.jsonl")
    scores = DSIR().fit(target, pool).score(pool)
    select.importance_resample(pool, scores, k=10_000, seed=0).write("out/", target=target)

The names below are imported when first used, not with the package: every submodule import
(``dataselect.checks`` for the command line's flag types, say) runs this file first, and
importing the whole API here would load pandas, pyarrow and Dask, a second before
``dataselect --help`` could answer.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataselect import metrics, select
    from dataselect.corpus import Corpus, read_corpus
    from dataselect.errors import (
        DataSelectError,
        DuplicateIdError,
        EmptyCorpusError,
        InputError,
        OutputConflictError,
    )
    from dataselect.hf import load_hf
    from dataselect.ngrams import NgramHasher
    from dataselect.scoring import Scorer, Scores
    from dataselect.select import Selection
    from dataselect.textspec import TextSpec

# public name -> the module that defines it
_HOMES = {
    "Corpus": "dataselect.corpus",
    "read_corpus": "dataselect.corpus",
    "DataSelectError": "dataselect.errors",
    "DuplicateIdError": "dataselect.errors",
    "EmptyCorpusError": "dataselect.errors",
    "InputError": "dataselect.errors",
    "OutputConflictError": "dataselect.errors",
    "NgramHasher": "dataselect.ngrams",
    "load_hf": "dataselect.hf",
    "Scorer": "dataselect.scoring",
    "Scores": "dataselect.scoring",
    "Selection": "dataselect.select",
    "TextSpec": "dataselect.textspec",
}
_SUBMODULES = ("metrics", "select")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"dataselect.{name}")
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module 'dataselect' has no attribute {name!r}")


def package_version() -> str:
    """The installed distribution's version (pyproject.toml is its one definition)."""
    from importlib import metadata

    try:
        return metadata.version("dataselect")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
        return "unknown (not installed)"


__all__ = [
    "Corpus",
    "DataSelectError",
    "DuplicateIdError",
    "EmptyCorpusError",
    "InputError",
    "NgramHasher",
    "OutputConflictError",
    "Scorer",
    "Scores",
    "Selection",
    "TextSpec",
    "load_hf",
    "metrics",
    "read_corpus",
    "select",
]
