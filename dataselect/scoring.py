"""The Scorer contract and the score store.

A scorer learns what "good" is from a target (``fit``) and turns a batch of ``id`` + ``text``
rows into ``id`` + ``score`` rows (``score_batch``). It knows nothing about files or Dask:
:meth:`Scorer.score` hands ``score_batch`` to the corpus' partition mapper. Scores are kept
as side files beside the pool (Dolma's documents/attributes split), one part per pool
partition, so selection can be redone with another policy without re-scoring and a killed
scoring job resumes from the parts it finished.

Score table columns: ``id`` (string), ``score`` (float64, higher = more wanted), optional
extras, optional ``filtered_by`` (string; null when the row is eligible, else the name of
the filter that removed it, which the selection step counts and reports), and
``text_bytes`` (UTF-8 length of the scored text, added by the base class), from which the
store reports how strongly scores follow document length: every scorer here can be
length-biased, and a user should see by how much.
"""

from __future__ import annotations

import os
import pickle
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.corpus import Corpus, compute_partition_bytes
from dataselect.errors import InputError, ScorerContractError
from dataselect.execution import Runner, default_runner, partition_tasks
from dataselect.manifest import package_versions
from dataselect.outdir import claim_output
from dataselect.output import (
    part_name,
    read_json,
    read_table,
    remove_stale_temporaries,
    write_json,
    write_table,
)
from dataselect.sampling import id_hashes

FILTERED_BY = "filtered_by"
TEXT_BYTES = "text_bytes"
# filter reason of a row whose text is empty or holds only whitespace, control or format
# characters (a no-break space, a zero-width space, a byte-order mark): nothing to select
EMPTY_TEXT_FILTER = "empty_text"
BLANK_TEXT = r"^[\s\p{Z}\p{Cc}\p{Cf}]*$"
STORE_MANIFEST = "_manifest.json"


def summarize_scores(table: pa.Table) -> dict[str, Any]:
    """What selection needs of a score part: scores, eligibility, rows removed per filter,
    and id hashes (for the cross-partition duplicate check and per-id random draws)."""
    score = table["score"].to_numpy().astype(np.float64)
    if FILTERED_BY in table.column_names:
        reasons = table[FILTERED_BY]
        eligible = pc.is_null(reasons).to_numpy(zero_copy_only=False)
        dropped = Counter(reasons.drop_null().to_pylist())
    else:
        eligible, dropped = np.ones(len(score), bool), Counter()
    bad = np.isnan(score) & eligible
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"score is NaN for id {table['id'][row].as_py()!r}", field="score")
    summary = {"score": score, "eligible": eligible, "dropped": dropped,
               "id_hash": id_hashes(table["id"])}
    if TEXT_BYTES in table.column_names:
        summary[TEXT_BYTES] = table[TEXT_BYTES].to_numpy().astype(np.int64)
    return summary


CONTRACT = ("score_batch must return a pyarrow Table with one row per input row: 'id' (the "
            "batch's ids, in order) and 'score' (numbers)")


def checked_scores(name: str, batch: pa.Table, scores: Any) -> pa.Table:
    """``scores``, the output of scorer ``name``'s ``score_batch`` for ``batch``, once it
    keeps the contract (:data:`CONTRACT`); integer or decimal scores become float64.

    Every path that scores calls this right after ``score_batch`` (a job's partitions in
    threads or processes, ``score`` alone, recipes, auto's candidates), before anything
    else touches the table: a plug-in's one score too many used to reach Arrow as "column
    length mismatch" while a column was added, and a string score reached selection."""
    def broken(what: str) -> ScorerContractError:
        return ScorerContractError(f"scorer {name!r} {what}; {CONTRACT}")

    if not isinstance(scores, pa.Table):
        raise broken(f"returned a {type(scores).__name__}, not a pyarrow Table")
    if scores.num_rows != batch.num_rows:
        raise broken(f"returned {scores.num_rows} scores for {batch.num_rows} rows")
    missing = [c for c in ("id", "score") if c not in scores.column_names]
    if missing:
        raise broken(f"returned no {' or '.join(map(repr, missing))} column (columns: "
                     f"{', '.join(scores.column_names) or 'none'})")
    _check_ids(scores["id"], batch["id"], broken)
    return _numeric_scores(scores, broken)


