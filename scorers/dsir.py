"""DSIR: data selection by importance resampling on hashed n-grams (Xie et al. 2023).

Fit two bag-of-hashed-n-gram distributions, one on the target and one on the raw pool;
a document's log importance weight is the sum over its n-gram occurrences of
log p_target(bucket) − log p_raw(bucket). Sampling the pool without replacement with
probability proportional to the weights (``select.importance_resample``, Gumbel top-k)
is the paper's selection; ``top_k`` on the same scores is its deterministic variant.

Choices a user can make, each recorded in the manifest:

* ``tokenizer="fast"`` (default) hashes Polars-tokenised words with a vectorised hash;
  ``"reference"`` reproduces ``data-selection`` 1.0.3's features bucket for bucket (NLTK
  WordPunct tokens, SHA-256 buckets) for parity checks and migrations.
* ``fit_fraction``: the raw distribution is fitted on a seeded random sample of the pool
  (a per-id coin flip, so it does not depend on file order), not on its first rows. By
  default the fraction is chosen so that about ``fit_sample_mb`` MiB of pool text (16:
  some 4M tokens, hundreds per bucket) are fitted, and all of a smaller pool; the
  fraction used is recorded in ``fit_stats_`` and the manifest.
* ``smoothing``: pseudo-count added to every bucket before normalising; on top, log
  probabilities use the reference's +1e-8, so ``smoothing=0`` equals the reference.
* ``min_length``: documents with fewer word tokens are not selectable; they are marked
  ``filtered_by="dsir_min_length"`` and counted in the selection's report (the reference
  drops them silently, at 100 tokens by default).
* ``length_normalize``: divide the log weight by the number of n-grams, so long documents
  do not win by length alone (not in the paper; off by default).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from dataselect import checks, ngram_store
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import Runner, add_tuples, default_runner, partition_tasks, run_stage
from dataselect.metrics import ngram_distribution
from dataselect.ngrams import (
    MAX_BUCKETS,
    MAX_NGRAM,
    HashedNgrams,
    NgramHasher,
    TokenizerName,
    masked_counts,
)
from dataselect.sampling import sample_mask
from dataselect.scoring import FILTERED_BY, Scorer, with_text_columns

LOG_EPSILON = 1e-8
MIN_LENGTH_FILTER = "dsir_min_length"


@dataclass(frozen=True)
class _SampleCounts:
    """Per pool partition: bucket counts of a seeded sample of its rows."""

    corpus: Corpus
    hasher: NgramHasher
    fraction: float
    seed: int

    def __call__(self, index: int) -> tuple[np.ndarray, int, int]:
        table = self.corpus.read_partition(index)
        mask = sample_mask(table["id"], self.fraction, self.seed)
        rows = np.flatnonzero(mask)
        folder = self.corpus.ngram_dir
        if folder is not None:
            # the job keeps features for its later passes: hash every row, once per job
            chunks = ngram_store.load(folder, index, self.hasher)
            if chunks is None:  # this job's first fit on the pool
                chunks = ngram_store.hash_partition(self.hasher, self.corpus.texts(table),
                                                    folder, index)
            counts = masked_counts(chunks, [mask], self.hasher.num_buckets)[0]
            return counts, table.num_rows, len(rows)
        texts = self.corpus.texts(table.take(rows) if len(rows) < table.num_rows else table)
        return self.hasher.bucket_counts(texts), table.num_rows, len(rows)


@dataclass
class DSIR(Scorer):
    """Hashed n-gram importance weights. Score = log importance weight (higher = closer)."""

    name: ClassVar[str] = "dsir"
    default_policy: ClassVar[str] = "importance_resample"

    num_buckets: int = 10_000
    ngram: int = 2
    tokenizer: TokenizerName = "fast"
    fit_fraction: float | None = None
    fit_sample_mb: float = 16.0
    smoothing: float = 1.0
    min_length: int = 0
    length_normalize: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # one definition with NgramHasher's (dataselect.ngrams)
        checks.check_count(self.num_buckets, "num_buckets", maximum=MAX_BUCKETS)
        checks.check_count(self.ngram, "ngram", maximum=MAX_NGRAM)
        checks.optional(checks.check_fraction, self.fit_fraction, "fit_fraction")
        checks.check_positive(self.fit_sample_mb, "fit_sample_mb")
        # a negative pseudo-count makes negative probabilities and NaN log weights
        checks.check_nonnegative(self.smoothing, "smoothing")
        checks.check_count(self.min_length, "min_length", minimum=0)
        checks.check_seed(self.seed)
        self.hasher = NgramHasher(self.num_buckets, self.ngram, self.tokenizer)
        self.log_diff_: np.ndarray | None = None
        self.fit_stats_: dict[str, Any] = {}

    @property
    def local_workers(self) -> str:
        # the fast path runs in Polars, Arrow and NumPy, which release the GIL; the
        # reference tokenizer is a Python loop per token
        return "threads" if self.tokenizer == "fast" else "processes"

    def config(self) -> dict[str, Any]:
        return asdict(self)

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> DSIR:
        if pool is None:
            raise InputError("DSIR fits the raw distribution on the pool: pass pool=")
        target_counts, target_rows = np.zeros(self.num_buckets, np.int64), 0
        for table in target.iter_tables():
            target_counts += self.hasher.bucket_counts(target.texts(table))
            target_rows += table.num_rows
        if target_rows == 0:
            raise EmptyCorpusError("target holds no records", where=", ".join(target.files))
        if target_counts.sum() == 0:
            raise EmptyCorpusError("target texts hold no tokens", where=", ".join(target.files))

        fraction = self.fit_fraction or min(
            1.0, self.fit_sample_mb * 2**20 / max(pool.estimated_bytes(), 1))
        task = _SampleCounts(pool, self.hasher, fraction, self.seed)
        raw_counts, pool_rows, fitted_rows = run_stage(
            runner, "fit:dsir", partition_tasks("fit-dsir", task, pool.npartitions), add_tuples)
        # an empty pool also gives an empty sample: name the cause, not the sample size
        if pool_rows == 0:
            raise EmptyCorpusError("the pool holds no records", where=", ".join(pool.files))
        if fitted_rows == 0:
            raise EmptyCorpusError(f"the pool sample holds none of the pool's {pool_rows} "
                                   f"records at fit_fraction={fraction:.3g}; raise fit_fraction",
                                   where=", ".join(pool.files))
        if raw_counts.sum() == 0:
            raise EmptyCorpusError("the sampled pool texts hold no tokens",
                                   where=", ".join(pool.files))
        self.fit_from_counts(target_counts, raw_counts)
        self.fit_stats_ = {"fit_fraction": fraction, "target_rows": target_rows,
                           "pool_rows": int(pool_rows), "pool_rows_fitted": int(fitted_rows),
                           "target_ngrams": int(target_counts.sum()),
                           "pool_ngrams_fitted": int(raw_counts.sum())}
        return self

    def fit_from_counts(self, target_counts: np.ndarray, raw_counts: np.ndarray) -> DSIR:
        """Set the importance weights from bucket counts of the target and the raw pool."""
        target_probs = ngram_distribution(target_counts, self.smoothing)
        raw_probs = ngram_distribution(raw_counts, self.smoothing)
        self.log_diff_ = np.log(target_probs + LOG_EPSILON) - np.log(raw_probs + LOG_EPSILON)
        self.fingerprint_ = hashlib.sha256(self.log_diff_.tobytes()).hexdigest()[:16]
        return self

    def score_partition(self, corpus: Corpus, index: int, table: pa.Table) -> pa.Table:
        chunks = ngram_store.load(corpus.ngram_dir, index, self.hasher)
        if chunks is None:
            return super().score_partition(corpus, index, table)
        texts = corpus.texts(table)
        scores = self._scores(table["id"], chunks)
        return with_text_columns(scores, texts)

    def score_batch(self, batch: pa.Table) -> pa.Table:
        return self._scores(batch["id"], self.hasher.chunks(batch["text"]))

    def _scores(self, ids: pa.ChunkedArray, chunks: Iterable[tuple[int, HashedNgrams]]
                ) -> pa.Table:
        if self.log_diff_ is None:
            raise RuntimeError("DSIR scored before fit")
        scores, tokens = [], []
        for _, features in chunks:
            score = features.dot(self.log_diff_)
            if self.length_normalize:
                score = score / np.maximum(features.num_features(), 1)
            scores.append(score)
            tokens.append(features.num_tokens)
        score = np.concatenate(scores) if scores else np.zeros(0)
        num_tokens = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
        too_short = num_tokens < self.min_length
        filtered = pa.array(np.where(too_short, MIN_LENGTH_FILTER, None), pa.string())
        return pa.table({"id": ids, "score": score,
                         "num_tokens": num_tokens, FILTERED_BY: filtered})
