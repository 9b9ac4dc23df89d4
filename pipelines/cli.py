"""The ``dataselect`` command line.

    dataselect select --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --k 10000 --out out/
    dataselect score  --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --out out/

Errors a user can fix (bad input, conflicting output folder) are printed as one line naming
the file, line and field, with exit status 2; anything else is a bug and shows a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from rich.console import Console

from dataselect.corpus import DEFAULT_PARTITION_BYTES
from dataselect.errors import DataSelectError, InputError
from dataselect.writer import DEFAULT_METRICS_SAMPLE
from pipelines.jobs import (
    POLICIES,
    SCORES_DIR,
    WORKER_KINDS,
    SelectJob,
    run_score_job,
    run_select_job,
)
from scorers import SCORERS


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", required=True, choices=sorted(SCORERS))
    parser.add_argument("--pool", required=True, nargs="+",
                        help="pool files, folders or globs (quote globs)")
    parser.add_argument("--target", required=True, nargs="+",
                        help="target files, folders or globs")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--text-field", default="text",
                        help="text column, 'messages' (chat) or 'prompt+completion'")
    parser.add_argument("--target-text-field", default=None,
                        help="text spec of the target if it differs from the pool's")
    parser.add_argument("--id-field", default="id",
                        help="id column; ids are derived as <file>:<row> when absent")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="scorer parameter, e.g. -p num_buckets=20000 (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partition-mb", type=float, default=DEFAULT_PARTITION_BYTES / 2**20,
                        help="target size of one partition of input, in MiB")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (default: local cluster)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local cluster workers (default: one per core)")
    parser.add_argument("--memory-limit", default="auto", help="per local worker, e.g. 4GiB")
    parser.add_argument("--worker-kind", choices=WORKER_KINDS, default="auto",
                        help="local cluster of worker processes or threads (auto: what the "
                             "scorer declares; DSIR's fast path runs in threads)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results of a different job in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataselect",
        description="Score a pool of training data against a target sample, select from it, "
                    "and write the selection as Parquet or Arrow with its manifest.")
    commands = parser.add_subparsers(dest="command", required=True)
    sel = commands.add_parser("select", help="score the pool and write the selected rows")
    _common(sel)
    budget = sel.add_mutually_exclusive_group(required=True)
    budget.add_argument("--k", type=int, help="number of rows to select")
    budget.add_argument("--fraction", type=float, help="share of eligible rows to select")
    budget.add_argument("--threshold", type=float, help="keep rows with score >= this")
    sel.add_argument("--policy", choices=POLICIES, default="auto",
                     help="auto: importance_resample for dsir, top_k otherwise")
    sel.add_argument("--format", choices=("parquet", "arrow"), default="parquet")
    sel.add_argument("--metrics-sample", type=float, default=DEFAULT_METRICS_SAMPLE,
                     help="share of the pool sampled for the KL-reduction metric")
    score = commands.add_parser("score", help="fit the scorer and write the score store only")
    _common(score)
    return parser


def parse_params(scorer: str, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, converted to the type of the scorer's field of that name."""
    cls = SCORERS[scorer]
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"expected KEY=VALUE, got {pair!r}", field="--param")
        if key not in types:
            raise InputError(f"{scorer} has no parameter {key!r}; known: {sorted(types)}",
                             field="--param")
        params[key] = _convert(value, str(types[key]), key)
    return params


def _convert(value: str, type_name: str, key: str) -> Any:
    if type_name.endswith(" | None"):
        if value.lower() in ("none", "auto"):
            return None
        type_name = type_name.removesuffix(" | None")
    try:
        if type_name == "bool":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if type_name == "int":
            return int(value)
        if type_name == "float":
            return float(value)
    except ValueError:
        raise InputError(f"{value!r} is not a valid {type_name}", field=key) from None
    return value


def job_from_args(args: argparse.Namespace) -> SelectJob:
    return SelectJob(
        scorer=args.scorer, pool=args.pool, target=args.target, out=args.out,
        k=getattr(args, "k", None), fraction=getattr(args, "fraction", None),
        threshold=getattr(args, "threshold", None), policy=getattr(args, "policy", "auto"),
        seed=args.seed, text_field=args.text_field, target_text_field=args.target_text_field,
        id_field=args.id_field, scorer_params=parse_params(args.scorer, args.param),
        output_format=getattr(args, "format", "parquet"),
        partition_bytes=max(1, int(args.partition_mb * 2**20)),
        metrics_sample=getattr(args, "metrics_sample", DEFAULT_METRICS_SAMPLE),
        scheduler=args.scheduler, workers=args.workers, memory_limit=args.memory_limit,
        worker_kind=args.worker_kind,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        job = job_from_args(args)
        if args.command == "select":
            run_select_job(job, console)
            console.print(f"wrote {job.out}/ (manifest: {job.out}/_manifest.json)")
        else:
            run_score_job(job, console)
            console.print(f"wrote {job.out}/{SCORES_DIR}/{job.scorer}/")
    except DataSelectError as exc:
        print(f"dataselect: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
