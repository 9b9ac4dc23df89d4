"""``dataselect run RECIPE.yaml``: a whole multi-task selection as one resumable batch job.

Stages, in one Dask client (a LocalCluster, or the recipe's scheduler):

1. models: build the small models a recipe asks for (``models: NAME: build:``) and LESS's
   LoRA warmup when the less scorer has no checkpoints; both are skipped when present;
2. per task and scorer: fit on the task's target, score the pool into
   ``tasks/<task>/.scores/<scorer>/`` (resumes finished parts); several scorers are
   combined into one score (z-scores or ranks);
3. select per task (or once over the best task score, for a global budget) and write
   ``tasks/<task>/`` (resumes finished parts);
4. write ``union/``: every chosen row once, with the tasks that chose it;
5. with ``attribution:``, attribute each task's held-out rows to the rows it chose
   (``attribution/<task>.parquet``; :mod:`pipelines.recipe_attribution`);
6. ``.run.json``, written last: the validated recipe, counts and timings.

LESS's pool gradient features do not depend on the task, so they are computed once into
``.features/less/`` and every task's scores are read from them. ``tasks/<task>/`` and
``union/`` are datasets (every reader sees their parts only); the root is not one, and its
own bookkeeping (``.run.json``, ``.models/``, ``.warmup/``, ``.features/``) is hidden too
(:mod:`dataselect.layout`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from dataselect import select, storage
from dataselect.combine import BEST_TASK, max_over_tasks, score_columns
from dataselect.corpus import Corpus, read_corpus
from dataselect.errors import InputError, first_names, one_line
from dataselect.features import check_feature_folder
from dataselect.fingerprint import keep_cache_out_of
from dataselect.footer import RECORD_JOB_KEY, job_digest
from dataselect.layout import (
    FEATURES_DIR,
    MODELS_DIR,
    RUN_FILE,
    SCORES_DIR,
    TASKS_DIR,
    UNION_DIR,
    WARMUP_DIR,
)
from dataselect.manifest import package_versions
from dataselect.outdir import (
    OutputFolder,
    check_claimable,
    claim_output,
    input_roots,
    naming_setting,
    remove_outputs,
)
from dataselect.output import jsonable, read_json, same_json, write_json
from dataselect.policies import Budget, choose_rows
from dataselect.sampling import sample_corpus
from dataselect.schemas import check_class_labels
from dataselect.scoring import (
    Scorer,
    Scores,
    blank_target_rows,
    needs_warmup,
    noting_blank_target_rows,
    plan_pool,
)
from dataselect.union import TASKS_COLUMN, split_selection, write_union
from dataselect.writer import ADDED_COLUMNS, output_schema
from pipelines.cluster import check_temporary_folder, dask_client
from pipelines.jobs import OUTPUT_REVISION, parsed_once
from pipelines.progress import ProgressRunner, StageTiming
from pipelines.recipe import Recipe, TinyModelSpec, absolute_paths, recipe_dict
from pipelines.recipe_attribution import run_attributions
from pipelines.summary import print_fit_details, print_summary
from scorers import SCORERS, build_scorer


def run_recipe(recipe: Recipe, recipe_file: str = "", overwrite: bool = False,
               console: Console | None = None, out_flag: bool = False) -> dict[str, Any]:
    """Run every stage of ``recipe``; return what is written to ``<out>/.run.json``.

    The refusals of the run's folders (its root, tasks, union, attribution files) name
    the setting that gave the folder: ``--out`` where ``out_flag`` says the command line
    gave it, else the recipe's ``output.path`` and its file. They said "choose another
    --out" to a user who had given none."""
    with naming_setting(output_setting(recipe_file, out_flag), "output.path"):
        return _run_recipe(recipe, recipe_file, overwrite, console or Console())


def output_setting(recipe_file: str, out_flag: bool = False) -> str:
    """How a refusal names the setting that gave a recipe's output folder."""
    if out_flag:
        return "--out"
    return f"output.path ({one_line(recipe_file)})" if recipe_file else "output.path"


