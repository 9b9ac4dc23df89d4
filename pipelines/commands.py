"""What each ``dataselect`` command does once its arguments are parsed.

Every command imports its own modules when it runs (:mod:`pipelines.cli` imports this
module at start-up, for ``parse_params``): a DSIR job never loads the feature, recipe or
model code, and ``dataselect --help`` loads none of it. Keeping the imports inside the
handlers is what keeps ``--help`` at about 0.2 s; tests/test_startup.py checks that the
cheap scorers' jobs import no torch, transformers, peft or faiss.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from dataselect import checks, storage
from dataselect.errors import InputError, one_line

if TYPE_CHECKING:
    from rich.console import Console

    from pipelines.evaluate import EvalSettings
    from pipelines.jobs import SelectJob


def run_command(args: argparse.Namespace, console: Console) -> None:
    """Run the parsed command (all but ``scorers``, which the parser module answers)."""
    check_utf8_args(args)
    local_path_args(args)
    check_flag_pairs(args)
    if args.command not in REMOTE_OUTPUT_COMMANDS:
        checks.check_local_output(getattr(args, "out", None), f"dataselect {args.command}")
    if args.command in ("warmup", "features", "index", "attribute"):
        run_feature_command(args, console)
    elif args.command in ("run", "eval", "report"):
        run_recipe_command(args, console)
    elif args.command == "model":
        run_model_command(args)
    else:
        run_job_command(args, console)


# the commands whose --out may be an object-store URL (dataselect.storage)
REMOTE_OUTPUT_COMMANDS = ("select", "score")
# index build's options, and the one --kind each applies to
INDEX_OPTIONS = {"nlist": "ivf", "nprobe": "ivf", "hnsw_m": "hnsw"}


def check_utf8_args(args: argparse.Namespace) -> None:
    """Every argument a user typed is UTF-8 text: a file name that is not (its bytes reach
    Python as lone surrogates) fails deep inside Arrow or Dask, whichever command reads it."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                checks.check_utf8_name(item, name)


# the arguments that name files or folders: every command takes the same spellings of a
# local path (a file: URL is the path it names), as select and recipes do
PATH_ARGS = ("out", "pool", "target", "input", "recipe", "features", "index", "queries",
             "model", "source")


def local_path_args(args: argparse.Namespace) -> None:
    """Turn path arguments into absolute paths, in place (:func:`dataselect.storage.
    absolute`): a ``file:`` URL into the path it names (``report file:///abs/out`` looked
    for a folder named ``file:``), a ``..`` after a symbolic link as the system reads it
    (``report L/../run`` locked the system's folder and read, joining names as text,
    another), and a relative path from this folder: a ``--scheduler``'s workers read
    ``--pool p`` and wrote ``--out o`` in the folders they run in. A model or source
    that names no local path stays a name (``smollm2``, a shortcut)."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [_local_path(item, name) for item in value])
        elif isinstance(value, str):
            setattr(args, name, _local_path(value, name))


# the arguments that may name something other than a local path (a model shortcut)
NAME_ARGS = ("model", "source")


# the arguments that name inputs a glob may give (read_corpus expands them)
SPEC_ARGS = ("pool", "target", "input", "queries")


def _local_path(value: str, name: str) -> str:
    text = storage.local_form(value)
    if name in NAME_ARGS and os.sep not in text and not os.path.lexists(text):
        return text  # a bare name that is no file here: a shortcut, or refused as missing
    return storage.absolute_spec(text) if name in SPEC_ARGS else storage.absolute(text)


def check_flag_pairs(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other, naming them as typed, before any work:
    each would otherwise be silently ignored (a threshold replaced ``--policy
    round_robin``; ``--workers`` means nothing to a running ``--scheduler``'s cluster). The
    Python API and recipes apply the same checks (:mod:`dataselect.checks`)."""
    if args.command == "select":
        checks.check_policy_budget(args.policy, {"k": args.k, "fraction": args.fraction,
                                                 "threshold": args.threshold}, prefix="--")
    if args.command == "index" and args.action == "build":
        for name, kind in INDEX_OPTIONS.items():
            if getattr(args, name) is not None and args.kind != kind:
                raise InputError(f"applies to --kind {kind} only, not {args.kind}",
                                 field=f"--{name.replace('_', '-')}")
    if args.command == "attribute" and args.pool:
        check_reads_pool(args.method)
    local = {f"--{flag.replace('_', '-')}": getattr(args, flag)
             for flag in ("workers", "memory_limit", "worker_kind") if hasattr(args, flag)}
    checks.check_cluster(getattr(args, "scheduler", None), local, "--scheduler")


