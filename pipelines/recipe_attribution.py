"""Attribution as the last stage of a recipe (``attribution:``): for each task, which of
the rows it selected most influence its held-out rows.

Why a recipe stage and not a separate command per task: the question follows the
selection (did the rows we chose matter for what we want, and which ones), the rows and
the model are the recipe's own, and the result then lives beside the selection with the
same ownership, resume and refusal rules. Each task runs
:func:`pipelines.feature_jobs.write_influence`, the code of ``dataselect attribute
--method``, over the task's ``tasks/<task>/`` parts.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any

from rich.console import Console

from dataselect.corpus import Corpus, read_corpus
from dataselect.errors import one_line
from dataselect.layout import ATTRIBUTION_DIR, MANIFEST_FILE, TASKS_DIR
from dataselect.output import read_json
from pipelines.progress import StageTiming
from pipelines.recipe import Recipe


def selected_corpus(out: str, recipe: Recipe, task: str) -> Corpus | None:
    """The rows ``task`` chose (they carry the pool's columns), None when it chose none:
    its manifest counts no selected row, or it has no part.

    Why the manifest: a task that selected no rows still writes its parts (the schema,
    no row group), so looking for part files found them, and a recipe with
    ``attribution:`` failed every run with "no examples" and never wrote ``.run.json``,
    where such a task is skipped and said so."""
    task_folder = os.path.join(out, TASKS_DIR, task)
    manifest = os.path.join(task_folder, MANIFEST_FILE)
    if os.path.exists(manifest) and _selected(read_json(manifest)) == 0:
        return None
    suffix = "parquet" if recipe.output.format == "parquet" else "arrow"
    files = sorted(glob.glob(os.path.join(task_folder, f"part-*.{suffix}")))
    return read_corpus(files, recipe.pool.text, "id") if files else None


def _selected(manifest: dict[str, Any]) -> int | None:
    """A task manifest's ``counts.selected``, None when it holds no such count."""
    counts = manifest.get("counts")
    selected = counts.get("selected") if isinstance(counts, dict) else None
    return selected if isinstance(selected, int) and not isinstance(selected, bool) else None


def attribution_path(out: str, recipe: Recipe, task: str) -> str:
    """``attribution/<task>.parquet`` (top-k rows, every selected row per query where
    ``k`` is at least their number), or the dense folder ``attribution/<task>/`` for
    ``k: all`` only."""
    name = task if recipe.attribution.k == "all" else f"{task}.parquet"
    return os.path.join(out, ATTRIBUTION_DIR, name)


def run_attributions(recipe: Recipe, out: str, models: dict[str, str],
                     timings: list[StageTiming], console: Console) -> dict[str, Any]:
    """Attribute every task's held-out (or target) rows to its selected rows; returns
    what ``.run.json`` records per task. ``models``: the recipe's model names -> folders."""
    from attribution.settings import takes
    from pipelines.feature_jobs import build_attributor, write_influence

    spec = recipe.attribution
    given = {"model": models.get(spec.model, spec.model), "seed": recipe.seed}
    attributor = build_attributor(spec.method, {
        **{key: value for key, value in given.items() if takes(spec.method, key)},
        **spec.params})
    os.makedirs(os.path.join(out, ATTRIBUTION_DIR), exist_ok=True)
    record: dict[str, Any] = {}
    for task, target in recipe.targets.items():
        started = time.perf_counter()
        training = selected_corpus(out, recipe, task)
        if training is None:
            record[task] = {"skipped": "the task selected no rows"}
            console.print(one_line(f"note: attribution: {task}: skipped, the task selected "
                                   "no rows"), soft_wrap=True, markup=False, highlight=False)
            continue
        queries = read_corpus(target.eval if spec.queries == "eval" else target.paths,
                              target.text or recipe.pool.text, recipe.pool.id_field)
        path = attribution_path(out, recipe, task)
        done = write_influence(attributor, training, queries,
                               None if spec.k == "all" else spec.k, path, console,
                               summary=False, k_setting="attribution.k")
        record[task] = {"path": os.path.relpath(path, out), **done}
        timings.append(StageTiming(f"attribute:{spec.method}:{task}", done["queries"],
                                   time.perf_counter() - started))
    return record
