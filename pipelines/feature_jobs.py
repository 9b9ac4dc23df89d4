"""Jobs for feature-based selection and attribution: warmup, features, index, attribute.

    warmup     LoRA warmup on a sample of the pool (LESS step 1): checkpoints with moments
    features   pool (or query) features into a feature store, partition by partition
    index      a FAISS index over a feature store; search it with a query feature store
    attribute  top-k most influential training rows for query examples, as Parquet rows
               (the method looked up in attribution.ATTRIBUTIONS: less from the pool's
               index; trak, tracin, bif or a plug-in's from the pool itself; k = all rows
               as a dense float32 matrix)

Each prints a summary table at the end, like the selection jobs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import Progress

from attribution import ATTRIBUTIONS
from attribution.base import Attributor, checked_attribute
from attribution.index import FeatureIndex, IndexKind, check_index_out
from attribution.less import IndexSettings, LessCosine, check_compatible, search
from attribution.output import write_attribution_matrix, write_attributions
from attribution.scores import Scores
from attribution.settings import build_settings, typed_settings
from dataselect.corpus import Corpus
from dataselect.errors import InputError, one_line
from dataselect.features import FeatureStore, combine_views
from dataselect.featurize import SIDES, Side, featurize
from dataselect.outdir import (
    check_claimable,
    check_output_file,
    locked_output,
    normalize,
    refuse_overlap,
)
from dataselect.params import settings_from_text
from dataselect.readers import DATA_SUFFIXES
from dataselect.sampling import id_hashes
from models.warmup_config import WarmupConfig, sample_pool
from pipelines.cluster import dask_client
from pipelines.progress import ProgressRunner, StageTiming
from pipelines.summary import print_summary


def run_warmup_job(model: str, pool: Corpus, out: str, config: WarmupConfig,
                   device: str | None = None, console: Console | None = None
                   ) -> list[str]:
    from models.lora_warmup import warmup  # torch and peft: only when training

    started = time.perf_counter()
    pool.check_unique_ids([id_hashes(table["id"]) for table in pool.iter_tables()])
    sample, blank = sample_pool(pool, config.fraction, config.seed)
    rows = sample.num_rows
    steps = -(-rows // config.batch_size) * config.epochs
    refuse_overlap(normalize(out), [*pool.files, *pool.roots, model])
    with locked_output(out), Progress(console=Console(stderr=True)) as progress:
        bar = progress.add_task("warmup", total=steps)
        checkpoints = warmup(model, pool, out, config, device,
                             progress=lambda n: progress.advance(bar, n))
    seconds = time.perf_counter() - started
    print_summary(console, "warmup", [StageTiming("warmup", steps, seconds)],
                  {"rows_in": rows, **({"blank_rows_left_out": blank} if blank else {}),
                   "epochs": config.epochs, "steps": steps,
                   "checkpoints": ", ".join(checkpoints)}, seconds)
    return checkpoints


def run_features_job(featurizer: Any, corpus: Corpus, out: str, side: Side = "pool",
                     scheduler: str | None = None, workers: int | None = None,
                     memory_limit: str = "auto", console: Console | None = None
                     ) -> dict[str, Any]:
    if side not in SIDES:
        raise InputError(f"side must be one of {SIDES}, got {side!r}", field="side")
    started = time.perf_counter()
    refuse_overlap(normalize(out), [*corpus.files, *corpus.roots, *model_paths(featurizer)])
    with locked_output(out), \
            dask_client(scheduler, workers, memory_limit, featurizer.local_workers) as client:
        runner = ProgressRunner(client)
        counts = featurize(featurizer, corpus, out, side, runner)
    print_summary(console, "features", runner.timings, {"rows_in": counts["rows"], **counts},
                  time.perf_counter() - started)
    return counts


def model_paths(settings: Any) -> list[str]:
    """The model and checkpoint folders a featurizer or method reads (its ``model`` and
    ``checkpoints`` settings): an output inside one would plant files among the weights."""
    checkpoints = getattr(settings, "checkpoints", None)
    paths = [getattr(settings, "model", None),
             *(checkpoints if isinstance(checkpoints, list | tuple) else [checkpoints])]
    return [p for p in paths if isinstance(p, str) and p and os.path.exists(p)]


# what reads each side's store, and how such a store is written
_SIDE_USE = {"pool": "index build --features takes pool features",
             "query": "index search --queries takes query features"}


def _open_side(path: str, side: Side) -> FeatureStore:
    """The feature store at ``path``, refused unless it holds ``side``'s features: the
    two sides may be computed differently (LESS: Adam-preconditioned gradients for the
    pool, plain ones for the queries), so the other side would run, silently, another
    method. A store written before sides were recorded holds the pool's."""
    store = FeatureStore.open(path)
    found = store.description.get("side", "pool")
    if found != side:
        raise InputError(f"this store holds {found} features, but {_SIDE_USE[side]}; write "
                         f"them with dataselect features --side {side}", where=path)
    return store


