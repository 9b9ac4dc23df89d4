"""Feature store: per-example vectors (gradient projections, embeddings) on disk.

Features are the expensive part of LESS and RDS+ (a forward and backward pass per
example), and they serve three consumers: scoring against a target, the FAISS index and
attribution. So they are computed once, partition by partition, and kept as shards in
pool partition order:

    <folder>/_manifest.json          what made them (model, checkpoints, projection, pool)
    <folder>/part-NNNNN.npy          float16, shape (rows, views, dim), rows L2-normalised
    <folder>/part-NNNNN.ids.parquet  the ids of those rows, in the same order

``views`` is 1 for embeddings and the number of checkpoints for LESS. Rows are stored unit
length because every consumer uses cosine similarity, and float16 then keeps ~3 digits on
every row whatever the raw gradient scale (raw SGD gradients of a trained model can fall
below float16's range). The ids file is written after the matrix, atomically, so a shard
counts as finished exactly when its ids file exists: a resumed job redoes only the rest.
The store is finished when every part the manifest plans (``npartitions``) is: readers of
the whole store (an index) refuse an unfinished one, whose missing rows they would never
return.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dataselect import storage
from dataselect.errors import InputError
from dataselect.footer import (
    FOOTER_KEY,
    PartOrigin,
    arrays_digest,
    job_digest,
    read_footer,
    replaced,
)
from dataselect.layout import FEATURES_DIR, own_place
from dataselect.outdir import OutputFolder, check_claimable, naming_setting
from dataselect.output import (
    atomic_write,
    damaged_file,
    jsonable,
    load_array,
    read_json,
    read_part_info,
    read_table,
    remove_stale_temporaries,
    write_json,
    write_table,
)
from dataselect.records import FeatureManifest, check_record

MANIFEST = "_manifest.json"
# ASCII digits only: \d takes any Unicode digit, and int() would read a user's file
# named with fullwidth digits as one of the store's shards
PART_IDS = re.compile(r"part-([0-9]{5})\.ids\.parquet")
# every file a store writes, besides its marker: a killed job's temporary of one of these
# is deleted when the store is opened again, a user's own .tmp-* file never
STORE_FILE = re.compile(re.escape(MANIFEST) + r"|part-[0-9]{5}\.(?:npy|ids\.parquet)")
STORE_DTYPE = np.float16


def _matrix_digest(matrix: np.ndarray) -> str:
    return arrays_digest({"matrix": np.asarray(matrix)})


def normalize_rows(matrix: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit-length vectors along ``axis`` (all-zero vectors stay zero), as float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=axis, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def model_unit_rows(matrix: Any, model: str, axis: int = -1, checkpoints: str = "",
                    inputs: Any = None) -> np.ndarray:
    """:func:`normalize_rows` of vectors a model computed (embeddings, projected
    gradients), refusing any NaN or infinity in one line naming the model folder, and,
    given ``inputs`` (a boolean per row: the row gave the model something, text or
    response tokens), an all-zero vector of such a row.

    A model with a NaN weight (a diverged checkpoint) or a non-finite setting its config
    accepts gives NaN vectors, and :func:`normalize_rows` turns those into zero vectors:
    every score would be 0.0 and the selection arbitrary, with exit 0. A model that
    computes nothing (a zeroed final norm weight) gives zero vectors directly, with the
    same result; a real model's vector of a row with tokens is never exactly zero, so
    zero is kept only for rows without input (an empty text has no embedding)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise InputError(f"the model{checkpoints} computed NaN or infinite values for these "
                         "rows (a NaN weight, a diverged checkpoint or a non-finite setting "
                         "in config.json): use a model whose outputs are finite",
                         where=str(model))
    if inputs is not None:
        zero = ~matrix.any(axis=axis)  # per row, or per row and view
        zero = zero.reshape(len(matrix), -1).any(axis=1) & np.asarray(inputs, bool)
        if zero.any():
            raise InputError(f"the model{checkpoints} computed all-zero vectors for "
                             f"{int(zero.sum())} of these {len(matrix)} rows with text (a "
                             "zeroed weight such as the final norm's, or a config.json "
                             "setting that zeroes every hidden state): use a model that "
                             "computes something", where=str(model))
    return normalize_rows(matrix, axis)


