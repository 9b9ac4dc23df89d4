"""LESS-style attribution: the cosine of query features with the pool's features in a
FAISS index built earlier (``dataselect features`` then ``dataselect index build``).

With LESS's features, the influence of training row ``x`` on query ``q`` is the
learning-rate-weighted sum over checkpoints of the cosine between ``x``'s Adam-
preconditioned gradient feature and ``q``'s gradient feature; the index holds the views
combined with their weights (:func:`dataselect.features.combine_views`), so one search
gives the top-k, and the scores are scaled back by the sum of the weights so they equal
LESS's sums exactly. Any other featurizing scorer (``embed``) works the same way with one
view. The query features are computed here by the same scorer and settings the pool's
were made with, and refused when they differ (:func:`check_compatible`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from attribution.base import Attributor
from attribution.index import FeatureIndex
from attribution.scores import IndexSearch
from dataselect.errors import InputError
from dataselect.features import combine_views

# Feature settings that must agree between an index and the queries searched against it
# (everything except which side of the gradient features they are).
_SIDE_KEYS = ("side", "gradient", "corpus", "npartitions")


@dataclass
class IndexSettings:
    """``attribute --method less``: the pool's index folder (``--index``) and the scorer
    that computes the query features (``--scorer``, built from its own ``-p`` settings,
    the ones the pool's features were made with)."""

    index: str
    featurizer: Any


class LessCosine(Attributor):
    name = "less"
    settings_class = IndexSettings
    reads = "index"

    @property
    def response_spans(self) -> bool:
        return self.settings.featurizer.uses_response_spans

    def attribute(self, train: pa.Table | None, queries: Sequence[pa.Table]) -> IndexSearch:
        """Query features computed here (queries are few), searched in the pool's index."""
        featurizer = self.settings.featurizer
        index = FeatureIndex.load(self.settings.index)
        check_compatible(index, featurizer.feature_description("query"), self.settings.index)
        weights = index.settings.get("features", {}).get("view_weights")
        ids, vectors = [], []
        for view in queries:
            ids += view["id"].to_pylist()
            vectors.append(combine_views(featurizer.featurize_batch(view, "query"), weights))
        return search(index, ids, vectors)


def search(index: FeatureIndex, ids: list[str], vectors: list[np.ndarray]) -> IndexSearch:
    """The query vectors (already combined like the indexed ones) against ``index``, scores
    scaled back to the features' own units (LESS: the learning-rate-weighted cosine
    sum)."""
    scale = float(index.settings.get("features", {}).get("scale", 1.0))
    return IndexSearch(index, np.concatenate(vectors), ids, scale)


def check_compatible(index: FeatureIndex, query: dict[str, Any], where: str) -> None:
    """Refuse queries whose features were made with another model/projection/checkpoints."""
    indexed = index.settings.get("features", {})
    differ = sorted(k for k in set(indexed) | set(query) if k not in _SIDE_KEYS
                    and indexed.get(k) != query.get(k))
    if differ:
        raise InputError(f"query features differ from the indexed ones in: {', '.join(differ)}",
                         where=where)
