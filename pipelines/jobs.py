"""Batch jobs: read -> fit -> score (score store) -> select -> write, on a Dask cluster or
on local threads (:mod:`pipelines.threads`).

A job is a plain settings object run inside one client. Each stage is resumable on
its own: the score store skips finished parts, the writer skips finished output parts,
and fitting is cheap relative to scoring. The job's manifest gathers the settings, input
fingerprints, counts, per-stage timings and package versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from dataselect import checks, select, storage
from dataselect.corpus import DEFAULT_PARTITION_BYTES, Corpus, cached_name, read_corpus
from dataselect.defaults import WORKER_KINDS
from dataselect.errors import InputError
from dataselect.features import check_feature_folder
from dataselect.footer import job_digest
from dataselect.hf import check_hf_schema
from dataselect.layout import PARSED_DIR, SCORES_DIR  # hidden from readers of out/
from dataselect.ngram_store import store_name
from dataselect.ngrams import NgramHasher
from dataselect.outdir import OutputFolder, claim_output, input_roots, refuse_foreign_data
from dataselect.output import OutputFormat, temporary_of, write_json
from dataselect.policies import Budget, choose_rows, resolved_policy
from dataselect.schemas import check_class_labels
from dataselect.scoring import (
    Scorer,
    Scores,
    blank_target_rows,
    noting_blank_target_rows,
    plan_pool,
)
from dataselect.temporary import checked_temporary_folder
from dataselect.writer import (
    ADDED_COLUMNS,
    MANIFEST_FILE,
    PoolStats,
    metrics_share,
    output_schema,
    pool_stats_name,
)
from pipelines.cluster import dask_client
from pipelines.progress import ProgressRunner, StageClock
from pipelines.summary import FIT_DETAILS, composition_rows, print_fit_details, print_summary
from scorers import SCORERS, build_scorer, clashing_setting


@dataclass
class SelectJob:
    """Everything a selection job needs; the CLI and recipes fill it in."""

    scorer: str
    pool: list[str]
    target: list[str]
    out: str
    k: int | None = None
    fraction: float | None = None
    threshold: float | None = None
    policy: str = "auto"
    seed: int | None = None  # None: not given, so 0 (and a scorer's own -p seed stands)
    text_field: str = "text"
    target_text_field: str | None = None
    id_field: str = "id"
    scorer_params: dict[str, Any] = field(default_factory=dict)
    output_format: OutputFormat = "parquet"
    partition_bytes: int = DEFAULT_PARTITION_BYTES
    metrics_sample: float | None = None  # writer.metrics_share
    scheduler: str | None = None
    workers: int | None = None
    memory_limit: str = "auto"
    worker_kind: str = "auto"
    overwrite: bool = False
    save_to_disk: bool = False  # also the datasets.load_from_disk layout, in out/.hf/

    def __post_init__(self) -> None:
        """The seed, 0 when not given; whether it was given is kept aside (not a setting,
        so not in the manifest): only a given seed contradicts a scorer's own."""
        self._seed_given = self.seed is not None
        if self.seed is None:
            self.seed = 0

    def validate(self, needs_budget: bool = True) -> None:
        if self.scorer not in SCORERS:
            raise InputError(f"unknown scorer {self.scorer!r}; choose from {sorted(SCORERS)}",
                             field="scorer")
        checks.check_policy_budget(self.policy, {"k": self.k, "fraction": self.fraction,
                                                 "threshold": self.threshold},
                                   needs_budget=needs_budget)
        checks.check_choice(self.worker_kind, WORKER_KINDS, "worker_kind")
        checks.check_choice(self.output_format, ("parquet", "arrow"), "output_format")
        checks.check_cluster(self.scheduler, {"workers": self.workers,
                                              "memory_limit": self.memory_limit,
                                              "worker_kind": self.worker_kind})
        self.pool = checks.check_paths(self.pool, "pool")  # read_corpus makes them absolute
        self.target = checks.check_paths(self.target, "target")
        # absolute before planning: a cluster's workers run in folders of their own
        # (storage.absolute); a URL stays as given
        self.out = storage.absolute(checks.check_path(self.out, "out"))
        checks.check_local_layout(self.out, self.save_to_disk)
        self._check_numbers()

    def _check_numbers(self) -> None:
        """The ranges the command line's flags have, for jobs built in Python, so a NaN
        threshold or ``k=True`` fails here instead of selecting nothing or one row."""
        checks.optional(checks.check_count, self.k, "k")
        checks.optional(checks.check_fraction, self.fraction, "fraction")
        checks.optional(checks.check_finite, self.threshold, "threshold")
        checks.check_seed(self.seed, "seed")
        checks.check_count(self.partition_bytes, "partition_bytes",
                           maximum=checks.MAX_PARTITION_MB * 2**20)
        checks.optional(checks.check_fraction, self.metrics_sample, "metrics_sample")
        checks.optional(checks.check_count, self.workers, "workers")
        checks.check_memory_limit(self.memory_limit, "memory_limit")
        checks.check_bool(self.overwrite, "overwrite")
        checks.check_bool(self.save_to_disk, "save_to_disk")
        for name in ("text_field", "id_field"):
            checks.check_name(getattr(self, name), name)
        checks.optional(checks.check_name, self.target_text_field, "target_text_field")
        if not isinstance(self.scorer_params, dict):
            raise checks.SettingError("must be a dict of the scorer's settings, got "
                                      f"{checks.shown(self.scorer_params)}",
                                      field="scorer_params")
        checks.optional(checks.check_scheduler, self.scheduler, "scheduler")
        self._check_given_once()

    def _check_given_once(self) -> None:
        """A scorer setting the job fills from its own (the seed, the budget) may be given
        as well only with the same value (:func:`scorers.clashing_setting`)."""
        given = {"seed": self.seed if self._seed_given else None, "k": self.k,
                 "fraction": self.fraction}
        clash = clashing_setting(self.scorer, self.scorer_params, given)
        if clash is not None:
            key, flag = clash
            raise InputError(f"-p {key}={checks.shown(self.scorer_params[key])} contradicts "
                             f"--{flag} {checks.shown(given[flag])}; give one",
                             field="--param")


