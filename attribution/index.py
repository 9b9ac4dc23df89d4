"""FAISS index over feature vectors, with the mapping back to example ids.

Exact cosine search is ``IndexFlatIP`` over L2-normalised rows: the default, because
attribution and selection results should not depend on an approximation. ``ivf``
(``IndexIVFFlat``, trained on a seeded sample) and ``hnsw`` (``IndexHNSWFlat``) trade exact
results for speed on large pools. When FAISS sees GPUs the flat and IVF indexes run on one
through ``StandardGpuResources``; HNSW has no GPU version in FAISS and stays on the CPU.
Saved indexes are always CPU indexes, so a GPU-built index loads on a CPU machine.

Vectors are added shard by shard (see :mod:`dataselect.features`), so building never
holds more than one shard besides the index itself. FAISS keeps int64 row numbers; the ids
live beside the index in ``ids.parquet``, in row order.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from dataselect.defaults import DEFAULT_HNSW_M, DEFAULT_NPROBE
from dataselect.errors import InputError
from dataselect.features import normalize_rows
from dataselect.fingerprint import hash_file
from dataselect.footer import columns_digest
from dataselect.outdir import OutputFolder, recorded_identity, recorded_kind
from dataselect.output import (
    atomic_write,
    damaged_if_unreadable,
    read_json,
    read_table,
    write_json,
    write_table,
)
from dataselect.records import IndexMeta, WrittenFile, check_record

IndexKind = Literal["flat", "ivf", "hnsw"]
Shards = Iterable[tuple[Any, np.ndarray]]  # (ids, vectors) pairs
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "index.json"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise InputError("the index needs FAISS: pip install faiss-cpu (or faiss-gpu-cu12)"
                         ) from error
    return faiss


def gpu_count() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@contextlib.contextmanager
def faiss_os_errors(path: str) -> Iterator[None]:
    """FAISS reports a failed write as a RuntimeError whose text holds the system's message
    ("File too large" past ``ulimit -f``, "No space left on device"); turned back into the
    OSError it was, it gets the one line (and the fix) every other write gets."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        for code in sorted(errno.errorcode):
            message = os.strerror(code)
            if message and not message.startswith("Unknown error") and message in text:
                raise OSError(code, message, path) from exc
        raise


def _check_index_ids(ids: list[Any]) -> None:
    """Every row's id a string, and no id twice: a search returns ids, so a repeated one
    (a feature store put together by hand, or edited) came back twice for one query and a
    null one as None, silently."""
    for found in ids:
        if not isinstance(found, str):
            raise InputError(f"an id of the features is {found!r}, not a string: the "
                             "feature store was damaged or edited; compute the features "
                             "again", field="id")
    seen: set[str] = set()
    for found in ids:
        if found in seen:
            raise InputError(f"id {found!r} has features twice (in two parts or rows): the "
                             "feature store was damaged or edited; compute the features "
                             "again", field="id")
        seen.add(found)


def index_identity(features: dict[str, Any] | None) -> dict[str, Any] | None:
    """The identity an index folder's marker records: the description of the feature
    store it indexes (None, ownership only, for an index of vectors given directly)."""
    return None if features is None else {"features": features}


def check_index_out(folder: str, features: dict[str, Any], overwrite: bool) -> None:
    """Refuse, before the index is built, an index ``folder`` holding another store's
    index (unless ``overwrite``), as :meth:`FeatureIndex.save` will: building an IVF or
    HNSW index of a large pool takes a while, and was done before the refusal."""
    if overwrite or recorded_kind(folder) != "index" or recorded_identity(folder) is None:
        return
    OutputFolder.claim(folder, "index", index_identity(features))  # checks, writes nothing