def _check_ids(ids: pa.ChunkedArray, expected: pa.ChunkedArray, broken: Any) -> None:
    """The ids, row for row, are the batch's: selection joins scores to rows by position."""
    if ids.type == expected.type and ids.equals(expected):
        return
    try:
        same = pc.equal(ids.cast(expected.type), expected).fill_null(False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise broken(f"returned ids of type {ids.type}, not the batch's {expected.type}"
                     ) from None
    row = int(pc.index(same, False).as_py())
    if row >= 0:
        raise broken(f"returned id {ids[row].as_py()!r} for row {row}, whose id is "
                     f"{expected[row].as_py()!r}")


def _numeric_scores(scores: pa.Table, broken: Any) -> pa.Table:
    """Scores that are numbers, none null, and none NaN where the row is eligible."""
    column = scores["score"]
    kind = column.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)
            or pa.types.is_decimal(kind)):
        raise broken(f"returned scores of type {kind}, not numbers")
    if not pa.types.is_floating(kind):
        column = column.cast(pa.float64())
        scores = scores.set_column(scores.column_names.index("score"), "score", column)
    eligible = (pc.is_null(scores[FILTERED_BY]) if FILTERED_BY in scores.column_names
                else pa.chunked_array([pa.repeat(True, scores.num_rows)]))
    bad = pc.and_(eligible, pc.or_(pc.is_null(column), pc.is_nan(column)).fill_null(True))
    row = int(pc.index(bad, True).as_py())
    if row >= 0:
        raise broken(f"returned {column[row].as_py()} as the score of id "
                     f"{scores['id'][row].as_py()!r}")
    return scores


def with_text_columns(scores: pa.Table, texts: pa.ChunkedArray | pa.Array) -> pa.Table:
    """``scores`` of the rows whose scored text is ``texts``, with their ``text_bytes`` and
    with blank rows (:data:`BLANK_TEXT`) filtered as ``empty_text``.

    Every scorer gives a blank text some score, and for several it is a high one: ZIP-FIT's
    fast mode ranked every empty row first (an empty text costs nothing to compress
    against the target), DSIR scores it 0, above every document whose n-grams are rarer in
    the target than in the pool. Nobody selects data to get empty rows, so such rows are
    never eligible, whatever the scorer, and the manifest counts them under ``filtered``.
    A reason the scorer gave already (DSIR's ``dsir_min_length``) is kept. The column is
    added only when a row is blank, so score parts of other pools keep their bytes."""
    if TEXT_BYTES not in scores.column_names:
        scores = scores.append_column(TEXT_BYTES, pc.binary_length(texts))
    blank = pc.match_substring_regex(texts, BLANK_TEXT)
    if not pc.any(blank).as_py():
        return scores
    reasons = pa.nulls(scores.num_rows, pa.string())
    if FILTERED_BY in scores.column_names:
        reasons = scores[FILTERED_BY].cast(pa.string())
    reasons = pc.if_else(pc.and_(blank, pc.is_null(reasons)), EMPTY_TEXT_FILTER, reasons)
    if FILTERED_BY in scores.column_names:
        return scores.set_column(scores.column_names.index(FILTERED_BY), FILTERED_BY, reasons)
    return scores.append_column(FILTERED_BY, reasons)


def score_length_correlation(summaries: list[dict[str, Any]]) -> float | None:
    """Spearman rank correlation between score and text length over eligible rows (None
    when lengths are missing or fewer than 3 rows are eligible, or either is constant)."""
    if not summaries or any(TEXT_BYTES not in s for s in summaries):
        return None
    eligible = np.concatenate([s["eligible"] for s in summaries])
    if eligible.sum() < 3:
        return None
    score = np.concatenate([s["score"] for s in summaries])[eligible]
    length = np.concatenate([s[TEXT_BYTES] for s in summaries])[eligible]
    ranks = [pd.Series(v).rank(method="average").to_numpy() for v in (score, length)]
    if min(r.std() for r in ranks) == 0:
        return None
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