def check_feature_folder(folder: str, out: str, inputs: list[str],
                         setting: str = "-p features", out_setting: str = "--out",
                         recipe_scorer: str = "") -> None:
    """Refuse, before any work, a feature store folder (``setting``) that a job could not
    claim once its model has run, in one line naming ``setting``: one that is, contains or
    lies inside a folder the job writes in its output ``out`` (``out_setting``): a
    selection at any visible path (every reader of it would read the features as its
    rows), the job's own bookkeeping (``.scores``, ``.stats``, ``.hf``...), and for a
    recipe (``recipe_scorer`` names the scorer whose store it is) its root,
    ``tasks/<task>``, ``union``, ``.models``, ``eval``... A hidden folder of the user's
    there (``OUT/.features``, a recipe's ``.features/<scorer>``) is fine. Also an input, a
    folder of someone else's (a model folder), another output of dataselect's. Without
    this the job ran its model first, wrote the store into the folder and only then
    refused it, naming neither the setting nor the store."""
    if not (storage.is_remote(folder) or storage.is_remote(out)):  # else refused below
        _refuse_in_out(folder, out, setting, out_setting, recipe_scorer)
    with naming_setting(setting):
        check_claimable(folder, "features", inputs)


def _refuse_in_out(folder: str, out: str, setting: str, out_setting: str,
                   recipe_scorer: str) -> None:
    """Refuse a feature store folder that is, holds or lies in a folder the job writes in
    ``out``. First: a resumed ``out`` is marked, and the claim's check would call it "the
    output of another dataselect job"; a new one is checked only once the store is
    written into it."""
    path, out_path = os.path.realpath(folder), os.path.realpath(out)
    relative = os.path.relpath(path, out_path)
    outside = relative == ".." or relative.startswith(".." + os.sep)
    hint = os.path.join(out, FEATURES_DIR, *[recipe_scorer][:bool(recipe_scorer)])
    if not outside:
        parts = () if relative == "." else Path(relative).parts
        taken = own_place(parts, bool(recipe_scorer))
        if taken is not None:
            where = (f"is {out_setting} ({out})" if not parts
                     else f"lies in {out_setting} ({out}), {taken}")
            raise InputError(f"{setting}={folder} {where}: give {setting} a folder outside "
                             f"{out_setting}, or a hidden one of yours in it ({hint})")
    beyond = os.path.relpath(out_path, path)
    if not (beyond == ".." or beyond.startswith(".." + os.sep)):
        raise InputError(f"{setting}={folder} contains {out_setting} ({out}): the job's "
                         f"output would lie in the feature store; give {setting} a folder "
                         f"that does not hold {out_setting}")


