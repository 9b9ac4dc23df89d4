"""``dataselect eval OUT/``: did the selection help? Train on it and on random rows, compare.

For every target task of a finished ``dataselect run`` that has held-out rows
(``targets.<task>.eval`` in the recipe), and for every seed, two small causal LMs are
trained with the same settings, steps, initialisation and batch order:

* ``selected``: on the rows the run chose for the task (``OUT/tasks/<task>/``);
* ``random``: on as many rows drawn uniformly from the pool with that seed.

Each model is scored on the task's held-out rows: mean response-token loss (the number
the LESS and DSIR papers' downstream gains come from at this scale), teacher-forced token
accuracy, and, where the task's answers are short (median at most ``em_max_tokens``
tokens), exact match of the greedy answer. Results are reported per seed, as mean and
standard deviation over seeds, and as the paired difference selected − random, so a user
sees both the gain and whether it exceeds seed noise.

Each (task, arm, seed) training is one Dask task: they run in parallel on the cluster
(local by default, ``--scheduler`` for a running one), each with its share of the cores
for torch. Results are written one JSON file per training under ``OUT/eval/runs/``, keyed
by everything that decides them, so an interrupted evaluation resumes and a changed
setting recomputes only what it changes.

The model is, by default, a small Llama built from a config (``vocab_size``,
``hidden_size``, ``layers``, ``heads``) with a byte-level BPE tokenizer trained on a
sample of the pool, initialised afresh with each seed; ``model=FOLDER`` fine-tunes a local
Hugging Face causal LM instead (the seed then sets only the batch order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from dataselect import checks
from dataselect.corpus import Corpus, read_corpus
from dataselect.errors import InputError, one_line
from dataselect.footer import RECORD_CONTENT_KEY, RECORD_JOB_KEY, seal_problem, sealed
from dataselect.outdir import OutputFolder, hold_lock, normalize, refuse_links
from dataselect.output import jsonable, read_json, write_json
from dataselect.sampling import sample_corpus
from dataselect.textspec import CHAT_COLUMN, RESPONSE_ROLE
from pipelines.cluster import dask_client, default_workers
from pipelines.progress import ProgressRunner
from pipelines.recipe import Recipe
from pipelines.recipe_attribution import selected_corpus
from pipelines.summary import print_summary

EVAL_DIR, RUNS_DIR, RESULTS_FILE = "eval", "runs", "results.json"
ARMS = ("selected", "random")
# a row budget for the tokenizer's training texts: enough for a 1k-token BPE vocabulary
TOKENIZER_SAMPLE_ROWS = 5_000


# the settings that only shape the model built here: a --model folder has its own size
MODEL_SHAPE = ("vocab_size", "hidden_size", "layers", "heads")


def refuse_shape_with_model(model: str | None, given: Iterable[str]) -> None:
    """A size setting beside ``model`` would never apply (the folder's model has its own
    size), yet results.json would record it as the model trained: refused, naming it."""
    shaped = [name for name in MODEL_SHAPE if name in set(given)]
    if model is not None and shaped:
        raise InputError(f"-p {shaped[0]} sizes the model built here, but --model {model} "
                         f"brings its own; drop -p {shaped[0]} (or --model)", field="--param")


@dataclass(frozen=True)
class EvalSettings:
    """How the comparison models are built, trained and scored."""

    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 120
    lr: float = 2e-3
    batch_size: int = 8
    max_length: int = 256
    tasks: tuple[str, ...] = ()
    model: str | None = None
    vocab_size: int = 1000
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    em_max_tokens: int = 32
    eval_batch_size: int = 16
    scheduler: str | None = None
    workers: int | None = None
    allow_overlap: bool = False

    def check(self) -> None:
        """Ranges from :mod:`dataselect.checks` (booleans are not counts, NaN is not a
        learning rate), so ``EvalSettings(steps=True)`` fails like ``--steps 0`` does."""
        if not self.seeds:
            raise InputError("give at least one seed", field="seeds")
        for seed in self.seeds:
            checks.check_seed(seed, "seeds")
        for name in ("seeds", "tasks"):  # a repeat would train (and count) twice
            values = list(getattr(self, name))
            if len(set(values)) != len(values):
                raise InputError(f"{name} repeat: {values}", field=name)
        for name in ("steps", "batch_size", "eval_batch_size", "hidden_size", "layers",
                     "heads"):
            checks.check_count(getattr(self, name), name)
        # a next-token loss needs two tokens; the byte alphabet alone is 256 tokens
        checks.check_count(self.max_length, "max_length", minimum=2)
        checks.check_count(self.vocab_size, "vocab_size", minimum=300)
        checks.check_count(self.em_max_tokens, "em_max_tokens", minimum=0)
        checks.check_positive(self.lr, "lr")
        if self.hidden_size % self.heads:
            raise InputError("hidden_size must be a multiple of heads", field="heads")
        checks.optional(checks.check_count, self.workers, "workers")
        checks.optional(checks.check_scheduler, self.scheduler, "scheduler")
        defaults = EvalSettings()
        refuse_shape_with_model(self.model, [name for name in MODEL_SHAPE
                                             if getattr(self, name) != getattr(defaults, name)])

    def recorded(self) -> dict[str, Any]:
        """The settings results.json records: those that applied (with ``model``, the
        folder's own size, not the built model's unused defaults)."""
        data = dataclasses.asdict(self)
        if self.model is not None:
            for name in MODEL_SHAPE:
                data.pop(name)
        return data

    def training_key(self) -> dict[str, Any]:
        """The settings that decide one training's result (not which seeds or tasks run,
        nor where)."""
        data = dataclasses.asdict(self)
        for name in ("seeds", "tasks", "scheduler", "workers", "allow_overlap"):
            data.pop(name)
        return data


@dataclass(frozen=True)
class TrainingJob:
    """One model: trained on ``train`` (id, text, response_spans), scored on ``held_out``.
    Runs on a Dask worker; everything it needs travels with it."""

    task: str
    arm: str
    seed: int
    base: str
    fresh_init: bool
    settings: EvalSettings
    train: pa.Table
    held_out: pa.Table
    torch_threads: int
    path: str
    key: str

    def __call__(self) -> dict[str, Any]:
        if os.path.exists(self.path):
            previous = _previous_result(self.path)
            if previous.get("key") == self.key:
                return {**previous, "reused": True}
        import torch

        torch.set_num_threads(self.torch_threads)
        started = time.perf_counter()
        model, tokenizer = _load_model(self.base, self.fresh_init, self.seed)
        s = self.settings
        from models.lm import fit_causal_lm

        losses = fit_causal_lm(model, tokenizer, self.train, s.steps, s.lr, s.batch_size,
                               s.max_length, self.seed)
        metrics = score_held_out(model, tokenizer, self.held_out, s.max_length,
                                 s.eval_batch_size, s.em_max_tokens)
        result = {"task": self.task, "arm": self.arm, "seed": self.seed, "key": self.key,
                  "train_rows": self.train.num_rows, "steps": s.steps,
                  "final_train_loss": round(float(np.mean(losses[-10:])), 6) if losses
                  else None, **metrics, "seconds": round(time.perf_counter() - started, 3)}
        write_json(sealed(result), self.path)  # a result edited since is trained again
        return {**result, "reused": False}


def unscored_notes(results: list[dict[str, Any]], max_length: int) -> list[str]:
    """One line per task some of whose held-out rows were not scored: a row whose response
    starts past ``max_length`` tokens has no response token to score, so the task's
    figures cover fewer rows than its eval file holds, which the reader should know."""
    unscored: dict[str, tuple[int, int]] = {}
    for result in results:
        left = result.get("held_out_rows_unscored", 0)
        if left:
            unscored[result["task"]] = (left, left + result["held_out_rows"])
    return [f"{left} of the {total} held-out rows of task {task!r} have no response token "
            f"within max_length={max_length} and are not scored; raise -p max_length to "
            "score them" for task, (left, total) in unscored.items()]


def _previous_result(path: str) -> dict[str, Any]:
    """A training's result from an earlier evaluation, without its seal; a damaged one (a
    killed write on a full disk) or one edited since it was written (its numbers would
    enter results.json as the training's) is trained again and replaced, as a missing one
    is."""
    try:
        result = read_json(path)
    except InputError:
        return {}
    if seal_problem(result) is not None:
        return {}
    return {k: v for k, v in result.items() if k != RECORD_CONTENT_KEY}


def _load_model(base: str, fresh_init: bool, seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.lm import load_causal_lm, load_tokenizer, pick_device

    device = pick_device(None)
    tokenizer = load_tokenizer(base)
    if fresh_init:
        torch.manual_seed(seed)
        config = AutoConfig.from_pretrained(base, local_files_only=True)
        model = AutoModelForCausalLM.from_config(config).to(device)
    else:
        model = load_causal_lm(base, device)
    return model, tokenizer


def score_held_out(model: Any, tokenizer: Any, held_out: pa.Table, max_length: int,
                   batch_size: int, em_max_tokens: int) -> dict[str, Any]:
    """Mean response-token loss and token accuracy over held-out rows (each row weighs
    the same), and exact match of greedy answers when the answers are short."""
    import torch

    from models.lm import per_example_loss, tokenize

    device = next(model.parameters()).device
    row_losses, row_accuracy = [], []
    with torch.inference_mode():  # the model is not trained after its evaluation
        for start in range(0, held_out.num_rows, batch_size):
            tokens = tokenize(tokenizer, held_out.slice(start, batch_size), max_length)
            tokens = tokens.to(device)
            logits = model(input_ids=tokens.input_ids,
                           attention_mask=tokens.attention_mask).logits
            keep = tokens.has_response
            losses = per_example_loss(logits, tokens)
            mask = tokens.loss_mask[:, 1:]
            hits = (logits[:, :-1].argmax(-1) == tokens.input_ids[:, 1:]) & mask
            accuracy = hits.sum(1) / mask.sum(1).clamp(min=1)
            row_losses += losses[keep].tolist()
            row_accuracy += accuracy[keep].tolist()
    if not row_losses:
        raise InputError("no held-out row has response tokens within max_length",
                         field="max_length")
    result: dict[str, Any] = {"loss": round(float(np.mean(row_losses)), 6),
                              "token_accuracy": round(float(np.mean(row_accuracy)), 6),
                              "held_out_rows": len(row_losses),
                              "held_out_rows_unscored": held_out.num_rows - len(row_losses)}
    from models.lm import has_chat_template

    # a plain-text row is all response: no prompt to answer (an empty one was a
    # traceback from generate), and a model is not asked to recite the row from nothing
    pairs = [(p, a) for p, a in zip(*split_prompts(held_out, tokenizer)) if p.strip()]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    templated = has_chat_template(tokenizer) and CHAT_COLUMN in held_out.column_names
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    if answers and statistics.median(lengths) <= em_max_tokens:
        result["exact_match"] = round(exact_match(model, tokenizer, prompts, answers, lengths,
                                                  batch_size, max_length,
                                                  add_special_tokens=not templated), 6)
    return result


def split_prompts(view: pa.Table, tokenizer: Any = None) -> tuple[list[str], list[str]]:
    """(prompt, reference answer) per row with a response: the text before the first
    response span and that span's text, or, for a model with a chat template, the
    conversation up to the first assistant turn rendered with the template's generation
    prompt and that turn's reply (the model answers in the format it was tuned on)."""
    from models.lm import has_chat_template
    from models.templates import render_template

    if tokenizer is not None and has_chat_template(tokenizer) and CHAT_COLUMN in \
            view.column_names:
        prompts, answers = [], []
        for turns in view[CHAT_COLUMN].to_pylist():
            first = next((i for i, t in enumerate(turns) if t["role"] == RESPONSE_ROLE), None)
            if first is None:
                continue
            prompts.append(render_template(tokenizer, turns[:first],
                                           add_generation_prompt=True))
            answers.append(turns[first]["content"])
        return prompts, answers
    prompts, answers = [], []
    for text, spans in zip(view["text"].to_pylist(), view["response_spans"].to_pylist()):
        if spans:
            first = spans[0]
            prompts.append(text[:first["start"]])
            answers.append(text[first["start"]:first["end"]])
    return prompts, answers


def exact_match(model: Any, tokenizer: Any, prompts: list[str], answers: list[str],
                lengths: list[int], batch_size: int, max_length: int,
                add_special_tokens: bool = True) -> float:
    """Share of rows whose greedy continuation, decoded, starts with the reference answer
    at a word boundary. Models are not asked where to stop (the tiny ones are trained on
    answers without an end token): each generates its answer's token count plus a few.
    Prompts rendered by a chat template carry their own special tokens
    (``add_special_tokens=False``)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    hits = 0
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            new = max(lengths[start:start + batch_size]) + 4
            encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                max_length=max(1, max_length - new),
                                add_special_tokens=add_special_tokens)
            encoded = {k: v.to(next(model.parameters()).device) for k, v in encoded.items()}
            with torch.no_grad():
                generated = model.generate(**encoded, max_new_tokens=new, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id)
            continuations = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:],
                                                   skip_special_tokens=True)
            for answer, said in zip(answers[start:start + batch_size], continuations):
                hits += answer_matches(answer, said)
    finally:
        tokenizer.padding_side = side
    return hits / max(len(prompts), 1)


def answer_matches(answer: str, said: str) -> bool:
    """``said`` starts with ``answer`` (both stripped) and the answer ends at a word
    boundary of ``said``, so 'ls' does not match 'lsblk'."""
    answer, said = answer.strip(), said.strip()
    if not answer or not said.startswith(answer):
        return False
    rest = said[len(answer):]
    return not rest or not (rest[0].isalnum() and answer[-1].isalnum())


def run_eval(out: str, settings: EvalSettings, console: Console | None = None
             ) -> dict[str, Any]:
    """Evaluate the run in ``out``; return (and write to ``OUT/eval/results.json``) the
    per-seed results and their summary per task."""
    console = console or Console()
    started = time.perf_counter()
    settings.check()
    # absolute: each training writes below it where it runs, and a --scheduler's workers
    # run in folders of their own (storage.absolute)
    out = normalize(out)
    _read_run(out)  # a folder that holds no finished run is refused before it is locked
    # every file written below is listed in the run folder's marker first: a file of the
    # user's at one of those names is refused, not replaced, and ``run --overwrite``
    # deletes the evaluation of the run it replaces
    with hold_lock(normalize(out)):
        folder = OutputFolder.reopen(out, ("recipe",))
        folder.expect([os.path.join(EVAL_DIR, RESULTS_FILE)])  # before the model is built
        jobs, base, fresh, run = plan_trainings(out, settings)
        folder.expect([os.path.relpath(job.path, out) for job in jobs])
        tasks = list(dict.fromkeys(job.task for job in jobs))
        workers = settings.workers or default_workers()
        with dask_client(settings.scheduler, workers, "auto", "processes") as client:
            runner = ProgressRunner(client)
            results = runner("eval:train", [dask.delayed(job, pure=False, traverse=False)()
                                              for job in jobs])
        summary = summarize_results(results)
        from models.lm import model_rendering

        report = {RECORD_JOB_KEY: run[RECORD_JOB_KEY],  # the run evaluated (report checks)
                  "settings": jsonable(settings.recorded()), "base_model": base,
                  "fresh_init": fresh, "rendering": model_rendering(base),
                  "runs": [{k: v for k, v in r.items() if k not in ("key", "reused")}
                           for r in results],
                  "summary": summary, "versions_of_run": run.get("versions", {})}
        # sealed: report refuses results edited since (footer.check_sealed)
        write_json(sealed(report), os.path.join(out, EVAL_DIR, RESULTS_FILE))
    print_eval_table(console, summary)
    for note in unscored_notes(results, settings.max_length):
        console.print(one_line(f"note: {note}"), soft_wrap=True, markup=False,
                      highlight=False)
    print_summary(console, "eval", runner.timings,
                  {"tasks": len(tasks), "seeds": len(settings.seeds), "trainings": len(jobs),
                   "reused": sum(1 for r in results if r["reused"])},
                  time.perf_counter() - started)
    return report


def plan_trainings(out: str, settings: EvalSettings
                   ) -> tuple[list[TrainingJob], str, bool, dict[str, Any]]:
    """Every (task, arm, seed) training of an evaluation, with the base model folder
    (built here when needed), whether it is initialised afresh, and the run's record."""
    settings.check()
    recipe, run = _read_run(out)
    refuse_links(out)  # results and models go below OUT: never through a planted link
    tasks = _tasks_to_evaluate(recipe, run, settings)
    pool = read_corpus(recipe.pool.paths, recipe.pool.text, recipe.pool.id_field,
                       max(1, int(recipe.pool.partition_mb * 2**20)))
    from pipelines.report_input import check_outputs_present
    from pipelines.run_recipe import check_inputs_unchanged

    # never train on part of a selection, nor on rows edited since (eval reads the parts
    # as a corpus, not through the footer check report uses)
    check_outputs_present(out, run, values=True)
    check_inputs_unchanged(out, recipe, pool, "evaluating")
    # every input is read, and refused, before the base model is built (minutes)
    held_outs = {task: _held_out(recipe, task) for task in tasks}
    selections = {task: _selected_view(out, recipe, task) for task in tasks}
    # one pool pass per seed: a prefix of a seeded sample is the sample of that size
    samples = {seed: _random_view(pool, max(s.num_rows for s in selections.values()), seed)
               for seed in settings.seeds}
    if not settings.allow_overlap:
        for task in tasks:
            rows = selections[task].num_rows
            check_held_out_apart(recipe, task, held_outs[task], {
                "target": _target_view(recipe, task), "selected rows": selections[task],
                **{f"random rows of seed {seed}": samples[seed].slice(0, rows)
                   for seed in settings.seeds}})
    folder = os.path.join(out, EVAL_DIR)
    os.makedirs(os.path.join(folder, RUNS_DIR), exist_ok=True)
    base, fresh = _base_model(pool, settings, folder)
    workers = settings.workers or default_workers()
    threads = max(1, default_workers() // workers) if not settings.scheduler else 1
    jobs = []
    for task in tasks:
        held_out, selected = held_outs[task], selections[task]
        for seed in settings.seeds:
            random_rows = samples[seed].slice(0, selected.num_rows)
            for arm, train in (("selected", selected), ("random", random_rows)):
                key = _job_key(settings, base, task, arm, seed, train, held_out)
                path = os.path.join(folder, RUNS_DIR, f"{task}.{arm}.seed{seed}.json")
                jobs.append(TrainingJob(task, arm, seed, base, fresh, settings, train,
                                        held_out, threads, path, key))
    return jobs, base, fresh, run


def _read_run(out: str) -> tuple[Recipe, dict[str, Any]]:
    from pydantic import ValidationError

    from dataselect.footer import check_record_in
    from dataselect.layout import RUN_FILE
    from pipelines.report_input import check_run_shape, damaged
    from pipelines.run_recipe import read_run

    run = read_run(out, "evaluate")
    path = os.path.join(out, RUN_FILE)
    check_run_shape(run, path)
    try:
        recipe = Recipe.model_validate(run["recipe"])
    except ValidationError as exc:  # edited by hand since the run: one line, not pydantic's
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise damaged(path, f"its recipe no longer validates ({where}: {first.get('msg')})"
                      ) from None
    # after validating: a setting edited by hand is named as such above, before this
    # line's "belongs to another job" (its settings are compared with the marker's)
    check_record_in(out, run, path)
    return recipe, run


def _tasks_to_evaluate(recipe: Recipe, run: dict[str, Any], settings: EvalSettings
                       ) -> list[str]:
    unknown = sorted(set(settings.tasks) - set(recipe.targets))
    if unknown:
        raise InputError(f"tasks {unknown} are not in the run; it has {sorted(recipe.targets)}",
                         field="--tasks")
    wanted = list(settings.tasks) or list(recipe.targets)
    without = [t for t in wanted if not recipe.targets[t].eval]
    if settings.tasks and without:
        raise InputError(f"tasks {without} have no held-out rows: add targets.<task>.eval "
                         "to the recipe", field="--tasks")
    tasks = [t for t in wanted if recipe.targets[t].eval]
    if not tasks:
        raise InputError("no target task of this run has held-out rows: add "
                         "targets.<task>.eval (a file of examples not in the target) to the "
                         "recipe", where=run.get("recipe_file") or None)
    empty = [t for t in tasks if run["tasks"][t]["selected"] == 0]
    if empty:
        raise InputError(f"tasks {empty} selected no rows; there is nothing to train on",
                         field="tasks")
    return tasks


def _held_out(recipe: Recipe, task: str) -> pa.Table:
    spec = recipe.targets[task]
    corpus = read_corpus(spec.eval, spec.text or recipe.pool.text, recipe.pool.id_field)
    return corpus.scoring_view(corpus.to_table(f"held-out rows of task {task!r}"),
                               response_spans=True)


def _target_view(recipe: Recipe, task: str) -> pa.Table:
    spec = recipe.targets[task]
    corpus = read_corpus(spec.paths, spec.text or recipe.pool.text, recipe.pool.id_field)
    return corpus.scoring_view(corpus.to_table(f"target rows of task {task!r}"))


def check_held_out_apart(recipe: Recipe, task: str, held_out: pa.Table,
                         others: dict[str, pa.Table]) -> None:
    """Refuse held-out rows whose text is also in the target or in a model's training rows.

    A held-out row a model trained on measures memorisation, not the selection; one in
    the target was what the selection matched, so the selected arm would win by
    construction. Rows are compared as the text a model reads (the rendered chat, prompt
    and response), with runs of white space as one space and the ends stripped, in
    Unicode's composed form: a held-out row that differed from a target row only by a
    trailing space passed as new (pass 18, ev17)."""
    held = dict(zip((_comparable(t) for t in held_out["text"].to_pylist()),
                    held_out["id"].to_pylist(), strict=True))
    for name, view in others.items():
        shared = [text for text in map(_comparable, view["text"].to_pylist()) if text in held]
        if shared:
            first = held[shared[0]]
            raise InputError(
                f"{len(set(shared))} held-out rows of task {task!r} are also in its {name} "
                f"(first: id {first!r}); the comparison would measure memorisation: remove "
                "them from the eval file, or pass -p allow_overlap=true to evaluate anyway",
                where=", ".join(recipe.targets[task].eval))


def _comparable(text: str | None) -> str | None:
    """A row's text as the overlap check compares it (:func:`check_held_out_apart`)."""
    if text is None:
        return None
    return " ".join(unicodedata.normalize("NFC", text).split())


def _selected_view(out: str, recipe: Recipe, task: str) -> pa.Table:
    """The task's chosen rows as training text (they carry the pool's columns)."""
    corpus = selected_corpus(out, recipe, task)
    if corpus is None:
        raise InputError(f"no selected rows of task {task!r} found", where=out)
    return corpus.scoring_view(corpus.to_table(f"selection of task {task!r}"),
                               response_spans=True)


def _random_view(pool: Corpus, rows: int, seed: int) -> pa.Table:
    """``rows`` pool rows drawn uniformly with ``seed``, as training text."""
    sample = sample_corpus(pool, rows, seed)
    if sample.num_rows < rows:
        raise InputError(f"the pool has fewer than {rows} rows", where=", ".join(pool.files))
    return pool.scoring_view(sample, response_spans=True)


def _base_model(pool: Corpus, settings: EvalSettings, folder: str) -> tuple[str, bool]:
    """The model folder every training starts from, and whether weights are drawn afresh
    per seed. Built once per settings and pool, then reused."""
    if settings.model:
        from models.lm import check_model_folder

        return check_model_folder(settings.model, "eval model"), False
    from models.lm import build_tiny_causal_lm

    wanted = jsonable({"vocab_size": settings.vocab_size, "hidden_size": settings.hidden_size,
                       "layers": settings.layers, "heads": settings.heads,
                       "max_positions": max(4 * settings.max_length, 1024),
                       "pool": pool.fingerprint()})
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:12]
    base = os.path.join(folder, f"base-{digest}")
    marker = os.path.join(base, "_built.json")
    if not os.path.exists(marker):
        sample = pool.scoring_view(sample_corpus(pool, TOKENIZER_SAMPLE_ROWS, 0))
        build_tiny_causal_lm(sample["text"].to_pylist(), base, settings.vocab_size,
                             settings.hidden_size, settings.layers, settings.heads,
                             max_positions=wanted["max_positions"], seed=0)
        write_json(wanted, marker)
    return base, True


def _job_key(settings: EvalSettings, base: str, task: str, arm: str, seed: int,
             train: pa.Table, held_out: pa.Table) -> str:
    ids = hashlib.sha256()
    for column in (train["id"], held_out["id"]):
        for value in column.to_pylist():
            ids.update(value.encode() + b"\0")
        ids.update(b"|")
    from models.lm import model_fingerprint, model_rendering

    data = {"settings": settings.training_key(), "base": os.path.abspath(base), "task": task,
            "arm": arm, "seed": seed, "rows": ids.hexdigest(),
            "model_files": model_fingerprint(base), "rendering": model_rendering(base)}
    return hashlib.sha256(json.dumps(jsonable(data), sort_keys=True).encode()).hexdigest()


METRICS = ("loss", "token_accuracy", "exact_match")


def summarize_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and metric: mean and sample standard deviation over seeds for each arm,
    and the paired difference selected − random (mean, std, seeds where selected did
    better: lower loss, higher accuracy)."""
    summary: dict[str, Any] = {}
    for task in dict.fromkeys(r["task"] for r in results):
        mine = [r for r in results if r["task"] == task]
        by_arm = {arm: {r["seed"]: r for r in mine if r["arm"] == arm} for arm in ARMS}
        seeds = sorted(set(by_arm["selected"]) & set(by_arm["random"]))
        entry: dict[str, Any] = {"seeds": seeds,
                                 "train_rows": by_arm["selected"][seeds[0]]["train_rows"]}
        for metric in METRICS:
            if not all(metric in by_arm[a][s] for a in ARMS for s in seeds):
                continue
            values = {a: [by_arm[a][s][metric] for s in seeds] for a in ARMS}
            diff = [x - y for x, y in zip(values["selected"], values["random"])]
            better = [d < 0 if metric == "loss" else d > 0 for d in diff]
            entry[metric] = {
                **{a: {"mean": _round(statistics.fmean(v)), "std": _std(v)}
                   for a, v in values.items()},
                "difference": {"mean": _round(statistics.fmean(diff)), "std": _std(diff)},
                "selected_better_seeds": int(sum(better)),
            }
        summary[task] = entry
    return summary


def _std(values: list[float]) -> float | None:
    return _round(statistics.stdev(values)) if len(values) > 1 else None


def _round(value: float) -> float:
    return round(float(value), 6)


def print_eval_table(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="dataselect eval: held-out target loss (lower is better), mean ± std "
                  "over seeds; wins: seeds where the selection's loss was lower",
                  title_justify="left")
    for column in ("task", "rows", "selected", "random", "Δ (sel − rand)", "wins",
                   "token acc. sel/rand", "exact sel/rand"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, entry in summary.items():
        loss = entry["loss"]
        n = len(entry["seeds"])
        acc = entry.get("token_accuracy")
        em = entry.get("exact_match")
        table.add_row(
            task, str(entry["train_rows"]), _pm(loss["selected"]), _pm(loss["random"]),
            _pm(loss["difference"]), f"{loss['selected_better_seeds']}/{n}",
            f"{acc['selected']['mean']:.3f}/{acc['random']['mean']:.3f}" if acc else "-",
            f"{em['selected']['mean']:.3f}/{em['random']['mean']:.3f}" if em else "-")
    console.print(table)


def _pm(stats: dict[str, Any]) -> str:
    std = stats["std"]
    return f"{stats['mean']:.4f}" + ("" if std is None else f" ± {std:.4f}")
