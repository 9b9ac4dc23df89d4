"""Write a selection: the chosen pool rows with their scores, plus ``.manifest.json``.

One task per pool partition reads the partition, takes the chosen rows, appends ``score``,
``rank`` (0 = best) and any per-scorer columns, and writes ``part-NNNNN`` atomically, so
the output mirrors the pool's partition order and a rerun after a crash skips finished
parts. The same pass counts hashed n-grams of the selected rows and of a seeded sample of
the pool, for the KL-reduction metric; those counts are saved beside each part (under
``.stats/``) so resumed jobs report the same numbers; it counts the labels of the pool and
of the chosen rows too, when the pool has a label column (:mod:`dataselect.composition`).
The KL metric has one definition, whoever writes the selection (the command line, a
recipe or the Python API): the pool's n-gram distribution is estimated on the seeded
``metrics_sample`` share of its rows (a per-id draw with the selection's seed), so the
same selection reports the same number however it was made.

With ``save_to_disk``, the parts are also copied into the layout ``datasets.load_from_disk``
reads (``.hf/``, :mod:`dataselect.hf`). Every name but the parts' starts with ``.``, so
dataset readers see only the selected rows (:mod:`dataselect.layout`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from dataselect import checks, ngram_store, storage
from dataselect.composition import (
    composition,
    count_labels,
    label_column,
    label_kind,
    names_against_numbers,
)
from dataselect.corpus import Corpus, as_corpus, without_notes
from dataselect.defaults import DEFAULT_METRICS_SAMPLE, METRICS_SAMPLE_MB
from dataselect.errors import InputError
from dataselect.execution import Runner, default_runner, partition_tasks, run_stage, step_progress
from dataselect.footer import (
    RECORD_JOB_KEY,
    PartOrigin,
    job_digest,
    reusable,
)
from dataselect.hf import datasets_notes, write_hf
from dataselect.layout import MANIFEST_FILE, STATS_DIR
from dataselect.manifest import package_versions
from dataselect.metrics import kl_reduction
from dataselect.ngrams import NgramHasher, masked_counts
from dataselect.outdir import OutputFolder, claim_output, refuse_foreign_data
from dataselect.output import (
    OutputFormat,
    atomic_write,
    jsonable,
    load_arrays,
    part_name,
    write_json,
    write_table,
)
from dataselect.sampling import sample_mask
from dataselect.schemas import check_storable, conform

if TYPE_CHECKING:  # select imports this module to write a Selection; not the other way
    from dataselect.select import Selection

ADDED_COLUMNS = ("score", "rank")
# keys of a part's stats file that hold its label counts (dataselect.composition)
LABEL_COLUMN_KEY, LABELS_KEY = "label_column", "label_names"
# the schema metadata key datasets describes a file's features under (ClassLabel names)
HF_METADATA = b"huggingface"


def metrics_seed(policy: dict[str, Any]) -> int:
    """The seed of the KL metric's pool sample: the selection's own, 0 when it has none."""
    return int(policy.get("seed", 0))


def pool_stats_name(index: int) -> str:
    """Where the pool side of partition ``index``'s metrics is kept (:class:`PoolStats`)."""
    return os.path.join(STATS_DIR, f"pool-{index:05d}.npz")


