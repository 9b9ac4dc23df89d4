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

import dataclasses
import functools
import math
import os
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dataselect import checks, storage
from dataselect.corpus import Corpus, as_corpus, compute_partition_bytes
from dataselect.defaults import SELECTION_POLICIES
from dataselect.duplicates import check_unique_ids, ids_folder, ids_names, write_id_hashes
from dataselect.errors import (
    DataSelectError,
    EmptyCorpusError,
    InputError,
    PluginError,
    ScorerContractError,
)
from dataselect.execution import Runner, default_runner, partition_tasks, run_stage
from dataselect.footer import PartOrigin, job_digest, reusable
from dataselect.manifest import package_versions
from dataselect.outdir import claim_output
from dataselect.output import (
    damaged_file,
    json_problem,
    part_name,
    read_json,
    read_schema,
    read_table,
    write_json,
    write_table,
)
from dataselect.params import check_booleans, field_types
from dataselect.rank_scale import ranks_names
from dataselect.sampling import LENGTH_STREAM, id_hashes, uniform
from dataselect.score_parts import FILTERED_BY, eligible_scores
from dataselect.topk import KeySpec, ladder_of

TEXT_BYTES = "text_bytes"
# filter reason of a row whose text renders as nothing: nothing to select
EMPTY_TEXT_FILTER = "empty_text"
# characters that render as nothing although Unicode files them as letters or symbols (the
# Hangul fillers, the blank Braille pattern), and the default-ignorable code points no
# category covers (U+2065, U+FFF0-U+FFF8, the tag and variation-selector plane U+E0000-
# U+E0FFF): a row of Hangul fillers looks empty and is as empty to a reader as spaces are
INVISIBLE = r"\x{115F}\x{1160}\x{3164}\x{FFA0}\x{2800}\x{2065}\x{FFF0}-\x{FFF8}\x{E0000}-\x{E0FFF}"
# a blank text: empty, or only whitespace (Z, and the ASCII spaces \s), control (Cc),
# format (Cf: zero-width spaces, a byte-order mark), nonspacing or enclosing marks (Mn, Me:
# combining accents with no letter to sit on, variation selectors, the grapheme joiner) and
# the invisible characters above. One regular expression (RE2, in pyarrow.compute), so
# every scorer, warmup and BADS decide blankness alike and by column, never row by row.
BLANK_TEXT = rf"^[\s\p{{Z}}\p{{Cc}}\p{{Cf}}\p{{Mn}}\p{{Me}}{INVISIBLE}]*$"
STORE_MANIFEST = "_manifest.json"
# rows in the score-length sample, spread over the partitions
LENGTH_SAMPLE = 100_000


def summarize_scores(table: pa.Table, npartitions: int = 1,
                     resample_seed: int | None = None) -> dict[str, Any]:
    """What selection needs of a score part, in a size that does not grow with its rows:
    row and eligible counts, rows removed per filter, the ladder of its scores
    (:func:`~dataselect.topk.ladder_of`, from which top-k finds its cutoff), the count,
    mean and sum of squared deviations of its eligible scores (which merge exactly into
    the pool's, :func:`merge_moments`) and the score-length sample (:func:`length_sample`).
    With ``resample_seed``, also the ladder of its Gumbel keys for that seed
    (``gumbel_ladder``), from which importance resampling starts without a pass of its
    own."""
    score, eligible, dropped = eligible_scores(table)
    kept = score[eligible]
    summary = {"rows": len(score), "eligible": len(kept), "dropped": dropped,
               "ladder": ladder_of(*KeySpec().ranked(table)),
               "moments": scaled_moments(kept)}
    if resample_seed is not None:
        summary["gumbel_ladder"] = (resample_seed,
                                    ladder_of(*KeySpec(resample_seed).ranked(table)))
    if TEXT_BYTES in table.column_names:
        summary["sample"] = length_sample(table, score, eligible, npartitions)
    return summary