def _run_recipe(recipe: Recipe, recipe_file: str, overwrite: bool,
                console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    timings: list[StageTiming] = []
    absolute_paths(recipe)  # before planning: a cluster's workers run in folders of their own
    # the fingerprint cache never lands in what the recipe reads or writes
    keep_cache_out_of([*recipe.pool.paths, *(p for t in recipe.targets.values() for p in t.paths),
                       recipe.output.path, *(m.path for m in recipe.models.values() if m.path)],
                      written=[recipe.output.path])
    # and neither do temporary files: refused now, before the output folder is claimed
    check_temporary_folder()
    pool = plan_pool(read_corpus(recipe.pool.paths, recipe.pool.text, recipe.pool.id_field,
                                 max(1, int(recipe.pool.partition_mb * 2**20))),
                     [SCORERS[name] for name in recipe.scorers])
    # columns the task outputs and the union would add, and what Parquet cannot store
    added = _added_columns(recipe)
    output_schema(pool, added, recipe.output.format, parse=False)
    if recipe.output.save_to_disk:
        from dataselect.hf import check_hf_schema

        check_hf_schema(pool)
    _check_feature_stores(recipe, pool)
    # each target read (and fingerprinted) once, before the claim: the task's fit, its
    # manifest and the final check all use this one reading
    targets = {task: _target_corpus(recipe, task) for task in recipe.targets}
    with _claim_output(recipe, pool, overwrite) as claimed:
        out = claimed.path
        _check_selection_folders(recipe, pool)
        claimed.expect([RUN_FILE])
        # a task the replaced run had and this recipe lacks: its old selection goes too
        remove_outputs(out, TASKS_DIR, set(_tasks_of(claimed.replaced)) - set(recipe.targets))
        params, folders = _prepare_models(recipe, pool, out, timings, console)
        # the pool parsed and hashed once for all tasks; deleted after the workers stop
        with parsed_once(pool, claimed) as kept, \
                dask_client(recipe.cluster.scheduler, recipe.cluster.workers,
                            recipe.cluster.memory_limit, _worker_kind(recipe, params)) as client:
            runner = ProgressRunner(client)
            task_scores, fits = {}, {}
            for task in recipe.targets:
                task_scores[task], fits[task] = _score_task(recipe, task, targets[task], kept,
                                                            params, out, runner, overwrite)
                if len(task_scores) == 1 and kept.parses_text():
                    # a JSONL pool's columns are known once its first pass kept it parsed
                    # (free to read now): refused before the next task's work
                    output_schema(kept, added, recipe.output.format, parse=False)
            selections = _select(recipe, kept, task_scores, runner)
            manifests = {task: _write_task(recipe, task, selection, fits[task], out, runner,
                                           overwrite)
                         for task, selection in selections.items()}
            union = write_union(selections, os.path.join(out, UNION_DIR),
                                recipe.output.format, runner, overwrite,
                                recipe.output.save_to_disk)
            attribution = (run_attributions(recipe, out, folders, timings, console)
                           if recipe.attribution is not None else None)
            run = _run_record(recipe, recipe_file, manifests, union, timings + runner.timings,
                              time.perf_counter() - started, attribution)
            run[RECORD_JOB_KEY] = job_digest(claimed.identity)
            _check_unchanged_since_claim(claimed.identity, recipe, pool)
            write_json(run, os.path.join(out, RUN_FILE))
    _print_tasks(console, run)
    print_summary(console, "run", timings + runner.timings,
                  {"rows_in": pool_rows(manifests), "union_selected": run["union"]["selected"],
                   "rows_in_2+_tasks": union["counts"]["overlap"]},
                  time.perf_counter() - started)
    print_fit_details(console, {f"{task}/{name}": fit for task, m in manifests.items()
                                for name, fit in m.get("fit", {}).items()})
    return run


def _run_record(recipe: Recipe, recipe_file: str, manifests: dict[str, dict[str, Any]],
                union: dict[str, Any], timings: list[StageTiming], total: float,
                attribution: dict[str, Any] | None = None) -> dict[str, Any]:
    """``.run.json``: written inside the cluster's lifetime, so a run killed while the
    cluster closes is complete and an identical rerun finds it finished."""
    return {
        **({"attribution": attribution} if attribution is not None else {}),
        "recipe": recipe_dict(recipe),
        "recipe_file": recipe_file,
        "tasks": {task: {"selected": m["counts"]["selected"], "path": f"{TASKS_DIR}/{task}",
                         "counts": m["counts"], "metrics": m.get("metrics", {}),
                         # the task folder's job: a task folder of another run put in its
                         # place is refused by report and eval, as a rerun refuses it
                         RECORD_JOB_KEY: m[RECORD_JOB_KEY],
                         **({"notes": m["notes"]} if m.get("notes") else {})}
                  for task, m in manifests.items()},
        "union": {"selected": union["counts"]["selected"], "path": UNION_DIR,
                  RECORD_JOB_KEY: union[RECORD_JOB_KEY],
                  "counts": union["counts"]},
        "scorers": list(recipe.scorers),
        "timings": {"total_seconds": round(total, 3),
                    "stages": [{"stage": t.stage, "tasks": t.tasks,
                                "seconds": round(t.seconds, 3)} for t in timings]},
        "versions": package_versions(),
    }


def read_run(out: str, verb: str) -> dict[str, Any]:
    """The ``.run.json`` of a finished run in ``out`` (for ``eval`` and ``report``)."""
    path = os.path.join(out, RUN_FILE)
    if os.path.exists(path):
        return read_json(path)
    if os.path.exists(os.path.join(out, "_run.json")):
        raise InputError("was written by an older dataselect (its bookkeeping is named "
                         "_run.json, now .run.json): rerun the recipe into a new folder",
                         where=out)
    raise InputError(f"no {RUN_FILE} here: {verb} the output folder of a finished "
                     "`dataselect run`", where=out)


def pool_rows(manifests: dict[str, dict[str, Any]]) -> int:
    return next(iter(manifests.values()))["counts"]["rows_in"]


def _target_files(recipe: Recipe) -> dict[str, list[dict[str, Any]]]:
    """Each task's target and held-out files, as fingerprinted in the run's marker."""
    return {task: read_corpus([*spec.paths, *spec.eval]).fingerprint()["files"]
            for task, spec in recipe.targets.items()}


def check_inputs_unchanged(out: str, recipe: Recipe, pool: Corpus, verb: str) -> None:
    """Refuse to ``verb`` a run whose pool, targets or held-out rows changed since it ran
    (as a rerun of the recipe would): its results would mix the selections made from the
    old inputs with the inputs as they are now. The run's marker fingerprints them all."""
    recorded = OutputFolder.reopen(out, ("recipe",)).identity or {}
    changed = _changed_inputs(recorded, recipe, pool)
    if changed:
        raise InputError(f"the recipe's inputs changed since the run ({first_names(changed)}):"
                         f" {verb} would mix selections made from the old inputs with the "
                         "new ones; rerun the recipe (with --overwrite) first (a file put "
                         "back by copying counts as changed: a file is known by its inode "
                         "and change time too)",
                         where=out)


def _check_unchanged_since_claim(identity: Any, recipe: Recipe, pool: Corpus) -> None:
    """Refuse to write ``.run.json`` when the pool, a target or held-out file changed at any
    moment since the run's marker fingerprinted them: the selections, the union and the
    attributions would hold rows the identity does not describe, and the same recipe rerun
    would be refused as another run (pass 13, g05). Each task's selection checks its own
    pool and target before its manifest; this covers the held-out rows too, and the
    moments between the tasks."""
    changed = _changed_inputs(identity if isinstance(identity, dict) else {}, recipe, pool)
    if changed:
        raise InputError(f"changed while the run ran ({first_names(changed)}); the output is "
                         "incomplete: rerun with --overwrite once the inputs stay put",
                         where=changed[0])


def _changed_inputs(recorded: dict[str, Any], recipe: Recipe, pool: Corpus) -> list[str]:
    """The pool, target and held-out files that differ now from the marker's record."""
    before = [*(recorded.get("pool") or {}).get("files", []),
              *[f for files in (recorded.get("targets") or {}).values() for f in files]]
    now = jsonable([*pool.current_fingerprint()["files"],
                    *[f for files in _target_files(recipe).values() for f in files]])
    known = {f.get("path"): f for f in jsonable(before)}
    return [f["path"] for f in now if known.get(f["path"]) != f]


def _check_feature_stores(recipe: Recipe, pool: Corpus) -> None:
    """Each feature store a recipe names (``scorers.<name>.features``) checked before any
    work, as a select job checks ``-p features``: it is claimed only when the pool is
    scored, after models, warmups and fits ran. A hidden folder of the run's is fine (its
    folder holds its stores, ``.features/<scorer>`` by default); its root, ``tasks/<task>``,
    ``union`` and the other folders the run writes are not: the store was written into a
    task's folder, and the run refused only then, naming neither setting nor store."""
    for name, given in recipe.scorers.items():
        folder = given.get("features")
        if SCORERS[name].pool_features and isinstance(folder, str):
            check_feature_folder(folder, recipe.output.path, [*pool.files, *pool.roots],
                                 setting=f"scorers.{name}.features",
                                 out_setting="output.path", recipe_scorer=name)


def _check_selection_folders(recipe: Recipe, pool: Corpus) -> None:
    """Each task's folder and the union checked as their claims will check them, once the
    run's folder is claimed (its own checks first: links, older layouts) and before any
    work: one that holds something else (a feature store an earlier run wrote there, a
    folder of the user's) is refused now, naming it, not after the models ran."""
    out = recipe.output.path
    if storage.is_remote(out):
        return
    inputs = [*pool.files, *pool.roots]
    folders = [(os.path.join(out, TASKS_DIR, task), "selection") for task in recipe.targets]
    for folder, kind in [*folders, (os.path.join(out, UNION_DIR), "union")]:
        if os.path.lexists(folder):
            check_claimable(folder, kind, inputs)
    if recipe.attribution is not None:
        from pipelines.feature_jobs import check_attributions_out
        from pipelines.recipe_attribution import attribution_path

        k = recipe.attribution.k
        for task in recipe.targets:
            path = attribution_path(out, recipe, task)
            if os.path.lexists(path):  # a user's file there, or a link: before any work
                check_attributions_out(path, None if k == "all" else k, [])


def _claim_output(recipe: Recipe, pool: Corpus, overwrite: bool) -> Any:
    """Claim the output folder before any work (outdir.claim_output): refused when it is
    foreign or overlaps an input, or holds a run of another recipe or of other inputs (a
    resumed run must have the same settings, or its parts would mix two jobs). The output
    path, cluster and recipe name may change between runs."""
    targets = [p for spec in recipe.targets.values()
               for p in [*spec.paths, *spec.eval]]
    identity = {"settings": _settings(recipe), "pool": pool.fingerprint(),
                "targets": _target_files(recipe), "output_revision": OUTPUT_REVISION}
    return claim_output(recipe.output.path, "recipe", identity,
                        inputs=input_roots([*recipe.pool.paths, *targets]),
                        overwrite=overwrite,
                        before_replacing=lambda: _check_selection_folders(recipe, pool))


def _added_columns(recipe: Recipe) -> tuple[str, ...]:
    """Every column the recipe's outputs add beside the pool's: ``score`` and ``rank``, the
    union's ``tasks``, and the ``score_<name>`` of each input its scores combine (the
    tasks under a global budget, else the scorers when there are several)."""
    if recipe.selection.scope == "global":
        combined = score_columns(list(recipe.targets))
    else:
        combined = score_columns(list(recipe.scorers)) if len(recipe.scorers) > 1 else ()
    return (*ADDED_COLUMNS, TASKS_COLUMN, *combined)


def _tasks_of(identity: Any) -> list[str]:
    """The task names a recipe output's identity (as :func:`_claim_output` records it)
    lists; none for another shape (no claim replaced, an older version's marker)."""
    settings = identity.get("settings") if isinstance(identity, dict) else None
    targets = settings.get("targets") if isinstance(settings, dict) else None
    return [str(name) for name in targets] if isinstance(targets, dict) else []


def _settings(recipe: Recipe) -> dict[str, Any]:
    data = recipe_dict(recipe)
    for key in ("name", "cluster"):
        data.pop(key, None)
    data["output"].pop("path", None)
    data["output"].pop("save_to_disk", None)  # adding it only converts finished parts
    # input paths resolved: the same pool spelled relative or absolute is the same run
    data["pool"]["paths"] = [storage.resolved(p) for p in data["pool"]["paths"]]
    for spec in data["targets"].values():
        spec["paths"] = [storage.resolved(p) for p in spec["paths"]]
        spec["eval"] = [storage.resolved(p) for p in spec.get("eval") or []]
    return data


def _worker_kind(recipe: Recipe, params: dict[str, dict[str, Any]]) -> str:
    """Threads only when every scorer runs in native code that releases the GIL."""
    if recipe.cluster.worker_kind != "auto":
        return recipe.cluster.worker_kind
    kinds = {build_scorer(name, dict(p), recipe.seed).local_workers
             for name, p in params.items()}
    return "threads" if kinds == {"threads"} else "processes"


def _prepare_models(recipe: Recipe, pool: Corpus, out: str, timings: list[StageTiming],
                    console: Console) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Scorer parameters with model names resolved to folders (building the models that
    are to be built) and LESS checkpoints filled in from a warmup when not given; and
    the folder of every named model."""
    folders = {}
    for name, spec in recipe.models.items():
        if spec.path is not None:
            folders[name] = spec.path
            continue
        started = time.perf_counter()
        folders[name], built = build_model(pool, spec.build, os.path.join(out, MODELS_DIR, name))
        timings.append(StageTiming(f"model:{name}" + ("" if built else " (reused)"), 1,
                                   time.perf_counter() - started))
    params = {}
    for scorer, given in recipe.scorers.items():
        resolved = dict(given)
        if isinstance(resolved.get("model"), str) and resolved["model"] in folders:
            resolved["model"] = folders[resolved["model"]]
        declared = SCORERS[scorer]
        if declared.pool_features:
            # pool features do not depend on the task: computed once, shared by every task
            resolved.setdefault("features", os.path.join(out, FEATURES_DIR, scorer))
        if needs_warmup(declared) and not resolved.get("checkpoints"):
            resolved["checkpoints"] = _warmup(recipe, pool, resolved["model"], out,
                                              timings, console)
        params[scorer] = resolved
    return params, folders


def build_model(pool: Corpus, spec: TinyModelSpec, folder: str) -> tuple[str, bool]:
    """A small Llama built from ``spec`` and trained on (a seeded sample of up to 20,000
    rows of) the pool's response tokens; reused when ``folder`` holds one built from the
    same spec and pool. Returns the model folder and whether it was built now."""
    from models.lm import build_tiny_causal_lm, train_causal_lm

    marker = os.path.join(folder, "_built.json")
    wanted = {"spec": spec.model_dump(), "pool": pool.fingerprint()}
    trained = os.path.join(folder, "trained")
    if os.path.exists(marker) and same_json(read_json(marker), jsonable(wanted)):
        return trained, False
    sample = sample_corpus(pool, 20_000, spec.seed)
    view = pool.scoring_view(sample, response_spans=True)
    texts = view["text"].to_pylist()
    blank = build_tiny_causal_lm(texts, os.path.join(folder, "blank"), spec.vocab_size,
                                 spec.hidden_size, spec.layers, spec.heads, seed=spec.seed)
    train_causal_lm(blank, view, trained, steps=spec.train_steps, lr=spec.lr,
                    batch_size=spec.batch_size, max_length=spec.max_length, seed=spec.seed)
    write_json(wanted, marker)
    return trained, True


def _warmup(recipe: Recipe, pool: Corpus, model: str, out: str, timings: list[StageTiming],
            console: Console) -> list[str]:
    """LESS step 1 (LoRA warmup on a share of the pool), once per output folder."""
    from pipelines.feature_jobs import run_warmup_job

    folder = os.path.join(out, WARMUP_DIR)
    config = recipe.warmup_config()
    config.check()
    marker = os.path.join(folder, "_done.json")
    wanted = jsonable({"config": config, "model": model, "pool": pool.fingerprint()})
    if os.path.exists(marker) and same_json(read_json(marker)["settings"], wanted):
        checkpoints = read_json(marker)["checkpoints"]
        if _readable_checkpoints(checkpoints):
            timings.append(StageTiming("warmup (reused)", len(checkpoints), 0.0))
            return checkpoints
    started = time.perf_counter()
    checkpoints = run_warmup_job(model, pool, folder, config, None, console)
    write_json({"settings": wanted, "checkpoints": checkpoints}, marker)
    timings.append(StageTiming("warmup", len(checkpoints), time.perf_counter() - started))
    return checkpoints


def _readable_checkpoints(paths: list[str]) -> bool:
    """Whether every checkpoint of a finished warmup still passes LESS's check; one
    damaged since is trained again by the warmup (which resumes from the ones before it)."""
    from models.lora_checkpoints import read_info

    try:
        for path in paths:
            read_info(path)
    except InputError:
        return False
    return True


@dataclass(frozen=True)
class TaskRunner:
    """A runner whose stage names (progress bars, timings) start with the task's name."""

    runner: ProgressRunner
    task: str

    def __call__(self, stage: str, tasks: Any, fold: Any = None) -> Any:
        return self.runner(f"{self.task}/{stage}", tasks, fold)

    def steps(self, stage: str, total: int) -> Any:
        return self.runner.steps(f"{self.task}/{stage}", total)


def _target_corpus(recipe: Recipe, task: str) -> Corpus:
    """The task's target rows as a corpus (planned and fingerprinted now)."""
    spec = recipe.targets[task]
    target = read_corpus(spec.paths, spec.text or recipe.pool.text, recipe.pool.id_field,
                         max(1, int(recipe.pool.partition_mb * 2**20)))
    # the target's files are read as one too (its label counts give the precision)
    check_class_labels(target.schemas(False))
    return target


def _score_task(recipe: Recipe, task: str, target: Corpus, pool: Corpus,
                params: dict[str, dict[str, Any]], out: str, runner: ProgressRunner,
                overwrite: bool) -> tuple[Scores, dict[str, Any]]:
    """Fit every scorer on the task's target and score the pool; one score per row."""
    runner = TaskRunner(runner, task)
    stored, fits = [], {}
    budget = recipe.budget_of(task)
    blank = blank_target_rows(target)
    for name in recipe.scorers:
        scorer: Scorer = build_scorer(name, dict(params[name]), recipe.seed, budget.k,
                                      budget.fraction)
        scorer.fit(target, pool, runner=runner)
        noting_blank_target_rows(scorer, blank)
        folder = os.path.join(out, TASKS_DIR, task, SCORES_DIR, name)
        stored.append(scorer.score(pool).write(folder, runner=runner, overwrite=overwrite,
                                               check_ids=True))
        scorer.check_unchanged()  # its model, as the fit fingerprinted it
        fits[name] = {"fit": scorer.fit_stats_, "store": stored[-1].stats}
    if len(stored) == 1:
        return stored[0], {"target": target, "scorers": fits}
    weights = [recipe.combine.weights.get(name, 1.0) for name in recipe.scorers]
    combined = select.combine(stored, recipe.combine.method, weights, runner=runner)
    return combined, {"target": target, "scorers": fits}


def _select(recipe: Recipe, pool: Corpus, task_scores: dict[str, Scores],
            runner: ProgressRunner) -> dict[str, select.Selection]:
    default_policy = recipe.default_policy()
    if recipe.selection.scope == "global":
        budget = recipe.selection
        best = max_over_tasks(task_scores)
        amount = Budget(budget.k, budget.fraction, budget.threshold, recipe.seed)
        chosen = choose_rows(pool, best, budget.policy, amount, default_policy, runner)
        return split_selection(chosen, BEST_TASK, list(task_scores), runner)
    selections = {}
    for task, scores in task_scores.items():
        budget = recipe.budget_of(task)
        selections[task] = choose_rows(
            pool, scores, recipe.selection.policy,
            Budget(budget.k, budget.fraction, budget.threshold, recipe.seed), default_policy,
            TaskRunner(runner, task))
    return selections


def _write_task(recipe: Recipe, task: str, selection: select.Selection, fit: dict[str, Any],
                out: str, runner: ProgressRunner, overwrite: bool) -> dict[str, Any]:
    """The task's chosen rows and manifest (KL reduction against the task's target)."""
    runner = TaskRunner(runner, task)
    manifest = selection.write(
        os.path.join(out, TASKS_DIR, task), fmt=recipe.output.format, target=fit["target"],
        runner=runner, overwrite=overwrite, metrics_sample=recipe.output.metrics_sample,
        save_to_disk=recipe.output.save_to_disk,
        extra_manifest={"task": task, "fit": {n: s["fit"] for n, s in fit["scorers"].items()},
                        "score_stores": {n: s["store"] for n, s in fit["scorers"].items()}},
    )
    return manifest


def _print_tasks(console: Console, run: dict[str, Any]) -> None:
    table = Table(title="dataselect run: tasks", title_justify="left")
    for column in ("task", "rows in", "eligible", "selected", "KL reduction"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, info in run["tasks"].items():
        counts, metrics = info["counts"], info["metrics"]
        kl = metrics.get("kl_reduction")
        table.add_row(task, str(counts["rows_in"]), str(counts["eligible"]),
                      str(counts["selected"]), "-" if kl is None else f"{kl:.4f}")
    table.add_row("union", "", "", str(run["union"]["selected"]), "")
    console.print(table)
    for task, info in run["tasks"].items():
        for note in info.get("notes", []):
            console.print(one_line(f"note: {task}: {note}"), soft_wrap=True, markup=False,
                          highlight=False)