def build_index(features: str, out: str, kind: IndexKind = "flat",
                console: Console | None = None, overwrite: bool = False,
                **options: Any) -> FeatureIndex:
    """Index a pool feature store (views combined with their recorded weights), refusing
    an unfinished one (:meth:`FeatureStore.check_finished`), and an ``out`` holding the
    index of another store unless ``overwrite`` (:meth:`FeatureIndex.save`)."""
    started = time.perf_counter()
    store = _open_side(features, "pool")
    store.check_finished()
    if not store.parts():
        raise InputError("the feature store has no finished parts", where=features)
    check_claimable(out, "index", [features])
    check_index_out(out, store.description, overwrite)  # before the work
    index = FeatureIndex.build(store.combined, store.dim * store.views, kind=kind, **options)
    index.settings["features"] = store.description
    refuse_overlap(normalize(out), [features])
    with locked_output(out):
        index.save(out, overwrite)
    seconds = time.perf_counter() - started
    print_summary(console, "index", [StageTiming(f"index:{kind}", len(store.parts()), seconds)],
                  {"rows_in": len(index.ids), "kind": kind, "dim": index.dim,
                   "on_gpu": "Gpu" in type(index.index).__name__}, seconds)
    return index


def check_attributions_out(out: str, k: int | None, inputs: list[str]) -> None:
    """Refuse, before any work (reading the pool, loading a model, computing a score),
    an ``--out`` the job could not write: for ``k`` None (``-k all``) the dense folder as
    its claim will check it (a folder of the user's, one in a cache, a file), else the
    Parquet file (:func:`dataselect.outdir.check_output_file`).

    Why: the dense folder was checked only when claimed, after every score was computed
    (hours on a real model), while the file was checked first; both are checked here."""
    if k is None:
        check_claimable(out, "attributions", inputs)
    else:
        check_output_file(out, "attributions", inputs)


# names that read as one data file: a dense -k all folder at such a name is one no reader
# can open as what its name says
FILE_SUFFIXES = (*DATA_SUFFIXES, ".csv", ".tsv", ".txt", ".npy", ".npz", ".xz", ".zip")


def refuse_dense_at_file_name(out: str, k: int | None) -> None:
    """Refuse ``-k all`` with an ``--out`` whose name ends in a file's suffix
    (``a.parquet``), before any work.

    Why: ``-k all`` writes a folder (``scores.npy``, ``train_ids.parquet``,
    ``query_ids.parquet``), so ``index search -k all --out a.parquet`` (or ``attribute``)
    wrote a folder named ``a.parquet`` with exit 0, and ``pandas.read_parquet`` then
    failed on ``scores.npy``: the same outcome a ``-k`` at least the rows had, a bug that
    was fixed, was still written for ``-k all``."""
    name = os.path.basename(str(out).rstrip("/" + os.sep))
    suffix = next((s for s in FILE_SUFFIXES if name.lower().endswith(s)), None)
    if k is None and suffix is not None and name.lower() != suffix:
        raise InputError(f"-k all writes a folder (scores.npy and id files), not a {suffix} "
                         f"file: give --out a folder name (e.g. {name[:-len(suffix)]}), or "
                         "a number for -k to get Parquet rows", where=str(out), field="--out")