def _corpora(job: SelectJob) -> tuple[Corpus, Corpus]:
    """The pool, planned for the scorer (by compute for a model, :func:`plan_pool`: the
    plan, in the pool's fingerprint, is part of the job's identity), and the target."""
    pool = plan_pool(read_corpus(job.pool, job.text_field, job.id_field, job.partition_bytes),
                     [SCORERS[job.scorer]])
    target = read_corpus(job.target, job.target_text_field or job.text_field, job.id_field,
                         job.partition_bytes)
    # the target's files are read as one too (its label counts give the precision)
    check_class_labels(target.schemas(False))
    return pool, target


# Settings that change where or how fast a job runs, not what it writes: a finished job
# rerun with another of these (or another spelling of --out) is the same job.
RUNTIME_SETTINGS = ("out", "scheduler", "workers", "memory_limit", "worker_kind", "overwrite",
                    "save_to_disk")  # adding save_to_disk only converts finished parts


# Bumped when a release writes other bytes for the same settings and inputs, so that a job
# interrupted under the old code is not resumed, half old and half new, by the new one.
# 2: the fast n-gram tokenizer hashes tokens from their string views (other buckets).
# 3: ZIP-FIT's default mode is fast (was exact), whose texts under 8 bytes are scored
#    with a padded dictionary; blank rows are filtered as empty_text.
# 4: rows of only marks (Mn, Me), Hangul fillers or other invisible characters are blank
#    too (dataselect.scoring.BLANK_TEXT), filtered as empty_text; and every part records
#    where it belongs in its footer (dataselect.footer): an older job's parts, which do
#    not, would be refused one by one as of unknown origin.
# 5: selection and union parts hash every column in their footer (their text too, not only
#    ids, scores and ranks), and each .manifest.json and .run.json names the job it
#    belongs to (dataselect.footer.RECORD_JOB_KEY), which report, eval and load_hf check.
#    A recipe's identity records the revision too.
OUTPUT_REVISION = 5