def check_reads_pool(method: str) -> None:
    """``--pool`` is for a method that reads the pool's rows, not its features' index."""
    from attribution import ATTRIBUTIONS, pool_methods

    if ATTRIBUTIONS[method].reads != "pool":
        raise InputError(f"--method {method} reads the pool's features from --index; --pool "
                         f"is for --method {checks.or_list(pool_methods())}", field="--pool")


def run_job_command(args: argparse.Namespace, console: Console) -> None:
    """select and score."""
    from pipelines.jobs import SCORES_DIR, run_score_job, run_select_job

    job = job_from_args(args)
    if args.command == "select":
        run_select_job(job, console)
        out = one_line(job.out)
        console.print(f"wrote {out}/ (manifest: {out}/.manifest.json"
                      + (f"; datasets.load_from_disk: {out}/.hf" if job.save_to_disk
                         else "") + ")", markup=False)
    else:
        run_score_job(job, console)
        console.print(f"wrote {one_line(job.out)}/{SCORES_DIR}/{job.scorer}/", markup=False)


def parse_params(scorer: str, pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, typed and checked by the scorer's own fields (the same check a
    recipe's values and the Python API's keywords get, :mod:`dataselect.params`)."""
    from dataselect.params import settings_from_text
    from scorers import SCORERS

    # complete=False: the job adds its seed and budget, then checks them all (build_scorer)
    return settings_from_text(SCORERS[scorer], _pairs(pairs), scorer, complete=False)


def job_from_args(args: argparse.Namespace) -> SelectJob:
    from pipelines.jobs import SelectJob

    return SelectJob(
        scorer=args.scorer, pool=args.pool, target=args.target, out=args.out,
        k=getattr(args, "k", None), fraction=getattr(args, "fraction", None),
        threshold=getattr(args, "threshold", None), policy=getattr(args, "policy", "auto"),
        seed=args.seed, text_field=args.text_field, target_text_field=args.target_text_field,
        id_field=args.id_field, scorer_params=parse_params(args.scorer, args.param),
        output_format=getattr(args, "format", "parquet"),
        partition_bytes=checks.partition_bytes(args.partition_mb, "--partition-mb"),
        metrics_sample=getattr(args, "metrics_sample", None),
        scheduler=args.scheduler, workers=args.workers, memory_limit=args.memory_limit,
        worker_kind=args.worker_kind,
        overwrite=args.overwrite, save_to_disk=getattr(args, "save_to_disk", False),
    )


def run_model_command(args: argparse.Namespace) -> None:
    """``dataselect model import``: the folder's path on the first line (for scripts), then
    one summary line."""
    from models.importer import import_model, read_manifest

    def say(message: str) -> None:
        print(one_line(message), file=sys.stderr)

    folder = import_model(args.source, args.out, overwrite=args.overwrite, progress=say)
    manifest = read_manifest(folder) or {}
    # one line each (one_line): a folder named with a newline printed over two lines, and
    # a script reading the first line got half a path
    print(one_line(folder))
    parameters = manifest.get("parameters")
    size = f"{parameters / 1e6:.1f}M" if isinstance(parameters, (int, float)) else "?"
    print(one_line(f"{manifest.get('architecture', '?')}, {size} parameters "
                   f"({manifest.get('dtype', '?')}), converted in "
                   f"{manifest.get('seconds', '?')} s, chat template: "
                   f"{'yes' if manifest.get('chat_template') else 'no'}"))


def run_feature_command(args: argparse.Namespace, console: Console) -> None:
    """The warmup, features, index and attribute commands."""
    from attribution import ATTRIBUTIONS
    from dataselect.corpus import read_corpus
    from dataselect.outdir import check_claimable
    from pipelines import feature_jobs

    if args.command == "attribute" or (args.command == "index" and args.action == "search"):
        feature_jobs.refuse_dense_at_file_name(args.out, args.k)  # before any work
    if args.command == "warmup":
        from dataselect.checks import check_device, optional

        optional(check_device, args.device, "--device")  # before the pool is read
        pool = read_corpus(args.pool, args.text_field, args.id_field)
        feature_jobs.run_warmup_job(args.model, pool, args.out,
                                    feature_jobs.warmup_config(_pairs(args.param)),
                                    args.device, console)
    elif args.command == "features":
        corpus = read_corpus(args.input, args.text_field, args.id_field,
                             max(1, int(args.partition_mb * 2**20)))
        # before the scorer is built (it loads its model): a refused --out comes first
        check_claimable(args.out, "features", [*corpus.files, *corpus.roots])
        featurizer = _featurizer(args)
        feature_jobs.run_features_job(featurizer, corpus, args.out, args.side, args.scheduler,
                                      args.workers, args.memory_limit, console)
    elif args.command == "index" and args.action == "build":
        options = {name: getattr(args, name) for name in INDEX_OPTIONS
                   if getattr(args, name) is not None}
        feature_jobs.build_index(args.features, args.out, args.kind, console,
                                 args.overwrite, **options)
    elif args.command == "index":
        feature_jobs.search_index(args.index, args.queries, args.k, args.out, console)
    elif ATTRIBUTIONS[args.method].reads == "pool":
        if not args.pool or args.index or args.scorer:
            raise InputError(f"--method {args.method} takes --pool (and -p model=...), not "
                             "--index or --scorer", field="--pool")
        pool = read_corpus(args.pool, args.text_field, args.id_field)
        queries = read_corpus(args.queries, args.text_field, args.id_field)
        feature_jobs.run_influence_job(args.method, _pairs(args.param), pool, queries, args.k,
                                       args.out, console)
    else:
        if not args.scorer or not args.index:
            raise InputError(f"--method {args.method} needs --scorer and --index",
                             field="--index")
        queries = read_corpus(args.queries, args.text_field, args.id_field)
        # before the scorer is built (it loads its model): a refused --out comes first
        feature_jobs.check_attributions_out(args.out, args.k,
                                            [args.index, *queries.files, *queries.roots])
        featurizer = _featurizer(args)
        feature_jobs.run_attribute_job(featurizer, queries, args.index, args.k, args.out,
                                       console)


def _featurizer(args: argparse.Namespace) -> Any:
    """The scorer that computes the features, refused when it computes none."""
    from dataselect.featurize import Featurizer
    from scorers import SCORERS, build_scorer

    if not isinstance(SCORERS[args.scorer], Featurizer):
        able = sorted(n for n in SCORERS if isinstance(SCORERS[n], Featurizer))
        raise InputError(f"{args.scorer} computes no features; choose one of {able}",
                         field="--scorer")
    return build_scorer(args.scorer, parse_params(args.scorer, args.param), 0)


def run_recipe_command(args: argparse.Namespace, console: Console) -> None:
    """The run, eval and report commands."""
    if args.command == "run":
        from pipelines.recipe import load_recipe
        from pipelines.run_recipe import run_recipe

        out_flag = args.out is not None  # else the recipe's output.path names the folder
        recipe = load_recipe(args.recipe, {"output.path": args.out,
                                           "cluster.scheduler": args.scheduler,
                                           "cluster.workers": args.workers,
                                           "output.save_to_disk": args.save_to_disk})
        # the folder an error line names (a full disk, a file-size limit), as --out does
        args.out = recipe.output.path
        run_recipe(recipe, args.recipe, overwrite=args.overwrite, console=console,
                   out_flag=out_flag)
        console.print(f"wrote {one_line(recipe.output.path)}/ (datasets: tasks/<task>/ and "
                      "union/; record: .run.json)", markup=False)
    elif args.command == "eval":
        from pipelines.evaluate import run_eval

        run_eval(args.out, eval_settings(args), console)
    else:
        from pipelines.report import check_renders, write_report

        page = write_report(args.out, console)
        console.print(f"wrote {one_line(page)}", markup=False)
        if args.check:
            seen = check_renders(page)
            if seen["images_ok"] != seen["images_total"]:
                raise InputError(f"{seen['images_total'] - seen['images_ok']} of "
                                 f"{seen['images_total']} images did not render", where=page)
            console.print(f"rendered in headless Chromium: {seen['images_ok']} images")


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    from dataselect.params import settings_from_text
    from pipelines.evaluate import EvalSettings, refuse_shape_with_model

    flags = ("seeds", "steps", "tasks", "model", "scheduler", "workers")
    pairs = _pairs(args.param)
    given_as_flag = sorted(set(pairs) & set(flags))
    if given_as_flag:
        key = given_as_flag[0]
        raise InputError(f"give {key} with --{key}, not -p", field="--param")
    values: dict[str, Any] = settings_from_text(EvalSettings, pairs, "eval")
    refuse_shape_with_model(args.model or None, pairs)  # a default value too: not applied
    values["seeds"] = tuple(args.seeds)  # parsed and range-checked by argparse (_seed_list)
    if args.steps is not None:
        values["steps"] = args.steps
    if args.tasks:
        values["tasks"] = tuple(args.tasks)  # parsed by argparse (_comma_list)
    if args.model:
        values["model"] = args.model
    values["scheduler"], values["workers"] = args.scheduler, args.workers
    settings = EvalSettings(**values)
    settings.check()
    return settings


def _pairs(pairs: list[str] | None) -> dict[str, str]:
    """``-p KEY=VALUE`` flags (None when none were given) as a dict. A key given twice is
    refused: keeping the last silently would run with a value the user may not mean."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"expected KEY=VALUE, got {pair!r}", field="--param")
        if key in out:
            raise InputError(f"-p {key} is given twice ({out[key]!r} and {value!r}); "
                             "give it once", field="--param")
        out[key] = value
    return out