def scaled_moments(values: np.ndarray) -> tuple[int, float, float, int]:
    """Count, mean and sum of squared deviations of ``values`` divided by ``2**exponent``,
    and that exponent: the power of two at or just above their largest magnitude, so the
    scaled values lie in [-1, 1] (dividing by a power of two is exact).

    Why scaled: a z-score does not depend on the scores' scale, but their moments in
    float64 did. Scores of ~1e-200 have squared deviations of ~1e-400, which underflow to
    0: the spread read 0 and the scorer was silently left out of a combine (every z-score
    ~0). Scores of ~1e303 overflow the sum of squares to inf (every z-score NaN). Scaled,
    the squares are at most 4 a value whatever the scale.

    Scores all equal give mean exactly that value (scaled) and 0 squares: no rounding of
    a sum makes a spread out of nothing."""
    count = len(values)
    if not count:
        return 0, 0.0, 0.0, 0
    low, high = float(values.min()), float(values.max())
    exponent = math.frexp(max(abs(low), abs(high)))[1]
    scaled = np.ldexp(values, -exponent)
    if low == high:
        return count, float(scaled[0]), 0.0, exponent
    mean = min(max(float(scaled.mean()), math.ldexp(low, -exponent)),
               math.ldexp(high, -exponent))
    return count, mean, float(((scaled - mean) ** 2).sum()), exponent


def mean_and_std(values: np.ndarray) -> tuple[float, float]:
    """``values.mean()`` and ``values.std()``, taken on the values divided by the power of
    two at or above their largest magnitude and multiplied back: the same numbers to the
    bit for ordinary scores (scaling by a power of two is exact), but scores of ~1e-200 no
    longer have a spread of 0 (their squared deviations underflowed) nor scores of ~1e303
    an infinite one. For z-scores taken in one array (``auto``'s candidates); a score
    store's partitions merge :func:`scaled_moments` instead."""
    if not len(values):
        return 0.0, 0.0
    exponent = math.frexp(float(np.abs(values).max()))[1]
    scaled = np.ldexp(np.asarray(values, np.float64), -exponent)
    return (math.ldexp(float(scaled.mean()), exponent),
            math.ldexp(float(scaled.std()), exponent))


def merge_moments(moments: Iterable[tuple[Any, ...]]) -> tuple[int, float, float, int]:
    """Count, mean and sum of squared deviations of several parts' values together (Chan,
    Golub and LeVeque's pairwise update), as if computed over all values at once: in the
    units of ``2**exponent`` (:func:`scaled_moments`), the largest part's exponent, so
    neither tiny nor huge scores leave the float range. A part's moments in its own units
    are brought to the common ones by powers of two (``math.ldexp``); a part whose
    values are far smaller than the largest then contributes its (negligible) squares as
    0, never an overflow. Moments of three numbers (count, mean, squares: summaries of
    scores computed by an earlier version, in unscaled units) are read as exponent 0."""
    parts = [(*m, 0) if len(m) == 3 else tuple(m) for m in moments]
    parts = [p for p in parts if p[0]]
    if not parts:
        return 0, 0.0, 0.0, 0
    exponent = max(p[3] for p in parts)
    count, mean, squares = 0, 0.0, 0.0
    for other_count, other_mean, other_squares, other_exponent in parts:
        shift = other_exponent - exponent
        other_mean = math.ldexp(other_mean, shift)
        other_squares = math.ldexp(other_squares, 2 * shift)
        total = count + other_count
        delta = other_mean - mean
        mean += delta * other_count / total
        squares += other_squares + delta * delta * count * other_count / total
        count = total
    return count, mean, squares, exponent