@dataclass(frozen=True)
class PoolStats:
    """The pool side of a selection's metrics, per partition: hashed n-gram counts of the
    seeded ``sample`` share of its rows (KL reduction) and its label counts (composition).

    Why apart from the write pass: they need every row of every partition, the selected
    rows only a few partitions at small k. A job computes them in the scoring pass, which
    reads every partition anyway (:meth:`record`, called from the score task), and the
    write pass then reads only the partitions that hold selected rows. A partition whose
    file is missing, or was kept for other settings, is counted by the write pass as
    before, so the numbers never depend on which pass counted them."""

    out: str
    hasher: NgramHasher | None
    sample: float
    seed: int
    # the digest of the output folder's identity (dataselect.footer.job_digest)
    job: str

    def record(self, corpus: Corpus, index: int, table: pa.Table) -> dict[str, np.ndarray]:
        """Count partition ``index`` (its rows, ``table``), unless kept already, and keep
        the counts; returns them."""
        path = os.path.join(self.out, pool_stats_name(index))
        kept = self.load(index)
        if kept is not None:
            return kept
        arrays = self.count(corpus, index, table)
        if not storage.is_remote(path):  # an object store has no folders to make
            os.makedirs(os.path.dirname(path), exist_ok=True)
        stamped = PartOrigin(self.job, index).stamp_arrays(
            {"settings": np.array(self._settings()), **arrays})
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **stamped)
        return arrays

    def load(self, index: int) -> dict[str, np.ndarray] | None:
        """The kept counts of partition ``index``, or None: none kept, kept for other
        settings (another hasher, sample share or seed), or a file that is not the one this
        job wrote (another job's, edited: :mod:`dataselect.footer`), which is counted
        again and replaced."""
        path = os.path.join(self.out, pool_stats_name(index))
        if not storage.exists(path):
            return None
        saved = load_arrays(path)
        try:
            saved = PartOrigin(self.job, index).check_arrays(path, saved)
        except InputError:  # another job's, or edited: not these counts
            return None
        if str(saved["settings"]) != self._settings():
            return None
        return {name: value for name, value in saved.items() if name != "settings"}

    def count(self, corpus: Corpus, index: int, table: pa.Table) -> dict[str, np.ndarray]:
        """The pool counts of partition ``index``, from its rows."""
        column = label_column(table)
        labels = count_labels(table, column)
        names = sorted(labels)
        return {"pool_counts": self._ngram_counts(corpus, index, table),
                LABEL_COLUMN_KEY: np.array(column or ""),
                LABELS_KEY: np.array(names, dtype=str),
                "pool_labels": np.array([labels[n] for n in names], np.int64)}

    def _ngram_counts(self, corpus: Corpus, index: int, table: pa.Table) -> np.ndarray:
        if self.hasher is None:
            return np.zeros(0, np.int64)
        sampled = np.flatnonzero(sample_mask(table["id"], self.sample, self.seed))
        return rows_counts(corpus, index, self.hasher, sampled, table.num_rows,
                           lambda: table.take(sampled))

    def _settings(self) -> str:
        return json.dumps([repr(self.hasher), self.sample, self.seed])


# hashing a row costs about this many times counting its saved n-grams under a mask (0.40
# against 0.03 s for 262,144 rows of 58 bytes), and a mask touches every row of the partition
HASH_OVER_COUNT = 12


def rows_counts(corpus: Corpus, index: int, hasher: NgramHasher, positions: np.ndarray,
                partition_rows: int, rows: Callable[[], pa.Table]) -> np.ndarray:
    """Bucket counts of the rows at ``positions`` (distinct) of partition ``index``, which
    holds ``partition_rows`` rows; ``rows()`` gives those rows. From the n-grams the scorer
    kept (DSIR), else by hashing those rows: also where they are so few that hashing them
    beats masking every saved row (the KL metric's sample of a large pool, 1 % at 10^8
    rows; a small k's selected rows). One rule for the pool sample and the selection."""
    if not len(positions):
        return np.zeros(hasher.num_buckets, np.int64)
    if len(positions) * HASH_OVER_COUNT >= partition_rows:  # enough to open the saved ones
        stored = ngram_store.load(corpus.ngram_dir, index, hasher)
        if stored is not None:
            mask = np.zeros(partition_rows, bool)
            mask[positions] = True
            return masked_counts(stored, [mask], hasher.num_buckets)[0]
    return hasher.bucket_counts(corpus.texts(rows()))


