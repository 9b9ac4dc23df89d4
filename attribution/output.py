"""Attribution: which training examples most influence a given example.

With LESS features, the influence of training example ``x`` on query ``q`` is the
learning-rate-weighted sum over checkpoints of the cosine between ``x``'s Adam-
preconditioned gradient feature and ``q``'s gradient feature. The pool's features sit in a
FAISS index built from the combined views (:func:`dataselect.features.combine_views`), so
one inner-product search returns the top-k per query; scores are scaled back by the sum of
the weights so they equal LESS's sums exactly. Any other feature (embeddings) works the
same way with one view.

Methods whose scores are plain inner products of unnormalised features (TRAK: the kernel
inverse folded into the query side, ``1 - p`` into the training side) are served by the
same cosine index through :func:`inner_product_index`: every training row gets one extra
coordinate ``sqrt(M^2 - |x|^2)`` (``M`` the largest row norm), so all rows have norm ``M``
and the cosine with a query padded by 0 is ``q . x / (M |q|)``: the same order as the inner
product, scaled back exactly (Bachrach et al. 2014). :func:`dense_scores` is the path for
k = all rows: a float32 ``(rows, queries)`` matrix, written by
:func:`write_attribution_matrix`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from attribution.index import FeatureIndex
from dataselect.errors import InputError
from dataselect.outdir import OutputFolder, check_output_file, owned_metadata
from dataselect.output import atomic_write, load_array, read_table, write_table

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


def inner_product_index(ids: Sequence[str], vectors: np.ndarray, **options: object
                        ) -> tuple[FeatureIndex, float]:
    """A cosine :class:`FeatureIndex` whose order is the inner product's, and the norm
    ``M`` to pass to :func:`inner_product_queries`' scale (see the module docstring)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.einsum("ij,ij->i", vectors, vectors)
    top = float(norms.max()) if len(norms) else 0.0
    top = top if top > 0 else 1.0
    padded = np.concatenate([vectors, np.sqrt(np.maximum(top - norms, 0))[:, None]], 1)
    index = FeatureIndex.build([(list(ids), padded.astype(np.float32))], padded.shape[1],
                               **options)
    return index, float(np.sqrt(top))


def attribute_inner(index: FeatureIndex, norm: float, query_ids: Sequence[str],
                    query_vectors: np.ndarray, k: int, batch_size: int = 1024) -> pa.Table:
    """:func:`attribute` on an :func:`inner_product_index`: the top-k by inner product,
    scores equal to ``q . x`` (float32 rounding of the index aside)."""
    queries = np.asarray(query_vectors, dtype=np.float64)
    rows = np.repeat(np.linalg.norm(queries, axis=1) * norm, min(k, len(index.ids)))
    padded = np.concatenate([queries, np.zeros((len(queries), 1))], 1).astype(np.float32)
    table = attribute(index, query_ids, padded, k, batch_size=batch_size)
    scores = table["score"].to_numpy().astype(np.float64) * rows
    return table.set_column(3, "score", pa.array(scores, pa.float32()))


def dense_scores(train: np.ndarray, queries: np.ndarray, block: int = 65536) -> np.ndarray:
    """Every ``(training row, query)`` inner product as a float32 ``(rows, queries)``
    matrix, computed in blocks of training rows (no long table, no Python lists)."""
    train, queries = np.asarray(train), np.asarray(queries, dtype=np.float32)
    if train.ndim != 2 or queries.ndim != 2 or train.shape[1] != queries.shape[1]:
        raise InputError(f"training features {train.shape} and query features "
                         f"{queries.shape} do not match")
    out = np.empty((len(train), len(queries)), dtype=np.float32)
    for start in range(0, len(train), block):
        out[start:start + block] = np.asarray(train[start:start + block],
                                              dtype=np.float32) @ queries.T
    return out


def top_k_table(matrix: np.ndarray, train_ids: Sequence[str], query_ids: Sequence[str],
                k: int) -> pa.Table:
    """The ``k`` best rows per query of a dense ``(rows, queries)`` score matrix, as
    :func:`attribute`'s table (ties: the lower row first)."""
    k = min(k, len(train_ids))
    matrix = np.asarray(matrix)
    order = np.argsort(-matrix, axis=0, kind="stable")[:k]  # (k, queries)
    train = np.asarray(train_ids, dtype=object)
    return pa.table({
        "query_id": pa.array(np.repeat(np.asarray(query_ids, dtype=object), k), pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(query_ids))),
        "train_id": pa.array(train[order.T.reshape(-1)], pa.string()),
        "score": pa.array(np.take_along_axis(matrix, order, 0).T.reshape(-1), pa.float32()),
    }, schema=ATTRIBUTION_SCHEMA)


MATRIX_FILE, TRAIN_IDS_FILE, QUERY_IDS_FILE = "scores.npy", "train_ids.parquet", \
    "query_ids.parquet"


def write_attribution_matrix(matrix: np.ndarray, train_ids: Sequence[str],
                             query_ids: Sequence[str], folder: str | os.PathLike,
                             inputs: list[str] | None = None) -> str:
    """Write a dense attribution folder: ``scores.npy`` (float32, training rows x
    queries, ``np.load(..., mmap_mode="r")`` reads it lazily) and the ids of its rows and
    columns as Parquet. The folder is claimed like every output of dataselect's."""
    if matrix.shape != (len(train_ids), len(query_ids)):
        raise InputError(f"a {matrix.shape} matrix for {len(train_ids)} training rows and "
                         f"{len(query_ids)} queries")
    claimed = OutputFolder.claim(folder, "attributions", None, inputs=inputs or [])
    claimed.expect([MATRIX_FILE, TRAIN_IDS_FILE, QUERY_IDS_FILE])
    with atomic_write(claimed.join(MATRIX_FILE)) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(matrix, dtype=np.float32))
    write_table(pa.table({"id": pa.array(list(train_ids), pa.string())}),
                claimed.join(TRAIN_IDS_FILE))
    write_table(pa.table({"id": pa.array(list(query_ids), pa.string())}),
                claimed.join(QUERY_IDS_FILE))
    return claimed.path


def read_attribution_matrix(folder: str | os.PathLike
                            ) -> tuple[np.ndarray, list[str], list[str]]:
    """``(matrix, train_ids, query_ids)`` of a folder written by
    :func:`write_attribution_matrix` (the matrix memory-mapped)."""
    folder = os.fspath(folder)
    return (load_array(os.path.join(folder, MATRIX_FILE), mmap=True),
            read_table(os.path.join(folder, TRAIN_IDS_FILE))["id"].to_pylist(),
            read_table(os.path.join(folder, QUERY_IDS_FILE))["id"].to_pylist())


def write_attributions(table: pa.Table, path: str | os.PathLike,
                       inputs: list[str] | None = None) -> None:
    """Write attribution rows atomically as Parquet, marked as dataselect's so that a
    rerun may replace the file but a user's file of the same name is never overwritten."""
    path = check_output_file(path, "attributions", inputs or [])
    metadata = {**(table.schema.metadata or {}), **owned_metadata("attributions")}
    write_table(table.replace_schema_metadata(metadata), path)
