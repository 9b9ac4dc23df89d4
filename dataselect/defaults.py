"""Defaults and choices of job settings, in a module that imports nothing.

The command line shows these in ``--help`` and as argparse ``choices``; the modules that
use them (corpus, writer, featurize, the job runner) import them from here. Kept apart so
that building the argument parser loads no pandas, pyarrow or Dask: ``dataselect --help``
should answer at once, not after a second of imports.
"""

from __future__ import annotations

# one partition of input, before the job plans finer cuts for compute-bound scorers
DEFAULT_PARTITION_BYTES = 4 << 20
# share of the pool hashed for the KL-reduction metric of a selection, when the pool holds
# at least ten times METRICS_SAMPLE_MB MiB of text; a larger pool's sample holds about
# METRICS_SAMPLE_MB MiB (dataselect.writer.metrics_share)
DEFAULT_METRICS_SAMPLE = 0.1
METRICS_SAMPLE_MB = 64.0
# which side of an attribution a feature store holds
SIDES = ("pool", "query")
# selection policies by name (applied by dataselect.policies.POLICIES); a scorer declares one
# of them as its default_policy
SELECTION_POLICIES = ("top_k", "importance_resample", "round_robin")
# selection policies a job accepts; "auto" is the scorer's declared default_policy
POLICIES = ("auto", *SELECTION_POLICIES)
# local Dask workers; "auto" is what the scorer declares (Scorer.local_workers)
WORKER_KINDS = ("auto", "processes", "threads")
# a FAISS index's search settings, for the kinds they apply to (ivf, hnsw)
DEFAULT_NPROBE = 16
DEFAULT_HNSW_M = 32