class StartedFit:
    """A fit already finished (:meth:`Scorer.start_fit`'s default): ``wait()`` returns the
    scorer. Scorers that train in the background return a subclass that waits."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def wait(self) -> Scorer:
        return self.scorer

    def close(self) -> None:
        """Stop work still under way; nothing is, for a finished fit."""

    def __enter__(self) -> StartedFit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Scorer(ABC):
    """Base class of every scorer. Subclasses set ``name`` and implement ``fit``,
    ``score_batch`` and ``config``; ``save``/``load`` pickle the fitted state."""

    name: ClassVar[str]
    # True for scorers that train or take gradients on the response tokens only (LESS,
    # BADS): their batches then carry a ``response_spans`` column (see TextSpec).
    uses_response_spans: ClassVar[bool] = False
    # What the scorer needs, declared here so that jobs and recipes never test a scorer's
    # name (and a scorer from another package gets the same treatment):
    # - needs_model: a ``model`` parameter naming a local causal LM folder; a recipe may
    #   give it as the name of an entry of ``models``.
    needs_model: ClassVar[bool] = False
    # - pool_features: scores through a pool feature store (a ``features`` parameter); a
    #   recipe computes the store once and shares it across its tasks.
    pool_features: ClassVar[bool] = False
    # - needs_warmup: takes LoRA warmup ``checkpoints``; a recipe runs the warmup when none
    #   are given.
    needs_warmup: ClassVar[bool] = False
    # - default_policy: what ``--policy auto`` means for these scores (DSIR's are log
    #   importance weights, so it resamples; everything else takes the top rows).
    default_policy: ClassVar[str] = "top_k"
    # - takes_budget: has ``k`` and ``fraction`` parameters, which jobs and recipes fill
    #   with the selection's budget when not given (``auto`` measures recall at that share).
    takes_budget: ClassVar[bool] = False
    # - trains_in_background: ``start_fit`` returns while the model still trains (in a
    #   process of its own), so whoever fits several scorers (``auto``) starts it first and
    #   fits the others meanwhile.
    trains_in_background: ClassVar[bool] = False

    @classmethod
    def compute_bound(cls) -> bool:
        """Whether scoring a row runs a model on it (a forward or backward pass), so that a
        pool this scorer scores is cut by compute (:func:`plan_pool`). By default, every
        scorer that needs a model; one that only looks up what its fit learned says no."""
        return cls.needs_model

    @property
    def local_workers(self) -> str:
        """``processes`` (default) when scoring holds the GIL, ``threads`` when it runs in
        native code that releases it; the job runner sizes a local cluster by this."""
        return "processes"

    @abstractmethod
    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Scorer:
        """Learn from the target (and the pool when the method needs it); return self."""

    def start_fit(self, target: Corpus, pool: Corpus | None = None,
                  runner: Runner = default_runner) -> StartedFit:
        """Begin :meth:`fit`; ``wait()`` on the result returns the fitted scorer, and
        leaving its ``with`` block stops work still under way. This default fits at once;
        a scorer that ``trains_in_background`` returns while its model trains."""
        return StartedFit(self.fit(target, pool, runner=runner))

    @abstractmethod
    def score_batch(self, batch: pa.Table) -> pa.Table:
        """``id`` + ``text`` rows in, ``id`` + ``score`` (+ extras, ``filtered_by``) out."""

    def score_partition(self, corpus: Corpus, index: int, table: pa.Table) -> pa.Table:
        """Scores of partition ``index`` of ``corpus`` (``table``, its rows as read), with a
        ``text_bytes`` column. This default scores the scoring view with
        :meth:`score_batch`; a scorer that kept per-partition work from its fit (DSIR keeps
        the pool's hashed n-grams in a job's store) overrides it to use that work."""
        view = corpus.scoring_view(table, self.uses_response_spans)
        return with_text_columns(checked_scores(self.name, view, self.score_batch(view)),
                                 view["text"])

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Settings that determine the scores (recorded in manifests, used for resume)."""

    def fit_fingerprint(self) -> str:
        """Identifies the fitted state, so stored scores of another fit are never reused."""
        return str(getattr(self, "fingerprint_", "unfitted"))

    def score(self, corpus: Corpus) -> Scores:
        """Lazy scores of every row of ``corpus``, one partition per corpus partition."""
        return Scores(self.name, corpus, _ScoreTask(self, corpus), self.describe(corpus))

    def describe(self, corpus: Corpus) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "config": self.config(),
            "fit_fingerprint": self.fit_fingerprint(),
            "pool": corpus.fingerprint(),
        }

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(self, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scorer:
        with open(path, "rb") as f:
            obj = pickle.load(f)
        if not isinstance(obj, cls):
            raise InputError(f"holds a {type(obj).__name__}, not a {cls.__name__}", where=str(path))
        return obj


def plan_pool(pool: Corpus, scorers: Iterable[type[Scorer]]) -> Corpus:
    """``pool`` planned for scoring by ``scorers``: cut by compute
    (:func:`~dataselect.corpus.compute_partition_bytes`, from the pool's size and the
    partition size it was read with) when any of them is compute-bound, else unchanged.
    Jobs and recipes plan their pool through this, so every worker gets model work."""
    if not any(cls.compute_bound() for cls in scorers):
        return pool
    return pool.replanned(compute_partition_bytes(pool.estimated_bytes(), pool.partition_bytes))


@dataclass(frozen=True)
class _ScoreTask:
    scorer: Scorer
    corpus: Corpus

    def __call__(self, index: int) -> pa.Table:
        table = self.corpus.read_partition(index)
        # checked here too: a scorer may override score_partition (DSIR does)
        return checked_scores(self.scorer.name, table,
                              self.scorer.score_partition(self.corpus, index, table))


@dataclass(frozen=True)
class _StoredPart:
    folder: str

    def __call__(self, index: int) -> pa.Table:
        return read_table(os.path.join(self.folder, part_name(index)))


@dataclass(frozen=True)
class _WriteOrReuse:
    """Score one partition unless its part file already exists (resume)."""

    task: Any
    folder: str

    def __call__(self, index: int) -> tuple[int, bool, float, dict[str, Any]]:
        path = os.path.join(self.folder, part_name(index))
        if os.path.exists(path):
            table = read_table(path)
            return table.num_rows, True, 0.0, summarize_scores(table)
        start = time.perf_counter()
        table = self.task(index)
        write_table(table, path)
        return table.num_rows, False, time.perf_counter() - start, summarize_scores(table)


class Scores:
    """Scores of a corpus, partition-aligned with it; lazy until computed or written."""

    def __init__(self, name: str, corpus: Corpus, task: Any, description: dict[str, Any]):
        self.name = name
        self.corpus = corpus
        self.task = task
        self.description = description
        self.stats: dict[str, Any] = {}
        # per-partition summaries for selection, when the store was written in this process
        self.summaries: list[dict[str, Any]] | None = None

    @property
    def npartitions(self) -> int:
        return self.corpus.npartitions

    def partition(self, index: int) -> pa.Table:
        return self.task(index)

    def delayed(self, fn: Any = None) -> list[Any]:
        """One Dask task per partition computing ``fn(scores_table, index)`` (or the table)."""
        task = self.task if fn is None else _Then(self.task, fn)
        return partition_tasks(self.name, task, self.npartitions)

    def to_dask(self) -> Any:
        """The scores as a Dask DataFrame (Arrow-backed pandas partitions)."""
        import dask.dataframe as dd

        return dd.from_map(_ToPandas(self.task), range(self.npartitions),
                           enforce_metadata=False, label=f"scores-{self.name}")

    def write(self, folder: str | os.PathLike, runner: Runner = default_runner,
              overwrite: bool = False) -> Scores:
        """Write the score store (resuming finished parts) and return scores read from it.

        The folder is claimed first (new, empty or a score store of dataselect's, outside
        the pool); a store of another scorer, fit or pool is refused unless ``overwrite``,
        which deletes exactly the files that store listed.
        """
        with claim_output(folder, "scores", self.description, inputs=self.corpus.files,
                          overwrite=overwrite) as claimed:
            folder = claimed.path
            claimed.expect([STORE_MANIFEST] + [part_name(i) for i in range(self.npartitions)])
            remove_stale_temporaries(folder)
            write_json({"description": self.description, "versions": package_versions(),
                        "npartitions": self.npartitions},
                       os.path.join(folder, STORE_MANIFEST))
            writer = _WriteOrReuse(self.task, folder)
            tasks = partition_tasks(f"score-{self.name}", writer, self.npartitions)
            results = runner(f"score:{self.name}", tasks)
        stored = Scores.from_store(folder, self.corpus)
        stored.stats = {
            "rows": sum(r[0] for r in results),
            "partitions_reused": sum(1 for r in results if r[1]),
            "partitions_scored": sum(1 for r in results if not r[1]),
            "score_seconds": sum(r[2] for r in results),
        }
        stored.summaries = [r[3] for r in results]
        correlation = score_length_correlation(stored.summaries)
        if correlation is not None:
            stored.stats["score_length_spearman"] = round(correlation, 4)
        return stored

    @classmethod
    def from_store(cls, folder: str | os.PathLike, corpus: Corpus) -> Scores:
        folder = str(folder)
        manifest = read_json(os.path.join(folder, STORE_MANIFEST))
        description = manifest["description"]
        changed = corpus.changed_since(description.get("pool") or {})
        if changed:
            raise InputError(f"score store was computed on another version of the pool "
                             f"(differs: {', '.join(changed[:3])}); if you edited the pool "
                             "while the job ran, rerun with --overwrite once it stays put",
                             where=folder)
        missing = [i for i in range(corpus.npartitions)
                   if not os.path.exists(os.path.join(folder, part_name(i)))]
        if missing:
            raise InputError(f"score store lacks parts {missing[:5]}", where=folder)
        return cls(description["scorer"], corpus, _StoredPart(folder), description)


@dataclass(frozen=True)
class _Then:
    task: Any
    fn: Any

    def __call__(self, index: int) -> Any:
        return self.fn(self.task(index), index)


@dataclass(frozen=True)
class _ToPandas:
    task: Any

    def __call__(self, index: int) -> pd.DataFrame:
        return self.task(index).to_pandas(types_mapper=pd.ArrowDtype)
