"""The ``dataselect`` command line.

    dataselect select --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --k 10000 --out out/
    dataselect score  --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --out out/
    dataselect warmup --model M --pool pool.jsonl --text-field messages --out warm/
    dataselect features --scorer less -p model=M -p checkpoints=warm/epoch-1,... --input ...
    dataselect index build --features feats/ --out index/
    dataselect attribute --scorer less -p ... --index index/ --queries q.jsonl --out a.parquet

Errors a user can fix (bad input, conflicting output folder) are printed as one line naming
the file, line and field, with exit status 2; anything else is a bug and shows a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from rich.console import Console

from dataselect.corpus import DEFAULT_PARTITION_BYTES, read_corpus
from dataselect.errors import DataSelectError, InputError
from dataselect.featurize import SIDES
from dataselect.writer import DEFAULT_METRICS_SAMPLE
from pipelines.feature_jobs import (
    build_index,
    run_attribute_job,
    run_features_job,
    run_warmup_job,
    search_index,
    warmup_config,
)
from pipelines.jobs import (
    POLICIES,
    SCORES_DIR,
    WORKER_KINDS,
    SelectJob,
    build_scorer,
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
                     help="auto: importance_resample for dsir, top_k otherwise; round_robin: "
                          "each target example in turn takes its best row (embed with "
                          "-p per_target=true)")
    sel.add_argument("--format", choices=("parquet", "arrow"), default="parquet")
    sel.add_argument("--metrics-sample", type=float, default=DEFAULT_METRICS_SAMPLE,
                     help="share of the pool sampled for the KL-reduction metric")
    score = commands.add_parser("score", help="fit the scorer and write the score store only")
    _common(score)
    _feature_commands(commands)
    return parser


def _input_args(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, required=True, nargs="+", help=help)
    parser.add_argument("--text-field", default="text",
                        help="text column, 'messages' (chat) or 'prompt+completion'")
    parser.add_argument("--id-field", default="id",
                        help="id column; ids are derived as <file>:<row> when absent")


def _feature_commands(commands: Any) -> None:
    featurizers = sorted(n for n, cls in SCORERS.items() if hasattr(cls, "featurize_batch"))
    warm = commands.add_parser("warmup", help="LESS step 1: LoRA warmup on a pool sample, "
                               "one checkpoint (with Adam moments) per epoch")
    warm.add_argument("--model", required=True, help="local Hugging Face causal LM folder")
    _input_args(warm, "--pool", "pool files, folders or globs")
    warm.add_argument("--out", required=True, help="folder for the epoch-N checkpoints")
    warm.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                      help="warmup setting, e.g. -p fraction=0.05 -p lr=2e-5 -p rank=128")
    warm.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if "
                      "available)")

    feats = commands.add_parser("features", help="write pool or query features to a "
                                "feature store (resumable per partition)")
    feats.add_argument("--scorer", required=True, choices=featurizers)
    _input_args(feats, "--input", "files, folders or globs to featurize")
    feats.add_argument("--out", required=True, help="feature store folder")
    feats.add_argument("--side", choices=SIDES, default="pool",
                       help="pool (training examples) or query (examples to attribute)")
    feats.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE")
    feats.add_argument("--partition-mb", type=float, default=DEFAULT_PARTITION_BYTES / 2**20)
    feats.add_argument("--scheduler", default=None)
    feats.add_argument("--workers", type=int, default=None)
    feats.add_argument("--memory-limit", default="auto")

    index = commands.add_parser("index", help="build or search a FAISS index of features")
    actions = index.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="index a pool feature store")
    build.add_argument("--features", required=True, help="pool feature store folder")
    build.add_argument("--out", required=True, help="index folder")
    build.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default="flat",
                       help="flat: exact cosine (default); ivf/hnsw: approximate, faster")
    build.add_argument("--nlist", type=int, default=None, help="ivf lists (default 4*sqrt(n))")
    build.add_argument("--nprobe", type=int, default=16, help="ivf lists searched")
    build.add_argument("--hnsw-m", type=int, default=32)
    search = actions.add_parser("search", help="top-k rows for each query feature")
    search.add_argument("--index", required=True, help="index folder")
    search.add_argument("--queries", required=True, help="query feature store folder")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--out", required=True, help="Parquet file of (query_id, rank, "
                        "train_id, score) rows")

    attr = commands.add_parser("attribute", help="most influential training rows for query "
                               "examples, from the pool's index")
    attr.add_argument("--scorer", required=True, choices=featurizers)
    attr.add_argument("--index", required=True, help="index folder (dataselect index build)")
    _input_args(attr, "--queries", "query files, folders or globs")
    attr.add_argument("-k", type=int, default=10)
    attr.add_argument("--out", required=True, help="Parquet file of (query_id, rank, "
                      "train_id, score) rows")
    attr.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                      help="the same scorer parameters the index's features were made with")


def parse_params(scorer: str, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, converted to the type of the scorer's field of that name."""
    cls = SCORERS[scorer]
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    params: dict[str, Any] = {}
    for key, value in _pairs(pairs).items():
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


def run_feature_command(args: argparse.Namespace, console: Console) -> None:
    """The warmup, features, index and attribute commands."""
    if args.command == "warmup":
        pool = read_corpus(args.pool, args.text_field, args.id_field)
        run_warmup_job(args.model, pool, args.out, warmup_config(_pairs(args.param)),
                       args.device, console)
    elif args.command == "features":
        corpus = read_corpus(args.input, args.text_field, args.id_field,
                             max(1, int(args.partition_mb * 2**20)))
        featurizer = build_scorer(args.scorer, parse_params(args.scorer, args.param), 0)
        run_features_job(featurizer, corpus, args.out, args.side, args.scheduler,
                         args.workers, args.memory_limit, console)
    elif args.command == "index" and args.action == "build":
        build_index(args.features, args.out, args.kind, console, nlist=args.nlist,
                    nprobe=args.nprobe, hnsw_m=args.hnsw_m)
    elif args.command == "index":
        search_index(args.index, args.queries, args.k, args.out, console)
    else:
        queries = read_corpus(args.queries, args.text_field, args.id_field)
        featurizer = build_scorer(args.scorer, parse_params(args.scorer, args.param), 0)
        run_attribute_job(featurizer, queries, args.index, args.k, args.out, console)


def _pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"expected KEY=VALUE, got {pair!r}", field="--param")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        if args.command in ("warmup", "features", "index", "attribute"):
            run_feature_command(args, console)
            return 0
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