def length_sample(table: pa.Table, score: np.ndarray, eligible: np.ndarray,
                  npartitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and text lengths of at most ``max(64, ceil(LENGTH_SAMPLE / npartitions))``
    eligible rows, in pool order: those with the smallest seeded per-id uniform numbers
    (the same rows whatever runs the job), every eligible row when there are no more."""
    rows = np.flatnonzero(eligible)
    cap = max(64, -(-LENGTH_SAMPLE // max(npartitions, 1)))
    if len(rows) > cap:
        keys = uniform(id_hashes(table["id"].take(rows)), 0, LENGTH_STREAM)
        rows = np.sort(rows[np.argsort(keys, kind="stable")[:cap]])
    return score[rows], table[TEXT_BYTES].to_numpy()[rows].astype(np.int64)


CONTRACT = ("score_batch must return a pyarrow Table with one row per input row: 'id' (the "
            "batch's ids, in order) and 'score' (finite numbers; a row to leave out gets a "
            "reason in a 'filtered_by' column)")


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
    repeated = sorted({c for c in scores.column_names if scores.column_names.count(c) > 1})
    if repeated:
        raise broken(f"returned {', '.join(map(repr, repeated))} more than once")
    if missing:
        raise broken(f"returned no {' or '.join(map(repr, missing))} column (columns: "
                     f"{', '.join(scores.column_names) or 'none'})")
    _check_ids(scores["id"], batch["id"], broken)
    if scores["id"].type != batch["id"].type:  # equal ids of another type (large_string)
        scores = scores.set_column(scores.column_names.index("id"), "id", batch["id"])
    return _numeric_scores(scores, broken)


def _check_ids(ids: pa.ChunkedArray, expected: pa.ChunkedArray, broken: Any) -> None:
    """The ids, row for row, are the batch's: selection joins scores to rows by position.
    Ids of another type that casts to the batch's (``large_string``, dictionary-encoded)
    and equal it row for row are the batch's; :func:`checked_scores` then keeps the
    batch's own column, so the score store holds one id type whatever a plug-in returns."""
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
    """Scores that are numbers, none null, and all finite where the row is eligible: a NaN
    never compares, and an infinite score would rank first (or last) whatever the others
    are, and break the z-scores and moments that combining and selection compute. A row
    the scorer means to leave out is filtered (``filtered_by``), not scored -inf."""
    column = scores["score"]
    kind = column.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)
            or pa.types.is_decimal(kind)):
        raise broken(f"returned scores of type {kind}, not numbers")
    if not pa.types.is_floating(kind):
        # to the nearest double: an integer past 2**53 (a uint64 of 2**64 - 1) is rounded,
        # where a checked cast refused it
        column = column.cast(pa.float64(), safe=False)
        scores = scores.set_column(scores.column_names.index("score"), "score", column)
    eligible = (pc.is_null(scores[FILTERED_BY]) if FILTERED_BY in scores.column_names
                else pa.chunked_array([pa.repeat(True, scores.num_rows)]))
    bad = pc.and_(eligible, pc.invert(pc.is_finite(column)).fill_null(True))
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


# fit statistic: how many rows of the target are blank (:func:`blank_target_rows`)
TARGET_ROWS_BLANK = "target_rows_blank"


def blank_target_rows(target: Corpus) -> int:
    """How many of ``target``'s rows are blank (:data:`BLANK_TEXT`), read part by part;
    an :class:`EmptyCorpusError` naming the target when every row is.

    A target says what is wanted, and a blank one says nothing: DSIR fitted on it has no
    n-gram and fastText learns blankness as the wanted class, and both went on to rank
    the pool against nothing and exit 0. Jobs and recipes call this before any fit, so
    every scorer, plug-ins too, is spared it alike."""
    rows = blank = 0
    for table in target.iter_tables():
        texts = target.texts(table)
        rows += len(texts)
        blank += pc.sum(pc.match_substring_regex(texts, BLANK_TEXT)).as_py() or 0
    if rows and blank == rows:
        raise EmptyCorpusError(
            f"the target has no non-blank rows (all {rows} are empty or only whitespace, "
            "control, format or invisible characters); give a target with text",
            where=", ".join(target.files))
    return blank


def noting_blank_target_rows(scorer: Scorer, blank: int) -> None:
    """Record in ``scorer``'s fit statistics (the manifest's ``fit``) how many target
    rows were blank, when any were: they teach no scorer anything, and a user should see
    that part of their target was empty.

    Every job calls this after every fit, so it is also where the fit statistics a scorer
    left are checked: they go into the manifest as JSON, and a plug-in's mapping with a
    tuple key or its own object would otherwise fail there, after the work, as a
    traceback."""
    if not isinstance(scorer.fit_stats_, dict):
        raise PluginError(f"{plugin_label(type(scorer))} set fit_stats_ to a "
                          f"{type(scorer.fit_stats_).__name__}, not a mapping; the fault is "
                          "in the scorer, not in your data: tell its author")
    check_recordable(scorer.fit_stats_, type(scorer), "fit (its fit_stats_)",
                     identity=False)
    if blank:
        scorer.fit_stats_ = {**scorer.fit_stats_, TARGET_ROWS_BLANK: blank}


def score_length_correlation(summaries: list[dict[str, Any]]) -> float | None:
    """Spearman rank correlation between score and text length over the summaries'
    samples of eligible rows (:func:`length_sample`: every eligible row of a pool of up to
    64 per partition or ``LENGTH_SAMPLE`` in all; None when lengths are missing or fewer
    than 3 rows are eligible, or either is constant)."""
    if not summaries or any("sample" not in s for s in summaries):
        return None
    score = np.concatenate([s["sample"][0] for s in summaries])
    if len(score) < 3:
        return None
    length = np.concatenate([s["sample"][1] for s in summaries])
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


