"""Attribution: which training examples most influence a given example.

With LESS features, the influence of training example ``x`` on query ``q`` is the
learning-rate-weighted sum over checkpoints of the cosine between ``x``'s Adam-
preconditioned gradient feature and ``q``'s gradient feature. The pool's features sit in a
FAISS index built from the combined views (:func:`dataselect.features.combine_views`), so
one inner-product search returns the top-k per query; scores are scaled back by the sum of
the weights so they equal LESS's sums exactly. Any other feature (embeddings) works the
same way with one view.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from dataselect.errors import InputError
from dataselect.index import FeatureIndex
from dataselect.outdir import check_output_file, owned_metadata
from dataselect.output import write_table

ATTRIBUTION_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("rank", pa.int32()),
    ("train_id", pa.string()),
    ("score", pa.float32()),
])


def attribute(index: FeatureIndex, query_ids: Sequence[str], query_vectors: np.ndarray,
              k: int, scale: float = 1.0, batch_size: int = 1024) -> pa.Table:
    """The ``k`` most influential training rows per query, as ``(query_id, rank, train_id,
    score)`` rows (rank 1 = most influential), queries in the order given.

    ``query_vectors`` must be built like the indexed vectors (same views and weights);
    ``scale`` multiplies the cosine scores (LESS: the sum of checkpoint weights).
    """
    query_ids = list(query_ids)
    if len(query_ids) != len(query_vectors):
        raise InputError(f"{len(query_ids)} query ids for {len(query_vectors)} vectors")
    if len(set(query_ids)) != len(query_ids):
        raise InputError("query ids are not unique")
    columns: dict[str, list] = {name: [] for name in ATTRIBUTION_SCHEMA.names}
    for start in range(0, len(query_ids), batch_size):
        scores, ids = index.search(query_vectors[start:start + batch_size], k)
        for q, (row_scores, row_ids) in enumerate(zip(scores, ids)):
            columns["query_id"].extend([query_ids[start + q]] * len(row_ids))
            columns["rank"].extend(range(1, len(row_ids) + 1))
            columns["train_id"].extend(row_ids)
            columns["score"].extend((row_scores * scale).tolist())
    return pa.table(columns, schema=ATTRIBUTION_SCHEMA)


def write_attributions(table: pa.Table, path: str | os.PathLike,
                       inputs: list[str] | None = None) -> None:
    """Write attribution rows atomically as Parquet, marked as dataselect's so that a
    rerun may replace the file but a user's file of the same name is never overwritten."""
    path = check_output_file(path, "attributions", inputs or [])
    metadata = {**(table.schema.metadata or {}), **owned_metadata("attributions")}
    write_table(table.replace_schema_metadata(metadata), path)
