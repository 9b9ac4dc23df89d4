"""Attribution scores in the form a method computed them, each answering the two questions
a job asks, in its cheapest exact way: the top ``k`` training rows per query
(:meth:`Scores.top_k`, a ``(query_id, rank, train_id, score)`` table) and every score
(:meth:`Scores.matrix`, float32, training rows x queries).

- :class:`ScoreMatrix`: the dense matrix itself (BIF);
- :class:`InnerProducts`: training and query representations whose inner product is the
  score (TRAK, TracIn): top-k through an inner-product FAISS index, no matrix formed;
- :class:`IndexSearch`: query vectors searched in a prebuilt cosine index of the pool's
  features (LESS), scores scaled back to the features' own units.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from attribution.index import FeatureIndex
from attribution.output import (
    attribute,
    attribute_inner,
    dense_scores,
    inner_product_index,
    top_k_table,
)
from dataselect.errors import InputError
from dataselect.features import normalize_rows


class Scores(ABC):
    """Scores of ``train_ids`` (rows) for ``query_ids`` (columns)."""

    train_ids: list[str]
    query_ids: list[str]

    @abstractmethod
    def top_k(self, k: int) -> pa.Table:
        """The ``k`` best training rows per query (rank 1 the most influential)."""

    @abstractmethod
    def matrix(self) -> np.ndarray:
        """Every score, float32 ``(training rows, queries)``."""

    def problem(self) -> str | None:
        """What makes these numbers unusable for their ids (a shape that does not match
        them, values that are not finite numbers as float32), or None; the attribute job
        refuses such scores (:func:`attribution.base.checked_attribute`). A form of its
        own is checked through its matrix; the built-in forms check what they hold."""
        return array_problem(self.matrix(), "score matrix", len(self.train_ids),
                             len(self.query_ids))


def array_problem(array: object, what: str, rows: int, columns: int | None = None
                  ) -> str | None:
    """Why ``array`` is not a 2-D array of finite numbers with ``rows`` rows (and
    ``columns`` columns, when given), else None. Values are checked as the float32 they
    are written as: a float64 past float32's range would be written as infinity."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        return f"a {what} of {array.dtype}, not numbers"
    if array.ndim != 2 or array.shape[0] != rows or (columns is not None
                                                     and array.shape[1] != columns):
        wanted = f"({rows}, {'any' if columns is None else columns})"
        return f"a {what} of shape {array.shape} where {wanted} matches its ids"
    with np.errstate(over="ignore"):
        finite = np.isfinite(array.astype(np.float32, copy=False))
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        return (f"a {what} holding {array[row, column]} at row {row}, column {column}, not "
                "a finite number (as float32)")
    return None


class ScoreMatrix(Scores):
    def __init__(self, matrix: np.ndarray, train_ids: Sequence[str],
                 query_ids: Sequence[str]) -> None:
        # a plug-in's nested lists or CPU tensor become the array the writers take
        self.scores = np.asarray(matrix)
        self.train_ids, self.query_ids = list(train_ids), list(query_ids)

    def top_k(self, k: int) -> pa.Table:
        return top_k_table(self.scores, self.train_ids, self.query_ids, k)

    def matrix(self) -> np.ndarray:
        return self.scores


class InnerProducts(Scores):
    """``score(q, x) = train[x] . queries[q]``."""

    def __init__(self, train: np.ndarray, queries: np.ndarray, train_ids: Sequence[str],
                 query_ids: Sequence[str]) -> None:
        self.train, self.queries = train, queries
        self.train_ids, self.query_ids = list(train_ids), list(query_ids)

    def top_k(self, k: int) -> pa.Table:
        index, norm = inner_product_index(self.train_ids, self.train)
        return attribute_inner(index, norm, self.query_ids, self.queries, k)

    def matrix(self) -> np.ndarray:
        return dense_scores(self.train, self.queries)

    def problem(self) -> str | None:
        """Checked on the representations, without forming the matrix."""
        train = array_problem(self.train, "training representation", len(self.train_ids))
        if train is not None:
            return train
        return array_problem(self.queries, "query representation", len(self.query_ids),
                             np.shape(self.train)[1])


class IndexSearch(Scores):
    """Query vectors (combined like the indexed ones) against a cosine index; ``scale``
    multiplies the cosines (LESS: the sum of the checkpoints' weights)."""

    def __init__(self, index: FeatureIndex, vectors: np.ndarray, query_ids: Sequence[str],
                 scale: float = 1.0) -> None:
        self.index, self.vectors, self.scale = index, vectors, scale
        self.train_ids, self.query_ids = list(index.ids), list(query_ids)

    def top_k(self, k: int) -> pa.Table:
        return attribute(self.index, self.query_ids, self.vectors, k, scale=self.scale)

    def problem(self) -> str | None:
        """The query vectors (the index is dataselect's own, checked when loaded)."""
        if not np.isfinite(self.scale):
            return f"a scale of {self.scale}, not a finite number"
        return array_problem(self.vectors, "query vector array", len(self.query_ids))

    def matrix(self) -> np.ndarray:
        """From the index's own (unit) vectors: a flat index keeps them exactly."""
        if self.index.kind != "flat":
            raise InputError("k = all needs a flat index (ivf and hnsw keep no exact rows)",
                             field="-k")
        train = self.index.index.reconstruct_n(0, self.index.index.ntotal)
        return dense_scores(train, normalize_rows(self.vectors)) * self.scale
