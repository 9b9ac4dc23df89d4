"""Compute a corpus' features into a feature store, one task per partition, resumably.

A *featurizer* is a fitted-or-not scorer that can turn a batch into vectors: it has
``featurize_batch(batch, side)`` returning ``(rows, views, dim)`` floats and
``feature_description(side)`` saying what made them. ``side`` is ``"pool"`` for training
examples and ``"query"`` for the examples attribution asks about (LESS uses Adam-
preconditioned gradients on the pool side and plain gradients on the query side; an
embedding is the same on both).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from dataselect.corpus import Corpus
from dataselect.defaults import SIDES as SIDES  # re-exported for the featurizers
from dataselect.errors import InputError, PluginError
from dataselect.execution import Runner, default_runner, partition_tasks, run_stage
from dataselect.features import FeatureStore
from dataselect.sampling import id_hashes
from dataselect.scoring import Scores, checked_scores, with_text_columns

Side = Literal["pool", "query"]


@runtime_checkable
class Featurizer(Protocol):
    """What computes features (a scorer that declares ``pool_features``, or any other):
    ``isinstance`` answers for a scorer class as for an instance, from its attributes."""

    name: str
    uses_response_spans: bool

    def featurize_batch(self, batch: pa.Table, side: Side = "pool") -> np.ndarray: ...

    def feature_description(self, side: Side = "pool") -> dict[str, Any]: ...


@dataclass(frozen=True)
class FeaturizePart:
    """Features of one partition: read from the store if finished, else computed and
    stored. Returns ``(rows, reused, zero_rows, id_hashes)``. A shard that is not the one
    this store wrote (an older version's, another store's, edited or cut short:
    :meth:`FeatureStore.read_part` refuses it) is computed again and replaces it: it is a
    file of the store's own, and its features are the pool's, whoever asks."""

    featurizer: Any
    corpus: Corpus
    folder: str
    side: Side

    def __call__(self, index: int) -> tuple[int, bool, int, np.ndarray]:
        store = FeatureStore.open(self.folder)
        if store.has_part(index):
            with contextlib.suppress(InputError):
                ids, matrix = store.read_part(index)
                return len(ids), True, _zero_rows(matrix), id_hashes(ids)
        table = self.corpus.read_partition(index)
        view = self.corpus.scoring_view(table, self.featurizer.uses_response_spans)
        features = self.featurizer.featurize_batch(view, self.side)
        _check_finite_features(self.featurizer, features)
        store.write_part(index, view["id"], features)
        return view.num_rows, False, _zero_rows(features), id_hashes(view["id"])


def _check_finite_features(featurizer: Any, features: Any) -> None:
    """Refuse features holding NaN or infinity from any featurizer (a plug-in's too; the
    built-ins refuse a model's non-finite outputs themselves, naming the model folder):
    the store normalises each vector, and a NaN one would become a zero vector, a row
    "without features" scored 0.0 or left out of an index's answers, with exit 0."""
    with np.errstate(over="ignore"):
        finite = np.isfinite(np.asarray(features, dtype=np.float32))
    if not finite.all():
        raise PluginError(f"the featurizer of {featurizer.name!r} ({type(featurizer).__module__}."
                          f"{type(featurizer).__qualname__}) returned NaN or infinite "
                          "features from featurize_batch: the fault is in it or in its "
                          "model, not in your data")


def _zero_rows(matrix: np.ndarray) -> int:
    """Rows with no feature (e.g. LESS rows whose response was cut off)."""
    return int((np.abs(np.asarray(matrix)).reshape(len(matrix), -1).max(axis=1) == 0).sum())


def featurize(featurizer: Any, corpus: Corpus, folder: str, side: Side = "pool",
              runner: Runner = default_runner) -> dict[str, Any]:
    """Write the features of every partition of ``corpus`` to ``folder``; return counts."""
    description = {**featurizer.feature_description(side), "side": side,
                   "corpus": corpus.fingerprint(), "npartitions": corpus.npartitions}
    # the store as claimed: absolute, since its parts are written where tasks run
    folder = FeatureStore.create(folder, description,
                                 inputs=[*corpus.files, *corpus.roots]).folder
    task = FeaturizePart(featurizer, corpus, folder, side)
    results = run_stage(runner, f"features:{featurizer.name}",
                        partition_tasks(f"features-{featurizer.name}", task, corpus.npartitions))
    # an index maps rows back to ids: a repeated id would make its rows one, as select
    # refuses such a pool
    corpus.check_unique_ids([r[3] for r in results])
    # the store's description records the corpus as planned: one changed since would be
    # described as rows it does not hold (Corpus.fingerprint)
    corpus.check_unchanged(what=side)
    return {"rows": sum(r[0] for r in results),
            "partitions_reused": sum(1 for r in results if r[1]),
            "partitions_computed": sum(1 for r in results if not r[1]),
            "rows_without_features": sum(r[2] for r in results)}


@dataclass(frozen=True)
class ScoreFromStore:
    """Score one partition from its stored pool features, computing and storing them
    first when the part is missing. The scorer turns features into scores with
    ``scores_from_features(ids, features, valid)``; ``valid`` is False for rows stored as
    zeros (no features, e.g. a LESS row whose response was cut off)."""

    scorer: Any
    part: FeaturizePart

    def __call__(self, index: int) -> pa.Table:
        self.part(index)
        ids, features = FeatureStore.open(self.part.folder).read_part(index, mmap=False)
        features = features.astype(np.float32)
        valid = np.abs(features).reshape(len(features), -1).max(axis=1) > 0
        table = self.part.corpus.read_partition(index)
        scores = checked_scores(self.scorer.name, table,
                                self.scorer.scores_from_features(ids, features, valid))
        return with_text_columns(scores, self.part.corpus.texts(table))


def scores_via_store(scorer: Any, corpus: Corpus, folder: str) -> Scores:
    """Lazy scores of ``corpus`` whose pool features live in the store at ``folder``.

    Why: pool features do not depend on the target, so a job that scores one pool against
    several targets (a recipe's tasks), or later builds an index on the same features,
    computes them once; a store made by another model or setting is refused.
    """
    description = {**scorer.feature_description("pool"), "side": "pool",
                   "corpus": corpus.fingerprint(), "npartitions": corpus.npartitions}
    # the store as claimed: absolute, since its parts are written where tasks run
    folder = FeatureStore.create(folder, description, inputs=[*corpus.files, *corpus.roots],
                                 setting="-p features").folder
    task = ScoreFromStore(scorer, FeaturizePart(scorer, corpus, folder, "pool"))
    return Scores(scorer.name, corpus, task, scorer.describe(corpus))