def combine_views(features: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """One unit vector per row from ``(rows, views, dim)`` unit vectors, such that the dot
    product of two combined rows is the weighted mean of their per-view cosines.

    View ``c`` is scaled by ``sqrt(w_c / sum(w))`` and the views are concatenated. LESS sums
    cosines over checkpoints weighted by learning rate; with this, one inner-product search
    (FAISS) gives that sum divided by ``sum(w)``, the same ranking.
    """
    features = np.asarray(features, dtype=np.float32)
    views = features.shape[1]
    weights = np.ones(views) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (views,) or (weights < 0).any() or weights.sum() <= 0:
        raise InputError(f"need {views} non-negative view weights with a positive sum, got "
                         f"{weights.tolist()}")
    scale = np.sqrt(weights / weights.sum()).astype(np.float32)
    return (features * scale[None, :, None]).reshape(len(features), -1)


@dataclass
class FeatureStore:
    """A folder of feature shards. Open with :meth:`create` (to write) or :meth:`open`."""

    folder: str
    description: dict[str, Any]

    @classmethod
    def create(cls, folder: str | os.PathLike, description: dict[str, Any],
               inputs: list[str] | None = None, setting: str = "--out") -> FeatureStore:
        """Open ``folder`` for writing features described by ``description``.

        The folder must be new, empty or a feature store of dataselect's, outside the
        ``inputs``. One written with a different description (another model, projection or
        pool) is refused rather than mixed; the same description resumes it. A refusal
        names ``setting``, the one that gave the folder (``-p features`` for a scorer's).
        """
        with naming_setting(setting):
            claimed = OutputFolder.claim(folder, "features", description,
                                         inputs=inputs or [], overwrite=None)
        path = claimed.join(MANIFEST)
        if not os.path.exists(path):
            write_json(description, path)
        claimed.remove_temporaries()
        remove_stale_temporaries(claimed.path,
                                 lambda name: bool(STORE_FILE.fullmatch(name)))
        return cls(claimed.path, jsonable(description))

    @classmethod
    def open(cls, folder: str | os.PathLike) -> FeatureStore:
        path = os.path.join(str(folder), MANIFEST)
        if not os.path.exists(path):
            raise InputError("not a feature folder (no _manifest.json)", where=str(folder))
        description = read_json(path)
        check_record(description, FeatureManifest, path)
        return cls(str(folder), description)

    def matrix_path(self, index: int) -> str:
        return os.path.join(self.folder, f"part-{index:05d}.npy")

    def ids_path(self, index: int) -> str:
        return os.path.join(self.folder, f"part-{index:05d}.ids.parquet")

    def has_part(self, index: int) -> bool:
        return os.path.exists(self.ids_path(index))

    def parts(self) -> list[int]:
        """Indices of the finished shards, ascending. A file that only looks like a shard's
        (``part-abcde.ids.parquet``) is not one dataselect wrote, and is left alone."""
        names = (PART_IDS.fullmatch(p.name) for p in Path(self.folder).glob("part-*"))
        return sorted(int(match.group(1)) for match in names if match)

    def write_part(self, index: int, ids: pa.Array, features: np.ndarray) -> None:
        """Store ``features`` (rows, views, dim) for ``ids``, normalising each vector."""
        if features.ndim != 3 or features.shape[0] != len(ids):
            raise ValueError(f"features of shape {features.shape} for {len(ids)} ids")
        matrix = normalize_rows(features).astype(STORE_DTYPE)
        with atomic_write(self.matrix_path(index)) as tmp, open(tmp, "wb") as f:
            np.save(f, matrix)
        # the ids file's footer names the store and the shard, and hashes both files
        # (dataselect.footer): a shard of another store, or edited, is refused when read
        table = self._origin(index).stamp(pa.table({"id": pa.array(ids, pa.string())}),
                                          ("id",), matrix=_matrix_digest(matrix))
        write_table(table, self.ids_path(index))

    def _origin(self, index: int) -> PartOrigin:
        return PartOrigin(job_digest(self.description), index)

    def read_part(self, index: int, mmap: bool = True, check_matrix: bool = True
                  ) -> tuple[pa.Array, np.ndarray]:
        """``(ids, features)`` of shard ``index``; the matrix is memory-mapped by default.
        Refused unless the shard is the one this store wrote (:mod:`dataselect.footer`),
        its matrix's values included unless ``check_matrix`` is false (the caller then
        calls :meth:`check_matrix` itself)."""
        ids = self._read_ids(index)
        path = self.matrix_path(index)
        if not os.path.lexists(path):
            # its ids file is there, so the store wrote the matrix: it was deleted or moved
            # since. np.load's FileNotFoundError was a traceback from index build and from
            # the features rerun, which now computes the part again on this InputError
            raise InputError("is missing, though its ids file is there (deleted or moved): "
                             "restore it, or run dataselect features again with the same "
                             "settings to compute it", where=path)
        matrix = load_array(path, mmap)
        shape = (len(ids), self.views, self.description.get("dim"))
        if matrix.ndim != 3 or any(want is not None and got != want
                                   for got, want in zip(matrix.shape, shape, strict=True)):
            raise damaged_file(self.matrix_path(index), f"it holds a matrix of shape "
                               f"{matrix.shape}, not (rows, views, dim) = {shape}")
        if check_matrix:
            self.check_matrix(index, matrix)
        return ids, matrix

    def check_matrix(self, index: int, matrix: np.ndarray) -> None:
        """Refuse shard ``index``'s ``matrix`` unless it holds the values written."""
        path = self.ids_path(index)
        metadata, _ = read_part_info(path)
        footer = read_footer(path, (metadata or {}).get(FOOTER_KEY))
        if footer.get("matrix") != _matrix_digest(matrix):
            raise replaced(self.matrix_path(index), "its values are not the ones dataselect "
                                                    "wrote")

    def _read_ids(self, index: int) -> pa.Array:
        """A shard's ids: strings, as :meth:`write_part` stores them, in the ids file this
        store wrote for the shard."""
        path = self.ids_path(index)
        table = read_table(path)
        if "id" not in table.column_names:
            raise damaged_file(path, "it has no 'id' column")
        ids = table["id"].combine_chunks()
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            raise damaged_file(path, f"its ids are {ids.type}, not strings")
        self._origin(index).check_table(path, table)
        return ids

    def check_finished(self) -> None:
        """Refuse a store missing one of the parts its manifest plans (``npartitions``): a
        ``features`` run stopped before the end, or a part's ids file gone. Its finished
        parts alone were indexed and searched, exit 0, and the missing rows were never
        returned. A store whose manifest plans no count (an older version's) is taken as
        it is."""
        planned = self.description.get("npartitions")
        if not isinstance(planned, int) or isinstance(planned, bool):
            return
        finished = set(self.parts())
        missing = [index for index in range(planned) if index not in finished]
        if missing:
            verb = "has" if len(missing) == 1 else "have"
            raise InputError(f"is an unfinished feature store: {len(missing)} of its "
                             f"{planned} parts {verb} no ids file (first "
                             f"{os.path.basename(self.ids_path(missing[0]))}; a features "
                             "run stopped before the end, or the file was deleted): rerun "
                             "dataselect features with the same settings to finish it",
                             where=self.folder)

    def iter_parts(self) -> Iterator[tuple[int, pa.Array, np.ndarray]]:
        """Every shard of a finished store (:meth:`check_finished`), refusing one holding a
        NaN or infinite value: an index would silently never return that row (FAISS's
        inner products with it are NaN)."""
        self.check_finished()
        for index in self.parts():
            ids, matrix = self.read_part(index, check_matrix=False)
            finite = np.isfinite(matrix).reshape(len(matrix), -1).all(axis=1)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise InputError(f"the features of id {ids[row].as_py()!r} (row {row}) hold "
                                 "NaN or infinity: the file was damaged or edited; compute "
                                 "the features again", where=self.matrix_path(index))
            self.check_matrix(index, matrix)
            yield index, ids, matrix

    def combined(self, weights: np.ndarray | None = None
                 ) -> Iterator[tuple[pa.Array, np.ndarray]]:
        """``(ids, vectors)`` per shard with the views combined (see :func:`combine_views`);
        ``weights`` default to the ones recorded in the manifest, else equal."""
        if weights is None:
            weights = self.description.get("view_weights")
        for _, ids, matrix in self.iter_parts():
            yield ids, combine_views(matrix, weights)

    @property
    def dim(self) -> int:
        return int(self.description["dim"])

    @property
    def views(self) -> int:
        return int(self.description.get("views", 1))