def taking_paths(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a scorer's ``fit``, ``start_fit`` or ``score``) with its corpus
    arguments taken as :func:`~dataselect.corpus.as_corpus` takes them: a path is read as a
    corpus, anything else that is no Corpus is a TypeError naming the argument. ``fit``'s
    ``pool`` may be None."""
    if getattr(method, "takes_paths", False):
        return method
    names = ("corpus",) if method.__name__ == "score" else ("target", "pool")

    @functools.wraps(method)
    def checked(self: Scorer, *args: Any, **kwargs: Any) -> Any:
        args = list(args)
        for position, name in enumerate(names):
            if position < len(args):
                args[position] = as_corpus(args[position], name, optional=name == "pool")
            elif name in kwargs:
                kwargs[name] = as_corpus(kwargs[name], name, optional=name == "pool")
        return method(self, *args, **kwargs)

    checked.takes_paths = True  # type: ignore[attr-defined]
    return checked


# the methods, properties and class methods through which dataselect calls a plug-in's
# own code (the Scorer contract, and a Featurizer's): each call is where a plug-in's
# exception becomes one PluginError line. Only these: a plug-in's own helpers may raise
# and catch exceptions among themselves.
PLUGIN_METHODS = ("fit", "start_fit", "score_batch", "score_partition", "config",
                  "fit_fingerprint", "describe", "local_workers", "scores_per_target",
                  "compute_bound", "featurize_batch", "feature_description", "save", "load")
# the methods whose results dataselect records as JSON (markers, manifests, the identity a
# resume compares): each result is checked in the same wrapper, so one that JSON cannot hold
# ({(1, 2): 3}) is one line naming the plug-in and the method, not a traceback later
RECORDED_RESULTS = frozenset({"config", "describe", "fit_fingerprint",
                              "feature_description"})
# and the plug-in's own construction (a job builds the scorer from -p values): a ValueError
# or TypeError there is its refusal of those settings, said as such
PLUGIN_CONSTRUCTION = ("__init__", "__post_init__")
_BUILTIN_PACKAGES = frozenset({"dataselect", "models", "scorers", "attribution", "pipelines"})


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is dataselect's own (its exceptions are bugs to report as such)."""
    return cls.__module__.partition(".")[0] in _BUILTIN_PACKAGES


@dataclass(frozen=True)
class PluginKind:
    """How a kind of plug-in is named in its errors: ``noun`` (``scorer``), and where a
    user finds the settings it takes (``settings_help``)."""

    noun: str
    settings_help: str


SCORER_PLUGIN = PluginKind("scorer", "dataselect scorers lists them")


def plugin_label(cls: type, kind: PluginKind = SCORER_PLUGIN) -> str:
    """How an error line names a class of ``kind``: ``scorer 'x'``, and for a plug-in its
    module and class too (``scorer 'x' (pkg.mod.Cls, a plug-in)``), for its author."""
    name = f"{kind.noun} {getattr(cls, 'name', cls.__name__)!r}"
    return name if is_builtin(cls) else (f"{name} ({cls.__module__}.{cls.__qualname__}, "
                                         "a plug-in)")


def reporting_plugin_errors(method: Callable[..., Any], kind: PluginKind = SCORER_PLUGIN,
                            owner: type | None = None) -> Callable[..., Any]:
    """A plug-in's ``method`` whose own exceptions become one :class:`PluginError` line
    naming the plug-in (``owner``, else the class the method is called on), its class and
    the method (its traceback kept for ``--verbose``), instead of a traceback through Dask
    that reads as dataselect's bug. dataselect's own errors and running out of memory
    pass through: they already have their one line."""
    if getattr(method, "reports_plugin_errors", False):
        return method

    @functools.wraps(method)
    def reporting(self: Any, *args: Any, **kwargs: Any) -> Any:
        cls = owner or (self if isinstance(self, type) else type(self))
        try:
            result = method(self, *args, **kwargs)
        except (DataSelectError, MemoryError):
            raise
        except (Exception, SystemExit) as exc:  # sys.exit() in a plug-in is its failure too
            import traceback

            plugin = plugin_label(cls, kind)
            if method.__name__ in PLUGIN_CONSTRUCTION and isinstance(exc, (ValueError,
                                                                           TypeError)):
                raise InputError(f"{plugin} refused its settings: {exc}; check its -p "
                                 f"values ({kind.settings_help})", field=kind.noun) from exc
            raise PluginError(
                f"{plugin} raised {type(exc).__name__} in {method.__name__}: {exc}; the "
                "fault is in the plug-in, not in your data: rerun with --verbose for its "
                "traceback and tell its author",
                "".join(traceback.format_exception(exc))) from exc
        if method.__name__ in RECORDED_RESULTS:
            check_recordable(result, cls, f"{method.__name__}()", kind)
        return result

    reporting.reports_plugin_errors = True  # type: ignore[attr-defined]
    return reporting


def check_recordable(value: Any, cls: type, what: str, kind: PluginKind = SCORER_PLUGIN,
                     identity: bool = True) -> None:
    """Refuse a value a plug-in (``cls``) handed over (``what``: ``config()``, its
    ``fit_stats_``) that dataselect records as JSON but JSON cannot hold as that value, in
    one line naming the plug-in and ``what``. A value that is part of a job's ``identity``
    (``config()``, ``describe()``, ...) must also be finite: JSON records NaN and both
    infinities alike (null), so two configs would be one job and the second would reuse
    the first's scores; fit statistics are a record only, where null says "no number"."""
    problem = json_problem(value, finite=identity)
    if problem is not None:
        raise PluginError(
            f"{plugin_label(cls, kind)} returned from {what} a value that cannot be recorded "
            f"as JSON ({problem}): keys must be text, values text, finite numbers, lists or "
            "mappings; the fault is in the plug-in, not in your data: tell its author")


def reporting_member(member: Any, kind: PluginKind = SCORER_PLUGIN,
                     owner: type | None = None) -> Any:
    """A plug-in class's ``member`` (a method, a property or a class or static method) with
    its code's exceptions reported by :func:`reporting_plugin_errors`; anything else (a
    plain attribute overriding a property) as it is."""
    if isinstance(member, property):
        return member.getter(reporting_plugin_errors(member.fget, kind, owner)) \
            if member.fget else member
    if isinstance(member, classmethod):
        return classmethod(reporting_plugin_errors(member.__func__, kind, owner))
    if callable(member) and not isinstance(member, (staticmethod, type)):
        return reporting_plugin_errors(member, kind, owner)
    return member


def _checking_booleans(post_init: Callable[[Any], None]) -> Callable[[Any], None]:
    """A scorer's own ``__post_init__``, after :meth:`Scorer.__post_init__`'s checks."""
    if getattr(post_init, "checks_booleans", False):
        return post_init

    @functools.wraps(post_init)
    def checked(self: Scorer) -> None:
        Scorer.__post_init__(self)
        post_init(self)

    checked.checks_booleans = True  # type: ignore[attr-defined]
    return checked


class Scorer(ABC):
    """Base class of every scorer. Subclasses set ``name`` and implement ``fit``,
    ``score_batch`` and ``config``; ``save``/``load`` pickle the fitted state.

    Every subclass's ``fit``, ``start_fit`` and ``score`` take paths where a corpus goes
    (:func:`taking_paths`, applied here once so that a plug-in's scorer gets it too)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("fit", "start_fit", "score"):
            if name in cls.__dict__:
                setattr(cls, name, taking_paths(cls.__dict__[name]))
        if "__post_init__" in cls.__dict__:
            cls.__post_init__ = _checking_booleans(cls.__dict__["__post_init__"])
        if not is_builtin(cls):
            for name in PLUGIN_METHODS + PLUGIN_CONSTRUCTION:
                if name in cls.__dict__:
                    setattr(cls, name, reporting_member(cls.__dict__[name]))

    def __post_init__(self) -> None:
        """A dataclass scorer's settings: booleans are booleans (a subclass's own
        ``__post_init__`` checks its ranges; this check runs before it, see
        ``__init_subclass__``)."""
        if dataclasses.is_dataclass(self):
            check_booleans(self)

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

    # What a fit leaves, read by jobs, recipes and auto (never with getattr):
    fingerprint_: str = "unfitted"
    """Identifies the fitted state (:meth:`fit_fingerprint`); ``fit`` sets it, from what
    it learned, so that stored scores of another fit are never reused."""

    @property
    def fit_stats_(self) -> dict[str, Any]:
        """What the fit measured, for the manifest (``fit``) and the summary (its
        ``tables`` and ``notes``); ``fit`` sets it. Empty, a dict of this scorer's own,
        until then: a default shared by every scorer could be filled by one of them."""
        return self.__dict__.setdefault("fit_stats_", {})

    @fit_stats_.setter
    def fit_stats_(self, value: dict[str, Any]) -> None:
        self.__dict__["fit_stats_"] = value

    @classmethod
    def compute_bound(cls) -> bool:
        """Whether scoring a row runs a model on it (a forward or backward pass), so that a
        pool this scorer scores is cut by compute (:func:`plan_pool`). By default, every
        scorer that needs a model; one that only looks up what its fit learned says no."""
        return cls.needs_model

    @property
    def scores_per_target(self) -> bool:
        """Whether its scores carry one score per target example (the ``target_scores``
        list column that the ``round_robin`` policy ranks by)."""
        return False

    @property
    def local_workers(self) -> str:
        """``processes`` (default) when scoring holds the GIL, ``threads`` when it runs in
        native code that releases it; the job runner sizes a local cluster by this."""
        return "processes"

    @abstractmethod
    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Scorer:
        """Learn from the target (and the pool when the method needs it); return self."""

    @taking_paths
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

    def check_unchanged(self) -> None:
        """Refuse to finish a job when a file the fit fingerprinted (a model folder)
        changed since; called once the pool is scored. Nothing to check by default."""
        return

    def fit_fingerprint(self) -> str:
        """Identifies the fitted state, so stored scores of another fit are never reused."""
        return str(self.fingerprint_)

    @taking_paths
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
        path = checks.check_path(path, "path")  # an int would be a file descriptor to open
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(self, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scorer:
        path = checks.check_path(path, "path")
        checks.check_regular_file(path)
        with open(path, "rb") as f:
            obj = pickle.load(f)
        if not isinstance(obj, cls):
            raise InputError(f"holds a {type(obj).__name__}, not a {cls.__name__}", where=str(path))
        return obj


class TakesWarmup:
    """Declares, by being a base of a scorer, that it trains on LoRA warmup ``checkpoints``
    of its ``model`` (LESS): a recipe runs the warmup when none are given. A capability of
    its own, not a flag of every Scorer: only LoRA-based scorers have checkpoints."""


def needs_warmup(cls: type) -> bool:
    """Whether scorer class ``cls`` takes LoRA warmup checkpoints (:class:`TakesWarmup`)."""
    return issubclass(cls, TakesWarmup)


def declared_problem(cls: type[Scorer]) -> str | None:
    """What scorer class ``cls`` declares that cannot hold, in words (None: nothing).

    Checked when a scorer is looked up (``scorers.SCORERS``), before any work: a plug-in
    declaring a policy no registry applies, or a need it has no parameter for, would
    otherwise fail mid-job or be silently ignored."""
    if cls.default_policy not in SELECTION_POLICIES:
        return (f"declares default_policy {cls.default_policy!r}; it must be one of "
                f"{', '.join(SELECTION_POLICIES)}")
    if needs_warmup(cls) and not cls.needs_model:
        return ("takes LoRA warmup checkpoints but declares needs_model False; a warmup "
                "trains a model")
    if not dataclasses.is_dataclass(cls):
        return None
    fields = field_types(cls)
    needs = {"needs_model": cls.needs_model, "takes_budget": cls.takes_budget,
             "pool_features": cls.pool_features, "TakesWarmup": needs_warmup(cls)}
    for declared, name in DECLARED_PARAMETERS:
        if needs[declared] and name not in fields:
            return f"declares {declared} but has no {name!r} parameter; add that field"
    return None


# (declaration, the parameter it needs): what jobs and recipes fill in or pass on
DECLARED_PARAMETERS = (("needs_model", "model"), ("takes_budget", "k"),
                       ("takes_budget", "fraction"), ("pool_features", "features"),
                       ("TakesWarmup", "checkpoints"))


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
    # called with (corpus, index, rows) on each partition scored (Scores.also_counting)
    also: Callable[[Corpus, int, pa.Table], None] | None = None

    def __call__(self, index: int) -> pa.Table:
        table = self.corpus.read_partition(index)
        # checked here too: a scorer may override score_partition (DSIR does)
        scores = checked_scores(self.scorer.name, table,
                                self.scorer.score_partition(self.corpus, index, table))
        if self.also is not None:
            self.also(self.corpus, index, table)
        return scores


# every column of a score part whose values its footer hashes, where it has them
# (dataselect.footer): selection reads a part whole, so checking them reads nothing more
HASHED_COLUMNS = ("id", "score", FILTERED_BY, TEXT_BYTES)


@dataclass(frozen=True)
class _StoredPart:
    """The parts of a score store, each refused unless it is the one the store wrote for
    its description (``job``, :func:`~dataselect.footer.job_digest`)."""

    folder: str
    description: dict[str, Any]
    job: str

    def __call__(self, index: int) -> pa.Table:
        return self.read(index)

    def read(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """Part ``index`` (all its columns, or ``columns``: :meth:`PartOrigin.read`)."""
        return PartOrigin(self.job, index).read(os.path.join(self.folder, part_name(index)),
                                                columns)

    def schema(self, index: int) -> pa.Schema:
        """The columns of part ``index``, from its metadata: what a pass that needs none
        of the partition's scores reads."""
        path = os.path.join(self.folder, part_name(index))
        schema = read_schema(path)
        PartOrigin(self.job, index).check(path, schema.metadata, None)
        return schema