def job_identity(job: SelectJob, pool: Corpus, target: Corpus) -> dict[str, Any]:
    """What determines a job's output bytes: its settings, its inputs' contents and the
    code's output revision."""
    settings = {k: v for k, v in dataclasses.asdict(job).items() if k not in RUNTIME_SETTINGS}
    # the inputs as resolved paths: ``p`` and ``/abs/p`` are one pool, not two jobs
    settings["pool"] = [storage.resolved(spec) for spec in job.pool]
    settings["target"] = [storage.resolved(spec) for spec in job.target]
    return {"settings": settings,
            "inputs": {"pool": pool.fingerprint(), "target": target.fingerprint()},
            "output_revision": OUTPUT_REVISION}


def _claim(job: SelectJob, identity: dict[str, Any] | None) -> Any:
    """The job's output folder, checked and locked before any work (outdir.claim_output)."""
    return claim_output(job.out, "job", identity, inputs=input_roots(job.pool + job.target),
                        overwrite=job.overwrite)


def _client(job: SelectJob, scorer: Scorer) -> Any:
    kind = scorer.local_workers if job.worker_kind == "auto" else job.worker_kind
    return dask_client(job.scheduler, job.workers, job.memory_limit, kind)


@contextmanager
def _session(job: SelectJob, scorer: Scorer, identity: dict[str, Any] | None,
             clock: StageClock, pool: Corpus
             ) -> Iterator[tuple[OutputFolder, ProgressRunner, Corpus]]:
    """The claimed output folder, a runner on the job's cluster and the pool as the job
    keeps it (:func:`parsed_once`), with claiming and starting the cluster, and closing it,
    timed as stages of the job's clock. The cluster closes before ``.parsed/`` is deleted,
    so a task still under way when a stage failed (or Ctrl-C came) cannot write its
    partition's files there afterwards."""
    with ExitStack() as stack:
        with clock.stage("start cluster"):
            out = stack.enter_context(_claim(job, identity))
            # before the work, resumed or not (--overwrite leaves what it did not list, a
            # user's x.pq included): the writer checks again before it writes
            refuse_foreign_data(out.path, out.files)
            parsed = stack.enter_context(parsed_once(pool, out))
            client = stack.enter_context(_client(job, scorer))
        yield out, ProgressRunner(client, clock=clock), parsed
        with clock.stage("stop cluster"):
            stack.close()


@contextmanager
def parsed_once(pool: Corpus, out: OutputFolder) -> Iterator[Corpus]:
    """The pool, keeping what its first pass computes per partition under ``out/.parsed/``
    for the passes after it, and deleting it when the job's passes are done, failed or not:
    a finished folder holds no copy of the pool.

    Two things are kept:

    * a JSONL pool's parsed partitions, as Arrow files (:meth:`Corpus.cached_in`), and
      those of a Parquet pool cut inside its row groups (:meth:`Corpus.rereads_cost`);
      other Parquet and Arrow pools read fast already. Measured on the 141 MB
      python_docs pool: the score and write passes each parsed it again, 1.4 s of CPU a
      pass on 2 workers;
    * hashed n-grams, for scorers and metrics that hash the pool
      (:meth:`Corpus.with_ngram_store`): a DSIR job hashed most of the pool three times.

    Each is kept only while the output's disk keeps room for the pool once more beside
    it: Arrow copies are about the size of the pool, n-grams about 0.7 of it. The files are
    listed in the folder's marker first, so ``--overwrite`` after a killed job deletes them
    too. Files a killed job left behind are deleted before the first pass, never read: the
    pool may have changed since (``dataselect score`` has no job identity to refuse that),
    and recomputing costs one pass.

    An object-store output keeps them in a local temporary folder instead: they are read
    back by mapping, which an object store cannot do, and never outlive the job.
    """
    if storage.is_remote(out.path):
        with tempfile.TemporaryDirectory(prefix="dataselect-",
                                         dir=checked_temporary_folder()) as local:
            yield from _kept_in(pool, os.path.join(local, PARSED_DIR), None)
        return
    yield from _kept_in(pool, out.join(PARSED_DIR), out)