def note_k_over_rows(k: int | None, rows: int, setting: str = "-k") -> None:
    """Say, on stderr, that ``k`` asks for more rows per query than there are: every row
    is ranked for each query, in the same ``(query_id, rank, train_id, score)`` rows."""
    if k is not None and k > rows:
        print(one_line(f"dataselect: note: {setting} {k} is more than the {rows} training "
                       f"rows; each query ranks all {rows}"), file=sys.stderr)


def _write_scores(scores: Scores, dense: bool, k: int | None, out: str,
                  inputs: list[str]) -> int:
    """Write every score (``dense``) or the top ``k`` per query; the rows (or cells)
    written."""
    if dense:
        matrix = scores.matrix()
        write_attribution_matrix(matrix, scores.train_ids, scores.query_ids, out, inputs)
        return matrix.size
    table = scores.top_k(k)  # type: ignore[arg-type]
    write_attributions(table, out, inputs)
    return table.num_rows


def _write_attributions(scores: Scores, k: int | None, out: str, job: str, started: float,
                        console: Console | None, inputs: list[str]) -> dict[str, Any]:
    """Write an index search's rows (or every score, for ``k`` None) and print the
    summary."""
    rows_out = _write_scores(scores, k is None, k, out, inputs)
    queries = len(scores.query_ids)
    seconds = time.perf_counter() - started
    print_summary(console, job, [StageTiming(job, queries, seconds)],
                  {"rows_in": queries, "k": "all" if k is None else k, "rows_out": rows_out,
                   "out": os.path.abspath(out)}, seconds)
    return {"queries": queries, "rows": rows_out}


def search_index(index_folder: str, queries: str, k: int | None, out: str,
                 console: Console | None = None) -> dict[str, Any]:
    """Top-k rows of the index for every row of a query feature store."""
    started = time.perf_counter()
    inputs = [index_folder, queries]
    check_attributions_out(out, k, inputs)  # before any work
    index = FeatureIndex.load(index_folder)
    store = _open_side(queries, "query")
    store.check_finished()  # its missing queries were silently left out
    check_compatible(index, store.description, queries)
    weights = index.settings.get("features", {}).get("view_weights")
    ids, vectors = [], []
    for _, part_ids, matrix in store.iter_parts():
        ids += part_ids.to_pylist()
        vectors.append(combine_views(matrix, weights))
    if not ids:
        raise InputError("the query feature store has no finished parts", where=queries)
    scores = search(index, ids, vectors)
    note_k_over_rows(k, len(index.ids))
    return _write_attributions(scores, k, out, "search", started, console, inputs)


def run_attribute_job(featurizer: Any, queries: Corpus, index_folder: str, k: int | None,
                      out: str,
                      console: Console | None = None) -> dict[str, Any]:
    """``attribute --method less``: query features computed here (queries are few),
    searched in the pool's index (:class:`attribution.less.LessCosine`)."""
    started = time.perf_counter()
    inputs = [index_folder, *queries.files, *queries.roots, *model_paths(featurizer)]
    check_attributions_out(out, k, inputs)  # before any work
    method = LessCosine(IndexSettings(index_folder, featurizer))
    views = [queries.scoring_view(table, method.response_spans)
             for table in queries.iter_tables()]
    if not sum(view.num_rows for view in views):
        raise InputError("no query examples", where=", ".join(queries.files))
    queries.check_unique_ids([id_hashes(view["id"]) for view in views])
    scores = checked_attribute(method, None, views)
    note_k_over_rows(k, len(scores.train_ids))
    return _write_attributions(scores, k, out, "attribute", started, console, inputs)