@dataclass(frozen=True)
class _WriteOrReuse:
    """Score one partition unless its part file already exists (resume) and is the one
    this store wrote (:mod:`dataselect.footer`); another is refused, or with ``overwrite``
    scored again."""

    task: Any
    folder: str
    npartitions: int
    job: str
    overwrite: bool = False
    # where the duplicate-id check's first level goes (duplicates.write_id_hashes), written
    # here from the ids in hand, so that the check need not read the parts again
    ids: str | None = None
    resample_seed: int | None = None  # summarize_scores

    def __call__(self, index: int) -> tuple[int, bool, float, dict[str, Any]]:
        path = os.path.join(self.folder, part_name(index))
        origin = PartOrigin(self.job, index)
        reused = False
        if storage.exists(path):
            table = read_table(path)
            reused = reusable(lambda: origin.check_table(path, table), self.overwrite)
        start = time.perf_counter()
        if not reused:
            table = origin.stamp(self.task(index), HASHED_COLUMNS)
            write_table(table, path)
        seconds = 0.0 if reused else time.perf_counter() - start
        if self.ids is not None:
            write_id_hashes(self.ids, index, table["id"])
        return table.num_rows, reused, seconds, summarize_scores(table, self.npartitions,
                                                                  self.resample_seed)


def as_scores(value: Any, pool: Corpus, name: str = "scores") -> Scores:
    """``value`` as the Scores of ``pool``: itself, or the score store in the folder it
    names (:meth:`Scores.from_store`); anything else is a TypeError naming the argument."""
    if isinstance(value, Scores):
        return value
    if isinstance(value, str | os.PathLike):
        return Scores.from_store(value, pool)
    raise checks.wrong_type("Scores (scorer.score(pool), or a score store's folder)", value,
                            name)