def _kept_in(pool: Corpus, folder: str, out: OutputFolder | None) -> Iterator[Corpus]:
    """:func:`parsed_once` keeping its files in ``folder`` (listed in ``out``'s marker)."""
    _clear_parsed(folder)
    size, free = pool.estimated_bytes(), shutil.disk_usage(os.path.dirname(folder)).free
    kept, names = pool, []
    if free >= 2 * size:
        kept = kept.with_ngram_store(folder)
        names += [store_name(i) for i in range(pool.npartitions)]
    if pool.rereads_cost() and free >= (3 if names else 2) * size:
        kept = kept.cached_in(folder)
        names += [cached_name(i) for i in range(pool.npartitions)]
    if not names:
        yield pool
        return
    if out is not None:
        out.expect([os.path.join(PARSED_DIR, name) for name in names])
    try:
        yield kept
    finally:
        _clear_parsed(folder)


# the names parsed_once writes: parsed partitions, hashed n-grams, and their temporaries
# (ASCII digits: \d takes any Unicode digit, and deletes a user's look-alike file)
_PARSED_NAME = re.compile(r"part-[0-9]{5,}\.arrow|ngrams-part-[0-9]{5,}\.bin")


def _clear_parsed(folder: str) -> None:
    """Delete what :func:`parsed_once` writes in ``folder``, then the folder if that leaves
    it empty. Only those names: a file someone put there is not dataselect's to delete
    (``rmtree`` took it with the rest), and a link is removed itself, never followed."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = temporary_of(entry.name) or entry.name
        if _PARSED_NAME.fullmatch(name) and not entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # only if empty


def _fit_and_score(job: SelectJob, scorer: Scorer, pool: Corpus, target: Corpus,
                   out: OutputFolder, runner: ProgressRunner,
                   pool_stats: PoolStats | None = None,
                   resample_seed: int | None = None) -> Scores:
    # each stage times its preparation too (claiming the store, shipping the scorer); the
    # runner's Dask stage of the same name inside adds to the same row
    with runner.clock.stage(f"fit:{scorer.name}"):
        blank = blank_target_rows(target)
        scorer.fit(target, pool, runner=runner)
        noting_blank_target_rows(scorer, blank)
    store = out.join(SCORES_DIR, scorer.name)
    with runner.clock.stage(f"score:{scorer.name}"):
        scores = scorer.score(pool)
        if pool_stats is not None:  # the write pass then reads only what it writes
            out.expect([pool_stats_name(i) for i in range(pool.npartitions)])
            scores = scores.also_counting(pool_stats.record)
        # the pools select refuses (repeated ids), refused here, from the same pass
        stored = scores.write(store, runner=runner, overwrite=job.overwrite, check_ids=True,
                              resample_seed=resample_seed)
        scorer.check_unchanged()  # its model, as the fit fingerprinted it
        return stored


def _check_feature_store(job: SelectJob, scorer: Scorer, pool: Corpus) -> None:
    """A scorer's feature store (``-p features``) checked with the job's other paths,
    before any work: it is claimed only when the pool is scored, after the model ran on
    the target, and its refusal then named --out."""
    folder = getattr(scorer, "features", None) if scorer.pool_features else None
    if isinstance(folder, str | os.PathLike):
        check_feature_folder(os.fspath(folder), job.out, [*pool.files, *pool.roots])


def run_score_job(job: SelectJob, console: Console | None = None) -> dict[str, Any]:
    """Fit and write the score store only (``dataselect score``)."""
    job.validate(needs_budget=False)
    clock = StageClock()
    with clock.stage("read inputs"):
        scorer = build_scorer(job.scorer, job.scorer_params, job.seed)
        pool, target = _corpora(job)
        _check_feature_store(job, scorer, pool)
    with _session(job, scorer, None, clock, pool) as (out, runner, parsed):
        scores = _fit_and_score(job, scorer, parsed, target, out, runner)
    summary = {"rows_in": scores.stats["rows"], "selected": None,
               "fit": scorer.fit_stats_, "store": scores.stats}
    shown = {k: v for k, v in summary["fit"].items() if k not in FIT_DETAILS}
    print_summary(console, "score", clock.rows(), {**summary, "fit": shown}, clock.total())
    print_fit_details(console, {"": summary["fit"]})
    return summary


def run_select_job(job: SelectJob, console: Console | None = None) -> dict[str, Any]:
    """The whole selection job; returns the manifest written to ``<out>/.manifest.json``.

    The output folder is claimed (checked, locked, its identity recorded) before any work,
    and the manifest is complete when first written, inside the cluster's lifetime: a job
    killed at any point, even while its cluster closes, resumes on an identical rerun.
    """
    job.validate()
    clock = StageClock()
    with clock.stage("read inputs"):
        scorer = build_scorer(job.scorer, job.scorer_params, job.seed, job.k, job.fraction)
        checks.check_round_robin(resolved_policy(job.policy, job.threshold,
                                                  scorer.default_policy),
                                 scorer.scores_per_target)
        pool, target = _corpora(job)
        _check_feature_store(job, scorer, pool)
        output_schema(pool, ADDED_COLUMNS, job.output_format, parse=False)  # before work
        if job.save_to_disk:
            check_hf_schema(pool)
        identity = job_identity(job, pool, target)
        metrics_sample = metrics_share(job.metrics_sample, pool)
    with _session(job, scorer, identity, clock, pool) as (out, runner, parsed):
        pool_stats = PoolStats(out.path, NgramHasher(), metrics_sample, _metrics_seed(job),
                               job_digest(out.identity))
        scores = _fit_and_score(job, scorer, parsed, target, out, runner, pool_stats,
                                _resample_seed(job))
        with clock.stage("select"):
            selection = _select(job, parsed, scores, runner)
        record = {"job": dataclasses.asdict(job),
                  "fit": scorer.fit_stats_,
                  "score_store": {"path": os.path.join(SCORES_DIR, scorer.name),
                                  **scores.stats}}
        with clock.stage("write"):  # its preparation too; metrics are a row of their own
            manifest = selection.write(
                out, fmt=job.output_format, target=target, runner=runner,
                overwrite=job.overwrite, metrics_sample=metrics_sample,
                extra_manifest=record,
                save_to_disk=job.save_to_disk,
            )
        manifest["timings"] = {**manifest["timings"], **clock.record()}
        write_json(manifest, out.join(MANIFEST_FILE))
    length_bias = {k: v for k, v in scores.stats.items() if k == "score_length_spearman"}
    # a note is longer than a cell: printed whole below the table, "note: ..."
    notes = {"note": " ".join(manifest["notes"])} if manifest.get("notes") else {}
    print_summary(console, "select", clock.rows(), {**manifest["counts"],
                  **manifest.get("metrics", {}), **length_bias,
                  **composition_rows(manifest), **notes}, clock.total())
    print_fit_details(console, {"": manifest["fit"]})
    return manifest


def _select(job: SelectJob, pool: Corpus, scores: Scores, runner: ProgressRunner
            ) -> select.Selection:
    budget = Budget(job.k, job.fraction, job.threshold, job.seed)
    return choose_rows(pool, scores, job.policy, budget, SCORERS[job.scorer].default_policy,
                       runner)


def _metrics_seed(job: SelectJob) -> int:
    """The seed of the KL metric's pool sample (:func:`~dataselect.writer.metrics_seed`):
    the job's when its selection resamples by importance, the only policy that records a
    seed. Known before the scoring pass, which counts that sample; were it another, the
    write pass would count it itself, so a mismatch costs time, never a wrong number."""
    seed = _resample_seed(job)
    return 0 if seed is None else seed


def _resample_seed(job: SelectJob) -> int | None:
    """The job's seed when its selection resamples by importance (known before the
    scoring pass, which then also ranks the rows by their Gumbel keys), else None."""
    resamples = resolved_policy(job.policy, job.threshold, SCORERS[job.scorer].default_policy
                                 ) == "importance_resample"
    return job.seed if resamples else None