@dataclass(frozen=True)
class _WritePart:
    pool: Corpus
    score_task: Any
    positions: dict[int, np.ndarray]
    ranks: dict[int, np.ndarray]
    out: str
    fmt: OutputFormat
    pool_stats: PoolStats
    schema: pa.Schema
    # recompute a finished part that is not the one this job wrote, instead of refusing
    overwrite: bool = False

    def __call__(self, index: int) -> dict[str, Any]:
        path = os.path.join(self.out, part_name(index, self.fmt))
        stats_path = os.path.join(self.out, STATS_DIR, f"part-{index:05d}.npz")
        chosen = self.positions.get(index, np.empty(0, np.int64))
        if self._finished(index, path, stats_path, len(chosen)):
            return {"rows": len(chosen), "reused": True, "seconds": 0.0}
        start = time.perf_counter()
        pool = self.pool_stats.load(index)
        if pool is None:  # counted here, and kept, so a resumed job's folder is the same
            table = self.pool.read_partition(index)
            pool = self.pool_stats.record(self.pool, index, table)
            taken = table.take(chosen)
        else:
            taken = self._chosen_rows(index, chosen)
        scores = self._scores(index, chosen)
        rows = output_rows(self.pool, index, taken, self.schema)
        picked = _attach_scores(rows, scores.take(chosen), self.ranks[index], path,
                                self.pool.partition_place(index))
        column = str(pool[LABEL_COLUMN_KEY]) or None
        selected = count_labels(picked, column)
        origin = PartOrigin(self.pool_stats.job, index)
        stats = origin.stamp_arrays({
            "rows": np.array(picked.num_rows), "pool_counts": pool["pool_counts"],
            "selected_counts": self._selected_counts(index, chosen, taken, scores.num_rows),
            LABEL_COLUMN_KEY: pool[LABEL_COLUMN_KEY], LABELS_KEY: pool[LABELS_KEY],
            "pool_labels": pool["pool_labels"],
            "selected_labels": np.array([selected.get(str(n), 0) for n in pool[LABELS_KEY]],
                                        np.int64)}, picked.num_rows)
        with atomic_write(stats_path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **stats)
        write_table(origin.stamp(picked, every=True), path, self.fmt)
        return {"rows": picked.num_rows, "reused": False,
                "seconds": time.perf_counter() - start}

    def _finished(self, index: int, path: str, stats_path: str, rows: int) -> bool:
        """Whether partition ``index`` is written already (a resumed job): its part and
        its counts exist and are the ones this job wrote, for the ``rows`` rows it chose
        there (:mod:`dataselect.footer`). A part of another job, or edited, is refused, or
        with ``overwrite`` written again; no counts, or counts without labels (an older
        version's), are written again."""
        if not (storage.exists(path) and storage.exists(stats_path)):
            return False
        saved = load_arrays(stats_path)
        if LABELS_KEY not in saved:
            return False
        origin = PartOrigin(self.pool_stats.job, index)
        return reusable(lambda: (origin.check_reused(path, rows, self._part_schema(index)),
                                 origin.check_arrays(stats_path, saved)), self.overwrite)

    def _part_schema(self, index: int) -> pa.Schema:
        """The columns this job writes part ``index`` with: the pool's (``schema``), then
        ``score``, ``rank`` and the scores' ``score_*`` columns (from the score store's
        metadata, where it has one), as :func:`_attach_scores` adds them."""
        none = np.empty(0, np.int64)
        scores = self._scores(index, none)
        return _attach_scores(self.schema.empty_table(), scores.take(none), none, "",
                              self.pool.partition_place(index)).schema

    def _chosen_rows(self, index: int, chosen: np.ndarray) -> pa.Table:
        """The selected rows of partition ``index``, its pool counts being kept: for none,
        an empty table of its columns (from metadata, or the job's parsed copy), which
        makes the same empty part; else those rows, read from the row groups that hold
        them (:meth:`Corpus.read_rows`)."""
        empty = None if len(chosen) else self.pool.empty_partition(index)
        return self.pool.read_rows(index, chosen) if empty is None else empty

    def _scores(self, index: int, chosen: np.ndarray) -> pa.Table:
        """The partition's scores; for no selected rows, their columns only, where the
        score store answers from metadata."""
        columns = getattr(self.score_task, "schema", None)
        if not len(chosen) and columns is not None:
            return columns(index).empty_table()
        return self.score_task(index)

    def _selected_counts(self, index: int, chosen: np.ndarray, taken: pa.Table,
                         partition_rows: int) -> np.ndarray:
        """Bucket counts of the selected rows (``taken``, at ``chosen`` in the partition
        of ``partition_rows`` rows), by :func:`rows_counts`' rule."""
        hasher = self.pool_stats.hasher
        if hasher is None:
            return np.zeros(0, np.int64)
        return rows_counts(self.pool, index, hasher, chosen, partition_rows, lambda: taken)