def _store_description(manifest: dict[str, Any], path: str) -> dict[str, Any]:
    """A score store's description, refused in one line when edited into another shape.
    Checked by hand, not by :mod:`dataselect.records`' pydantic shapes: every selection
    job reads a store, and the cheap scorers' jobs import no pydantic (start-up)."""
    description = manifest.get("description")
    if not isinstance(description, dict):
        raise damaged_file(path, f"its 'description' holds {description!r:.60}, not a mapping")
    if not isinstance(description.get("scorer"), str):
        raise damaged_file(path, "its 'description.scorer' holds "
                                 f"{description.get('scorer')!r:.60}, not a scorer's name")
    if not isinstance(description.get("pool"), dict | None):
        raise damaged_file(path, "its 'description.pool' holds "
                                 f"{description.get('pool')!r:.60}, not a mapping")
    return description

class Scores:
    """Scores of a corpus, partition-aligned with it; lazy until computed or written."""

    def __init__(self, name: str, corpus: Corpus, task: Any, description: dict[str, Any]):
        self.name = name
        self.corpus = corpus
        self.task = task
        self.description = description
        self.stats: dict[str, Any] = {}
        # per-partition summaries for selection, when the store was written in this process
        # (small: counts, a ladder of ~64 scores, moments, a bounded sample; no row arrays)
        self.summaries: list[dict[str, Any]] | None = None
        # set once its ids were found unique across partitions (duplicates.check_unique_ids)
        self.ids_checked = False
        # the folder of every partition's sorted id hashes, when the pass that wrote the
        # store wrote them too (the duplicate-id check's first level; deleted by the check)
        self.ids_folder: str | None = None
        # True when this process wrote the store (Scores.write), which claimed its folder:
        # only then do the shuffles on the workers (the duplicate-id check, rank
        # combination) write their work files into it. A store given as an input is only
        # read, never written to: a user's file in it stays, and two selections reading
        # one store at once do not delete each other's files.
        self.owned = False

    @property
    def npartitions(self) -> int:
        return self.corpus.npartitions

    def partition(self, index: int) -> pa.Table:
        return self.task(index)

    def also_counting(self, count: Callable[[Corpus, int, pa.Table], None]) -> Scores:
        """These scores, with ``count(corpus, index, rows)`` called on each partition's
        rows in the task that scores them: a later pass that needs something of every row
        (the pool side of a selection's metrics, :class:`~dataselect.writer.PoolStats`)
        gets it from this pass, which reads every partition anyway, and reads only the
        partitions it needs. Scores already stored (read back, not computed) are returned
        unchanged."""
        if not isinstance(self.task, _ScoreTask):
            return self
        return Scores(self.name, self.corpus, replace(self.task, also=count), self.description)

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
              overwrite: bool = False, check_ids: bool = False,
              resample_seed: int | None = None) -> Scores:
        """Write the score store (resuming finished parts) and return scores read from it.

        The folder is claimed first (new, empty or a score store of dataselect's, outside
        the pool); a store of another scorer, fit or pool is refused unless ``overwrite``,
        which deletes exactly the files that store listed.

        ``check_ids``: also refuse ids repeated across partitions (``DuplicateIdError``),
        as selecting from the store would first. The pass that writes the parts has every
        partition's ids in hand and writes their sorted hashes as it goes, so the check
        does not read the store again (:func:`~dataselect.duplicates.check_unique_ids`;
        it deletes the hashes when done).

        ``resample_seed``: the seed of an importance resampling that will select from the
        store; the writing pass also ranks each partition by its Gumbel keys for that seed,
        which saves the selection a pass over the store.
        """
        folder = checks.check_path(folder, "folder")
        overwrite = checks.check_bool(overwrite, "overwrite")
        check_ids = checks.check_bool(check_ids, "check_ids")
        if resample_seed is not None:
            resample_seed = checks.check_seed(resample_seed, "resample_seed")
        with claim_output(folder, "scores", self.description,
                          inputs=[*self.corpus.files, *self.corpus.roots],
                          overwrite=overwrite) as claimed:
            folder = claimed.path
            claimed.expect([STORE_MANIFEST] + [part_name(i) for i in range(self.npartitions)]
                           + ids_names(self.npartitions) + ranks_names(self.npartitions))
            claimed.remove_temporaries()
            write_json({"description": self.description, "versions": package_versions(),
                        "npartitions": self.npartitions},
                       os.path.join(folder, STORE_MANIFEST))
            ids = ids_folder(folder) if check_ids else None
            writer = _WriteOrReuse(self.task, folder, self.npartitions,
                                   job_digest(self.description), overwrite, ids,
                                   resample_seed)
            tasks = partition_tasks(f"score-{self.name}", writer, self.npartitions)
            results = run_stage(runner, f"score:{self.name}", tasks)
        stored = Scores.from_store(folder, self.corpus)
        stored.ids_folder = ids
        stored.owned = True
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
        if check_ids:
            check_unique_ids(stored, runner)
        return stored

    @classmethod
    def from_store(cls, folder: str | os.PathLike, corpus: Corpus | str | os.PathLike
                   ) -> Scores:
        """The scores a store (``Scores.write``, ``dataselect score``) holds for the
        pool ``corpus`` (a Corpus or its path); refused when the pool changed since."""
        # absolute: its parts are read where tasks run (storage.absolute)
        folder = storage.absolute(checks.check_path(folder, "folder"))
        corpus = as_corpus(corpus, "corpus")
        path = os.path.join(folder, STORE_MANIFEST)
        if not storage.isfile(path):
            raise InputError(f"is not a score store (no {STORE_MANIFEST}): give the folder "
                             "Scores.write or dataselect score wrote", where=folder)
        parts = stored_parts(folder)
        description = parts.description
        changed = corpus.changed_since(description.get("pool") or {})
        if changed:
            raise InputError(f"score store was computed on another version of the pool "
                             f"(differs: {', '.join(changed[:3])}); if you edited the pool "
                             "while the job ran, rerun with --overwrite once it stays put",
                             where=folder)
        missing = _missing_parts(folder, corpus.npartitions)
        if missing:
            raise InputError(f"score store lacks parts {missing[:5]}", where=folder)
        return cls(description["scorer"], corpus, parts, description)


def stored_parts(folder: str) -> _StoredPart:
    """The parts of the score store in ``folder``, read back as its ``_manifest.json``
    describes them (the description its parts' footers name)."""
    path = os.path.join(folder, STORE_MANIFEST)
    description = _store_description(read_json(path), path)
    return _StoredPart(folder, description, job_digest(description))


def _missing_parts(folder: str, count: int) -> list[int]:
    """The partitions whose part file the store lacks (an object store: one listing, not a
    request per part)."""
    if storage.is_remote(folder):
        present = set(storage.names_below(folder))
        return [i for i in range(count) if part_name(i) not in present]
    return [i for i in range(count) if not os.path.exists(os.path.join(folder, part_name(i)))]


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
