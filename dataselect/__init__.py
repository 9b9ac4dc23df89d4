"""dataselect: score a pool of training data against a target, select, write Arrow/Parquet.

The public API::

    from dataselect import read_corpus, select
    from scorers import DSIR

    pool, target = read_corpus("pool/*.parquet"), read_corpus("target.jsonl")
    scores = DSIR().fit(target, pool).score(pool)
    select.importance_resample(pool, scores, k=10_000, seed=0).write("out/", target=target)
"""

from dataselect import metrics, select
from dataselect.corpus import Corpus, read_corpus
from dataselect.errors import (
    DataSelectError,
    DuplicateIdError,
    EmptyCorpusError,
    InputError,
    OutputConflictError,
)
from dataselect.ngrams import NgramHasher
from dataselect.scoring import Scorer, Scores
from dataselect.select import Selection
from dataselect.textspec import TextSpec

__version__ = "0.1.0"

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
    "metrics",
    "read_corpus",
    "select",
]