def _attach_scores(picked: pa.Table, scores: pa.Table, ranks: np.ndarray, where: str,
                   place: str) -> pa.Table:
    """``picked`` with its scores and ranks; ``place`` is the pool file the rows are from,
    named when one of its columns has a name the scores add."""
    if not picked["id"].equals(scores["id"]):
        raise InputError("score store rows do not line up with the pool; rescore", where=where)
    for name in ADDED_COLUMNS:
        if name in picked.column_names:
            raise InputError(f"pool already has a column named {name!r}; rename it",
                             where=place, field=name)
    picked = picked.append_column("score", scores["score"].cast(pa.float64()))
    picked = picked.append_column("rank", pa.array(ranks, pa.int64()))
    for name in scores.column_names:
        if name.startswith("score_"):
            if name in picked.column_names:
                raise InputError(f"pool already has a column named {name!r}, which the "
                                 "combined scores add; rename it", where=place, field=name)
            picked = picked.append_column(name, scores[name])
    return picked


def output_rows(pool: Corpus, index: int, rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows of partition ``index`` as an output part holds them: in ``schema``
    (:func:`output_schema`), with its ``huggingface`` description where it has one,
    without the corpus's bookkeeping metadata."""
    rows = without_notes(conform(rows, schema, pool.partition_place(index)))
    described = (schema.metadata or {}).get(HF_METADATA)
    if described is None or (rows.schema.metadata or {}).get(HF_METADATA) == described:
        return rows
    return rows.replace_schema_metadata({**(rows.schema.metadata or {}),
                                         HF_METADATA: described})


def output_schema(pool: Corpus, added: tuple[str, ...], fmt: OutputFormat = "parquet",
                  parse: bool = True) -> pa.Schema:
    """The schema every part of an output takes the pool's columns in (one, so that every
    reader opens the parts as one dataset), after refusing a pool column that the output
    would add a column of the same name to (``score``, ``rank``; a union's ``tasks``) and
    a column the output format cannot hold (:func:`~dataselect.schemas.check_storable`).
    With ``parse`` false, JSONL files not yet parsed are left to the write pass: a check
    that costs nothing before any work.

    It carries the ``huggingface`` description (ClassLabel names) the pool's files give,
    where those that give one give the same: every part then holds it. Why: a part whose
    rows had to be conformed (a column another file lacks, another integer width) was
    written with this schema and lost it, so a ClassLabel column read as plain numbers,
    in every part or only in some (the ``.hf`` copy then dropping the names too)."""
    schemas = pool.schemas(parse)
    for place, schema in schemas:
        for name in added:
            if name in schema.names:
                raise InputError(f"has a column named {name!r}, which dataselect adds to "
                                 "its output; rename or drop yours", where=place, field=name)
        check_storable(place, schema, fmt)
    unified = pool.unified_schema(parse, schemas)
    described = {s.metadata[HF_METADATA] for _, s in schemas
                 if HF_METADATA in (s.metadata or {})}
    if len(described) != 1:
        return unified
    return unified.with_metadata({**(unified.metadata or {}), HF_METADATA: described.pop()})


def write_selection(
    selection: Selection,
    out: str | OutputFolder,
    fmt: OutputFormat = "parquet",
    target: Corpus | None = None,
    runner: Runner = default_runner,
    overwrite: bool = False,
    metrics_hasher: NgramHasher | None = None,
    metrics_sample: float | None = None,
    extra_manifest: dict[str, Any] | None = None,
    save_to_disk: bool = False,
) -> dict[str, Any]:
    """Write ``selection`` under ``out`` and return the manifest (also saved as JSON).

    ``out`` is a folder path, claimed here (new, empty or dataselect's own, outside the
    inputs; a different selection there is refused unless ``overwrite``), or a folder a
    job already claimed for its whole run. With ``target`` given, the manifest reports KL
    reduction on hashed n-grams (the pool's distribution estimated on a seeded
    ``metrics_sample`` fraction of its rows; by default :func:`metrics_share`). When the
    pool has a label column, the manifest's ``composition`` counts the labels of the
    selection (and its precision against the target's labels, when the target has that
    column too). ``save_to_disk`` also writes the layout of ``datasets.Dataset.save_to_disk``
    under ``out/.hf/``; it is not part of the selection's identity, so a rerun that adds it
    converts the finished parts only.
    """
    fmt, target, metrics_sample = _checked(fmt, target, overwrite, metrics_hasher,
                                           metrics_sample, save_to_disk)
    metrics_sample = metrics_share(metrics_sample, selection.pool)
    if not isinstance(out, OutputFolder):
        out = checks.check_path(out, "out")
    checks.check_local_layout(out if isinstance(out, str) else out.path, save_to_disk)
    hasher = (metrics_hasher or NgramHasher()) if target is not None else None
    if isinstance(out, OutputFolder):
        claimed = contextlib.nullcontext(out)
    else:
        identity = {"selection": selection.description(), "format": fmt,
                    "target": target.fingerprint() if target is not None else None,
                    "metrics": {"hasher": repr(hasher), "sample": metrics_sample}}
        inputs = [*selection.pool.files, *selection.pool.roots,
                  *(target.files + target.roots if target is not None else [])]
        claimed = claim_output(out, "selection", identity, inputs=inputs,
                               overwrite=overwrite)
    with claimed as folder:
        return _write(selection, folder, fmt, target, runner, hasher, metrics_sample,
                      extra_manifest, save_to_disk, overwrite)


def _checked(fmt: Any, target: Any, overwrite: Any, metrics_hasher: Any,
             metrics_sample: Any, save_to_disk: Any
             ) -> tuple[OutputFormat, Corpus | None, float]:
    """write_selection's settings, checked as the command line checks its flags (a NaN or
    zero ``metrics_sample`` gave a meaningless KL number; ``overwrite="no"`` is true), with
    a target given as a path read as a corpus."""
    checks.check_choice(fmt, ("parquet", "arrow"), "fmt")
    checks.check_bool(overwrite, "overwrite")
    checks.check_bool(save_to_disk, "save_to_disk")
    if metrics_hasher is not None and not isinstance(metrics_hasher, NgramHasher):
        raise checks.wrong_type("an NgramHasher", metrics_hasher, "metrics_hasher")
    return (fmt, as_corpus(target, "target", optional=True),
            checks.optional(checks.check_fraction, metrics_sample, "metrics_sample"))


def metrics_share(metrics_sample: float | None, pool: Corpus) -> float:
    """The share of ``pool`` the KL metric hashes: ``metrics_sample`` when given, else a
    tenth of the pool, at most :data:`METRICS_SAMPLE_MB` MiB of it (uncompressed).

    Why bounded: the metric needs enough n-grams to estimate a distribution over 10,000
    buckets, which 64 MiB of text (some 10^7 tokens) gives many times over; a tenth of a
    10^9-row pool is 7 GB of text to hash, a tenth of the scoring pass's work, for a
    number that a smaller sample gives to three digits. Pools under 640 MiB of text keep
    the tenth they always had; the share used is in the manifest."""
    if metrics_sample is not None:
        return metrics_sample
    return min(DEFAULT_METRICS_SAMPLE, METRICS_SAMPLE_MB * 2**20 / max(pool.estimated_bytes(), 1))


def _write(selection: Selection, folder: OutputFolder, fmt: OutputFormat,
           target: Corpus | None, runner: Runner, hasher: NgramHasher | None,
           metrics_sample: float, extra_manifest: dict[str, Any] | None,
           save_to_disk: bool, overwrite: bool = False) -> dict[str, Any]:
    out = folder.path
    parts = selection.pool.npartitions
    folder.expect([part_name(i, fmt) for i in range(parts)]
                  + [os.path.join(STATS_DIR, f"part-{i:05d}.npz") for i in range(parts)]
                  + [pool_stats_name(i) for i in range(parts)] + [MANIFEST_FILE])
    # before any work: a data file of another's here would be read with the parts by every
    # reader of the folder, a finished job's rerun included (it only checks the parts)
    refuse_foreign_data(out, folder.files)
    if not storage.is_remote(out):  # an object store has no folders to make
        os.makedirs(os.path.join(out, STATS_DIR), exist_ok=True)
    folder.remove_temporaries()
    folder.remove_temporaries(STATS_DIR)
    start = time.perf_counter()
    schema = output_schema(selection.pool, ADDED_COLUMNS, fmt)
    job = job_digest(folder.identity)
    pool_stats = PoolStats(out, hasher, metrics_sample, metrics_seed(selection.policy), job)
    writer = _WritePart(selection.pool, selection.scores.task, selection.positions,
                        selection.ranks, out, fmt, pool_stats, schema, overwrite)
    tasks = partition_tasks("write", writer, parts)
    results = run_stage(runner, "write", tasks)
    # a worker killed mid-write may leave a temporary that a glob of the parts would match
    folder.remove_temporaries()
    names, rows = [part_name(i, fmt) for i in range(parts)], [r["rows"] for r in results]
    # a column datasets cannot read: said, not refused (save_to_disk refuses it before work)
    pool_schemas = [s for _, s in selection.pool.schemas(False)]
    notes = [*selection.notes, *([] if save_to_disk else datasets_notes(schema,
                                                                         pool_schemas))]
    manifest = {
        RECORD_JOB_KEY: job,  # which job's this record is (report, eval, load_hf check)
        "selection": selection.policy,
        "scores": selection.scores.description,
        "counts": {**selection.counts, "written": sum(r["rows"] for r in results)},
        **({"notes": notes} if notes else {}),
        "output": {"format": fmt,
                   "parts": [{"file": n, "rows": r} for n, r in zip(names, rows)],
                   "partitions_reused": sum(1 for r in results if r["reused"])},
        "inputs": {"pool": selection.pool.fingerprint(),
                   "target": target.fingerprint() if target is not None else None},
        "timings": {"write_seconds": round(time.perf_counter() - start, 3)},
        "versions": package_versions(),
    }
    # in the client, after the write pass: a stage of its own in a job's table
    with step_progress(runner, "metrics", parts + 1) as advance:
        manifest.update(_metrics(out, job, parts, target, hasher, metrics_sample, advance,
                                 [schema, *pool_schemas], notes))
    if notes:
        manifest["notes"] = notes
    if extra_manifest:
        manifest.update(extra_manifest)
    # the parts were read from the pool the scores were computed on, or the job fails
    # here, before the manifest that marks it finished
    check_inputs_unchanged(selection, target, folder.identity)
    if save_to_disk:
        manifest["output"]["save_to_disk"] = write_hf(folder, names, rows, runner)
    write_json(manifest, os.path.join(out, MANIFEST_FILE))
    return manifest


def check_inputs_unchanged(selection: Selection, target: Corpus | None,
                           identity: Any = None) -> None:
    """Refuse to write the manifest of a selection whose pool or target changed at any
    moment since the job took their fingerprints: the pool against every record of it (the
    fingerprint it was planned with, which the manifest records, the one its scores were
    computed on, and a job marker's ``inputs.pool``), the target against its own and the
    marker's ``inputs.target``.

    Why every record: each used to be taken anew, at its own moment, and the check looked
    at the score store's only, so a pool file replaced between the marker's and the
    store's fingerprints (pass 13, g05) ended with exit 0, the new file's rows in the
    selection and the old file's identity in the marker."""
    marked = identity.get("inputs") if isinstance(identity, dict) else None
    marked = marked if isinstance(marked, dict) else {}
    pools = [selection.pool.fingerprint(), selection.scores.description.get("pool"),
             marked.get("pool")]
    for recorded in _distinct(pools):
        selection.pool.check_unchanged(recorded, "pool")
    if target is not None:
        for recorded in _distinct([target.fingerprint(), marked.get("target")]):
            target.check_unchanged(recorded, "target")


def _distinct(records: list[Any]) -> list[dict[str, Any]]:
    """The mappings among ``records``, each once (most are the same fingerprint)."""
    kept: list[dict[str, Any]] = []
    for record in records:
        if isinstance(record, dict) and jsonable(record) not in [jsonable(k) for k in kept]:
            kept.append(record)
    return kept


@dataclass
class _Summed:
    """The write pass's per-part counts, summed over the parts."""

    pool_ngrams: Any = 0
    selected_ngrams: Any = 0
    label_columns: set[str] = field(default_factory=set)
    pool_labels: Counter = field(default_factory=Counter)
    selected_labels: Counter = field(default_factory=Counter)

    def add(self, saved: Any) -> None:
        self.pool_ngrams = self.pool_ngrams + saved["pool_counts"]
        self.selected_ngrams = self.selected_ngrams + saved["selected_counts"]
        self.label_columns.add(str(saved[LABEL_COLUMN_KEY]))
        names = [str(n) for n in saved[LABELS_KEY]]
        self.pool_labels.update(dict(zip(names, saved["pool_labels"].tolist())))
        self.selected_labels.update(dict(zip(names, saved["selected_labels"].tolist())))

    @property
    def label_column(self) -> str | None:
        """The parts' label column, when they all have the same one."""
        if len(self.label_columns) != 1:
            return None
        return next(iter(self.label_columns)) or None


def _metrics(out: str, job: str, parts: int, target: Corpus | None,
             hasher: NgramHasher | None, metrics_sample: float,
             advance: Callable[[int], None], pool_schemas: list[pa.Schema],
             notes: list[str]) -> dict[str, Any]:
    """The manifest's ``metrics`` (KL reduction, with a target) and ``composition`` (with
    a label column), from the parts' saved counts (each checked to be the one this job,
    ``job``, wrote) and one pass over the target. ``pool_schemas`` (the output's and the
    pool files') say how the pool's labels were counted: no precision is given for a
    target whose labels are numbers where the pool's are ClassLabel names, or the reverse
    (:func:`~dataselect.composition.names_against_numbers`), and ``notes`` gets why."""
    summed = _Summed()
    # summed one saved file at a time, so memory does not grow with the partition count
    for index in range(parts):
        summed.add(PartOrigin(job, index).load_arrays(
            os.path.join(out, STATS_DIR, f"part-{index:05d}.npz")))
        advance(1)
    column = summed.label_column
    found: dict[str, Any] = {}
    target_labels: Counter | None = None
    if target is not None and hasher is not None:
        target_ngrams, target_labels = np.zeros(hasher.num_buckets, np.int64), Counter()
        target_kinds: set[str | None] = set()
        for table in target.iter_tables():
            target_ngrams += hasher.bucket_counts(target.texts(table))
            target_labels.update(count_labels(table, column))
            target_kinds.add(label_kind(table.schema, column))
        clash = column and names_against_numbers(
            column, {label_kind(s, column) for s in pool_schemas}, target_kinds)
        if clash:
            target_labels = None
            notes.append(clash)
        metrics = kl_reduction(target_ngrams, summed.pool_ngrams, summed.selected_ngrams)
        metrics = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
        # the share as used, unrounded: 1e-7 of a pool is not 0.0
        metrics.update({"ngram_buckets": hasher.num_buckets, "ngram": hasher.ngram,
                        "pool_sample_fraction": metrics_sample})
        found["metrics"] = metrics
    advance(1)
    composed = column and composition(column, summed.pool_labels, summed.selected_labels,
                                      target_labels)
    if composed:
        found["composition"] = composed
    return found