def _views(corpus: Corpus, response_spans: bool) -> tuple[list[str], pa.Table]:
    """Every row of a (small) corpus as one scoring view."""
    views = [corpus.scoring_view(t, response_spans) for t in corpus.iter_tables()]
    corpus.check_unique_ids([id_hashes(v["id"]) for v in views])
    view = pa.concat_tables(views, promote_options="permissive") if views else None
    if view is None or view.num_rows == 0:
        raise InputError("no examples", where=", ".join(corpus.files))
    return view["id"].to_pylist(), view


def build_attributor(method: str, values: dict[str, Any]) -> Attributor:
    """The method registered as ``method``, built from typed settings."""
    return ATTRIBUTIONS[method](build_settings(method, values))


def run_influence_job(method: str, params: dict[str, str], pool: Corpus, queries: Corpus,
                      k: int | None, out: str, console: Console | None = None
                      ) -> dict[str, Any]:
    """``attribute --method M`` for a method that reads the pool (trak, tracin, bif or a
    plug-in's): its scores of the pool for the queries, computed here in one process. With
    ``k`` a number, the top-k rows per query as Parquet (every row per query where ``k``
    is at least the pool's size); with ``k`` None (``-k all``), the dense float32
    ``(pool rows, queries)`` matrix folder
    (:func:`attribution.output.write_attribution_matrix`).

    ``--out`` is checked before the method is built: building it checks the model folder
    (seconds of imports and loading), and a refused output came only after that."""
    settings = build_settings(method, typed_settings(method, params, text=True))
    check_attributions_out(out, k, [*pool.files, *pool.roots, *queries.files,
                                    *queries.roots, *model_paths(settings)])
    attributor = ATTRIBUTIONS[method](settings)
    return write_influence(attributor, pool, queries, k, out, console)


def write_influence(attributor: Attributor, pool: Corpus, queries: Corpus, k: int | None,
                    out: str, console: Console | None = None, summary: bool = True,
                    k_setting: str = "-k") -> dict[str, Any]:
    """:func:`run_influence_job` with the method built; ``summary=False`` leaves the stage
    table to the caller (a recipe prints one for the whole run, and names its setting
    ``k_setting`` in the note for a ``k`` above the pool's rows).

    Only ``k`` None writes the dense folder. A ``k`` at least the pool's size wrote it too,
    at the name given for the Parquet file (``a.parquet`` a folder, unreadable by pandas,
    exit 0); it now gives every row per query as the same top-k rows, with a note."""
    started = time.perf_counter()
    method = attributor.name
    inputs = [*pool.files, *pool.roots, *queries.files, *queries.roots,
              *model_paths(attributor.settings)]
    check_attributions_out(out, k, inputs)  # before any work
    pool_ids, pool_view = _views(pool, attributor.response_spans)
    query_ids, query_view = _views(queries, attributor.response_spans)
    dense = k is None
    scores = checked_attribute(attributor, pool_view, [query_view])
    note_k_over_rows(k, len(pool_ids), k_setting)  # once computed: a failed job needs none
    rows_out = _write_scores(scores, dense, k, out, inputs)
    seconds = time.perf_counter() - started
    if summary:
        print_summary(console, f"attribute:{method}",
                      [StageTiming(method, len(query_ids), seconds)],
                      {"rows_in": len(pool_ids), "queries": len(query_ids),
                       "k": "all" if dense else k, "rows_out": rows_out,
                       "out": os.path.abspath(out)}, seconds)
    return {"queries": len(query_ids), "training_rows": len(pool_ids), "rows": rows_out,
            "dense": dense}


def warmup_config(params: dict[str, str]) -> WarmupConfig:
    """A WarmupConfig from ``KEY=VALUE`` strings, typed and checked by its fields."""
    return WarmupConfig(**settings_from_text(WarmupConfig, params, "warmup"))