@dataclass
class FeatureIndex:
    """A FAISS inner-product index plus the id of every row. Build with :meth:`build`."""

    index: Any
    ids: list[str]
    kind: IndexKind
    dim: int
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, shards: Shards | Callable[[], Shards], dim: int,
              kind: IndexKind = "flat", nlist: int | None = None,
              nprobe: int = DEFAULT_NPROBE, hnsw_m: int = DEFAULT_HNSW_M,
              ef_search: int = 128, train_rows: int = 100_000,
              seed: int = 0, use_gpu: bool | None = None) -> FeatureIndex:
        """Index ``(ids, vectors)`` shards; vectors are normalised to unit length.

        ``ivf`` needs its training sample before anything is added, so it reads the shards
        three times (count, draw a seeded sample of ``train_rows`` rows, add): pass a
        function that returns a fresh iterable of shards to keep that streaming.
        """
        faiss = _faiss()

        def passes() -> Shards:
            return shards() if callable(shards) else shards

        gpu = (gpu_count() > 0) if use_gpu is None else use_gpu
        settings: dict[str, Any] = {"kind": kind}
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
            settings.update(hnsw_m=hnsw_m, ef_search=ef_search)
            gpu = False
        elif kind == "ivf":
            if not callable(shards):
                shards = list(shards)
            rows = sum(len(ids) for ids, _ in passes())
            nlist = nlist or max(1, min(4096, int(4 * np.sqrt(rows))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist,
                                       faiss.METRIC_INNER_PRODUCT)
            index.nprobe = min(nprobe, nlist)
            settings.update(nlist=nlist, nprobe=index.nprobe)
        else:
            raise InputError(f"index kind must be flat, ivf or hnsw, got {kind!r}")
        if gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        if kind == "ivf":
            index.train(_training_sample(passes, rows, train_rows, seed, nlist))
        all_ids: list[str] = []
        for ids, vectors in passes():
            vectors = _as_vectors(vectors, dim)
            index.add(vectors)
            all_ids.extend(ids.to_pylist() if isinstance(ids, pa.Array | pa.ChunkedArray)
                           else list(ids))
        if index.ntotal != len(all_ids):
            raise RuntimeError(f"index holds {index.ntotal} rows for {len(all_ids)} ids")
        _check_index_ids(all_ids)
        return cls(index, all_ids, kind, dim, settings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine scores ``(queries, k)`` and the ids of the ``k`` nearest rows, best first.

        ``k`` larger than the index is cut to its size."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        k = min(k, len(self.ids))
        scores, rows = self.index.search(_as_vectors(queries, self.dim), k)
        if (rows < 0).any():
            raise RuntimeError(f"the {self.kind} index returned fewer than {k} neighbours; "
                               "raise nprobe (ivf) or ef_search (hnsw)")
        return scores, [[self.ids[r] for r in row] for row in rows]

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        """Write ``index.faiss`` (a CPU index), ``ids.parquet`` and ``index.json``.

        The folder's identity is the feature store's description (``settings["features"]``,
        as ``index build`` records it): an index of the same features may be rebuilt in
        place with other settings (``--kind``, ``--nlist``), but one of other features (another
        pool, model or side) is another job's output, kept unless ``overwrite``; it was
        replaced in place, exit 0. An index without a recorded store claims ownership only,
        and a folder of someone else's is refused."""
        faiss = _faiss()
        claimed = OutputFolder.claim(folder, "index", index_identity(self.settings.get(
            "features")), overwrite=overwrite)
        folder = claimed.path
        claimed.expect([INDEX_FILE, IDS_FILE, META_FILE])
        cpu_index = faiss.index_gpu_to_cpu(self.index) if _on_gpu(self.index) else self.index
        with atomic_write(os.path.join(folder, INDEX_FILE)) as tmp, faiss_os_errors(tmp):
            faiss.write_index(cpu_index, tmp)
        ids = pa.table({"id": pa.array(self.ids, pa.string())})
        write_table(ids, os.path.join(folder, IDS_FILE))
        write_json({"kind": self.kind, "dim": self.dim, "rows": len(self.ids),
                    "files": _written_files(folder, ids), **self.settings},
                   os.path.join(folder, META_FILE))

    @classmethod
    def load(cls, folder: str | os.PathLike, use_gpu: bool | None = None) -> FeatureIndex:
        faiss = _faiss()
        folder = str(folder)
        for name in (INDEX_FILE, IDS_FILE, META_FILE):
            if not os.path.exists(os.path.join(folder, name)):
                raise InputError(f"not an index folder: {name} is missing", where=folder)
        meta = read_json(os.path.join(folder, META_FILE))
        check_record(meta, IndexMeta, os.path.join(folder, META_FILE))
        written = _recorded_files(folder, meta)
        path = os.path.join(folder, INDEX_FILE)
        with damaged_if_unreadable(path):  # a FIFO is refused before it is hashed
            _check_written(path, written[INDEX_FILE], "xxh3_128", lambda: hash_file(path))
            index = faiss.read_index(path)
        path = os.path.join(folder, IDS_FILE)
        table = read_table(path)
        if "id" not in table.column_names:
            raise _replaced(path, "it has no 'id' column")
        _check_written(path, written[IDS_FILE], "ids",
                       lambda: columns_digest(table, ["id"]))
        ids = table["id"].to_pylist()
        if index.ntotal != len(ids):
            raise InputError(f"index holds {index.ntotal} rows but {len(ids)} ids", where=folder)
        gpu = (gpu_count() > 0) if use_gpu is None else use_gpu
        if gpu and meta["kind"] != "hnsw":
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        settings = {k: v for k, v in meta.items() if k not in ("kind", "dim", "rows", "files")}
        return cls(index, ids, meta["kind"], int(meta["dim"]), settings)


def _written_files(folder: str, ids: pa.Table) -> dict[str, WrittenFile]:
    """What identifies the index's two files as written, for ``index.json``: their sizes,
    a hash of ``index.faiss``'s bytes and one of the ids ``ids.parquet`` holds (``ids``,
    in row order). Two indexes of the same rows have files of the same sizes and row
    counts, so without these a file copied from one into the other (the rows in another
    order) was searched, and every hit named the wrong training row."""
    index, stored = os.path.join(folder, INDEX_FILE), os.path.join(folder, IDS_FILE)
    return {INDEX_FILE: {"bytes": os.path.getsize(index), "xxh3_128": hash_file(index)},
            IDS_FILE: {"bytes": os.path.getsize(stored), "ids": columns_digest(ids, ["id"])}}


def _recorded_files(folder: str, meta: dict[str, Any]) -> dict[str, WrittenFile]:
    """:func:`_written_files` as ``index.json`` records them; an index without them (built
    by an older dataselect, or its record edited) cannot be told from one whose files
    were replaced, and is refused."""
    files = meta.get("files") or {}
    if INDEX_FILE not in files or IDS_FILE not in files:
        raise InputError(f"records no sizes and hashes of its {INDEX_FILE} and {IDS_FILE} "
                         "(built by an older dataselect, or edited), so files replaced "
                         "since cannot be told: build the index again (dataselect index "
                         "build)", where=os.path.join(folder, META_FILE))
    return files


def _check_written(path: str, record: WrittenFile, key: str, digest: Callable[[], str]
                   ) -> None:
    """Refuse the index file at ``path`` unless its size, then its digest (``key`` of
    ``record``, computed by ``digest`` only when the size agrees), are the ones
    ``index.json`` records."""
    size = os.path.getsize(path)
    if size != record["bytes"]:
        raise _replaced(path, f"it holds {size} bytes, not the {record['bytes']} written")
    if digest() != record.get(key):
        raise _replaced(path, f"its {'bytes' if key == 'xxh3_128' else 'ids'} are not "
                              "the ones written")


def _replaced(path: str, why: str) -> InputError:
    """The one line for an index file that is not the one its ``index.json`` records."""
    return InputError(f"this file is not the one dataselect wrote here ({why}): it was "
                      f"replaced or edited since the index was built (its {META_FILE} "
                      "records what was written); build the index again (dataselect index "
                      "build)", where=path)


def _as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"vectors of shape {vectors.shape} do not match index dim {dim}")
    return np.ascontiguousarray(normalize_rows(vectors), dtype=np.float32)


def _training_sample(passes: Callable[[], Shards], total: int, rows: int, seed: int,
                     nlist: int) -> np.ndarray:
    """A seeded sample of ``rows`` vectors, gathered in one more pass over the shards."""
    if total < nlist:
        raise InputError(f"an ivf index with {nlist} lists needs at least that many rows; "
                         f"there are {total}")
    take = np.sort(np.random.default_rng(seed).choice(total, min(rows, total), replace=False))
    picked, offset = [], 0
    for _, vectors in passes():
        inside = take[(take >= offset) & (take < offset + len(vectors))] - offset
        if len(inside):
            picked.append(np.asarray(vectors[inside], dtype=np.float32))
        offset += len(vectors)
    return np.ascontiguousarray(normalize_rows(np.concatenate(picked)))


def _on_gpu(index: Any) -> bool:
    return "Gpu" in type(index).__name__
