"""Write a selection: the chosen pool rows with their scores, plus ``.manifest.json``.

One task per pool partition reads the partition, takes the chosen rows, appends ``score``,
``rank`` (0 = best) and any per-scorer columns, and writes ``part-NNNNN`` atomically, so
the output mirrors the pool's partition order and a rerun after a crash skips finished
parts. The same pass counts hashed n-grams of the selected rows and of a seeded sample of
the pool, for the KL-reduction metric; those counts are saved beside each part (under
``.stats/``) so resumed jobs report the same numbers. With ``save_to_disk``, the parts are
also copied into the layout ``datasets.load_from_disk`` reads (``.hf/``, :mod:`dataselect.hf`).
Every name but the parts' starts with ``.``, so dataset readers see only the selected rows
(:mod:`dataselect.layout`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dataselect.corpus import Corpus
from dataselect.defaults import DEFAULT_METRICS_SAMPLE
from dataselect.errors import InputError
from dataselect.execution import Runner, default_runner, partition_tasks
from dataselect.hf import write_hf
from dataselect.layout import MANIFEST_FILE, STATS_DIR
from dataselect.manifest import package_versions
from dataselect.metrics import kl_reduction
from dataselect.ngrams import NgramHasher
from dataselect.outdir import OutputFolder, claim_output
from dataselect.output import (
    OutputFormat,
    atomic_write,
    part_name,
    remove_stale_temporaries,
    write_json,
    write_table,
)
from dataselect.sampling import sample_mask
from dataselect.select import Selection

ADDED_COLUMNS = ("score", "rank")


@dataclass(frozen=True)
class _WritePart:
    pool: Corpus
    score_task: Any
    positions: dict[int, np.ndarray]
    ranks: dict[int, np.ndarray]
    out: str
    fmt: OutputFormat
    hasher: NgramHasher | None
    metrics_sample: float
    seed: int

    def __call__(self, index: int) -> dict[str, Any]:
        path = os.path.join(self.out, part_name(index, self.fmt))
        stats_path = os.path.join(self.out, STATS_DIR, f"part-{index:05d}.npz")
        if os.path.exists(path) and os.path.exists(stats_path):
            with np.load(stats_path) as saved:
                return {"rows": int(saved["rows"]), "reused": True, "seconds": 0.0}
        start = time.perf_counter()
        table = self.pool.read_partition(index)
        scores = self.score_task(index)
        chosen = self.positions.get(index, np.empty(0, np.int64))
        picked = _attach_scores(table.take(chosen), scores.take(chosen), self.ranks[index], path)
        pool_counts, selected_counts = self._ngram_counts(table, chosen)
        with atomic_write(stats_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, rows=picked.num_rows, pool_counts=pool_counts,
                     selected_counts=selected_counts)
        write_table(picked, path, self.fmt)
        return {"rows": picked.num_rows, "reused": False,
                "seconds": time.perf_counter() - start}

    def _ngram_counts(self, table: pa.Table, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.hasher is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        sampled = sample_mask(table["id"], self.metrics_sample, self.seed)
        selected = np.zeros(table.num_rows, bool)
        selected[chosen] = True
        rows = np.flatnonzero(sampled | selected)
        texts = self.pool.texts(table.take(rows))
        pool_counts, selected_counts = self.hasher.masked_bucket_counts(
            texts, [sampled[rows], selected[rows]])
        return pool_counts, selected_counts


def _attach_scores(picked: pa.Table, scores: pa.Table, ranks: np.ndarray, where: str) -> pa.Table:
    if not picked["id"].equals(scores["id"]):
        raise InputError("score store rows do not line up with the pool; rescore", where=where)
    for name in ADDED_COLUMNS:
        if name in picked.column_names:
            raise InputError(f"pool already has a column named {name!r}; rename it", field=name)
    picked = picked.append_column("score", scores["score"].cast(pa.float64()))
    picked = picked.append_column("rank", pa.array(ranks, pa.int64()))
    for name in scores.column_names:
        if name.startswith("score_") and name not in picked.column_names:
            picked = picked.append_column(name, scores[name])
    return picked


def write_selection(
    selection: Selection,
    out: str | OutputFolder,
    fmt: OutputFormat = "parquet",
    target: Corpus | None = None,
    runner: Runner = default_runner,
    overwrite: bool = False,
    metrics_hasher: NgramHasher | None = None,
    metrics_sample: float = DEFAULT_METRICS_SAMPLE,
    extra_manifest: dict[str, Any] | None = None,
    pool_ngram_counts: tuple[np.ndarray, float] | None = None,
    save_to_disk: bool = False,
) -> dict[str, Any]:
    """Write ``selection`` under ``out`` and return the manifest (also saved as JSON).

    ``out`` is a folder path, claimed here (new, empty or dataselect's own, outside the
    inputs; a different selection there is refused unless ``overwrite``), or a folder a
    job already claimed for its whole run. With ``target`` given, the manifest reports KL
    reduction on hashed n-grams (the pool's distribution estimated on a seeded
    ``metrics_sample`` fraction of its rows, or taken from ``pool_ngram_counts``, counts
    and fraction a scorer already computed with the metric's hasher). ``save_to_disk``
    also writes the layout of ``datasets.Dataset.save_to_disk`` under ``out/.hf/``; it is
    not part of the selection's identity, so a rerun that adds it converts the finished
    parts only.
    """
    if fmt not in ("parquet", "arrow"):
        raise InputError(f"output format must be 'parquet' or 'arrow', got {fmt!r}")
    hasher = (metrics_hasher or NgramHasher()) if target is not None else None
    if isinstance(out, OutputFolder):
        claimed = contextlib.nullcontext(out)
    else:
        identity = {"selection": selection.description(), "format": fmt,
                    "target": target.fingerprint() if target is not None else None,
                    "metrics": {"hasher": repr(hasher), "sample": metrics_sample}}
        inputs = selection.pool.files + (target.files if target is not None else [])
        claimed = claim_output(out, "selection", identity, inputs=inputs,
                               overwrite=overwrite)
    with claimed as folder:
        return _write(selection, folder, fmt, target, runner, hasher, metrics_sample,
                      extra_manifest, pool_ngram_counts, save_to_disk)


def _write(selection: Selection, folder: OutputFolder, fmt: OutputFormat,
           target: Corpus | None, runner: Runner, hasher: NgramHasher | None,
           metrics_sample: float, extra_manifest: dict[str, Any] | None,
           pool_ngram_counts: tuple[np.ndarray, float] | None,
           save_to_disk: bool) -> dict[str, Any]:
    out = folder.path
    parts = selection.pool.npartitions
    folder.expect([part_name(i, fmt) for i in range(parts)]
                  + [os.path.join(STATS_DIR, f"part-{i:05d}.npz") for i in range(parts)]
                  + [MANIFEST_FILE])
    os.makedirs(os.path.join(out, STATS_DIR), exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(os.path.join(out, STATS_DIR))
    seed = int(selection.policy.get("seed", 0))
    start = time.perf_counter()
    reuse = pool_ngram_counts is not None
    if reuse:
        metrics_sample = pool_ngram_counts[1]
    writer = _WritePart(selection.pool, selection.scores.task, selection.positions,
                        selection.ranks, out, fmt, hasher, 0.0 if reuse else metrics_sample,
                        seed)
    tasks = partition_tasks("write", writer, parts)
    results = runner("write", tasks)
    # a worker killed mid-write may leave a temporary that a glob of the parts would match
    remove_stale_temporaries(out)
    names, rows = [part_name(i, fmt) for i in range(parts)], [r["rows"] for r in results]
    manifest = {
        "selection": selection.policy,
        "scores": selection.scores.description,
        "counts": {**selection.counts, "written": sum(r["rows"] for r in results)},
        "output": {"format": fmt,
                   "parts": [{"file": n, "rows": r} for n, r in zip(names, rows)],
                   "partitions_reused": sum(1 for r in results if r["reused"])},
        "inputs": {"pool": selection.pool.fingerprint(),
                   "target": target.fingerprint() if target is not None else None},
        "timings": {"write_seconds": round(time.perf_counter() - start, 3)},
        "versions": package_versions(),
    }
    if target is not None:
        manifest["metrics"] = _kl_metrics(target, hasher, out, len(results), metrics_sample,
                                          pool_ngram_counts[0] if reuse else None)
    if extra_manifest:
        manifest.update(extra_manifest)
    # the parts were read from the pool the scores were computed on, or the job fails
    # here, before the manifest that marks it finished
    scored_on = selection.scores.description.get("pool")
    if scored_on:
        selection.pool.check_unchanged(scored_on, "pool")
    if save_to_disk:
        manifest["output"]["save_to_disk"] = write_hf(folder, names, rows, runner)
    write_json(manifest, os.path.join(out, MANIFEST_FILE))
    return manifest


def _kl_metrics(target: Corpus, hasher: NgramHasher, out: str, parts: int,
                metrics_sample: float, pool_counts: np.ndarray | None) -> dict[str, Any]:
    target_counts = np.zeros(hasher.num_buckets, np.int64)
    for table in target.iter_tables():
        target_counts += hasher.bucket_counts(target.texts(table))
    # summed one saved file at a time, so memory does not grow with the partition count
    sampled_counts = np.zeros(hasher.num_buckets, np.int64)
    selected_counts = np.zeros(hasher.num_buckets, np.int64)
    for index in range(parts):
        with np.load(os.path.join(out, STATS_DIR, f"part-{index:05d}.npz")) as saved:
            sampled_counts += saved["pool_counts"]
            selected_counts += saved["selected_counts"]
    if pool_counts is None:
        pool_counts = sampled_counts
    metrics = kl_reduction(target_counts, pool_counts, selected_counts)
    metrics.update({"ngram_buckets": hasher.num_buckets, "ngram": hasher.ngram,
                    "pool_sample_fraction": metrics_sample})
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}

