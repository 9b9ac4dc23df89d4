"""What ``dataselect report`` reads, in one shape whichever command wrote the folder.

A recipe run (``dataselect run``) records its tasks, scorers and settings in its run file;
a ``dataselect select`` output (or ``Selection.write``) records its one selection in its
manifest. The report draws both from the run file's shape, so every plot has one code
path: a select output reads as a run of one task, named after the folder, whose
selection is the folder itself (``path`` ``.``), with no union. A selection folder is a
dataset, so its report goes under a hidden name that dataset readers skip
(:mod:`dataselect.layout`); a run's root is no dataset and keeps a visible ``report/``.
"""

from __future__ import annotations

import os
from typing import Any

from dataselect.errors import InputError, first_names
from dataselect.footer import RECORD_JOB_KEY, check_parts, check_record_in, verified
from dataselect.layout import (
    FOLDER_NAME,
    MANIFEST_FILE,
    RUN_FILE,
    TASKS_DIR,
    UNION_DIR,
    legacy_entries,
)
from dataselect.outdir import recorded_kind, refuse_kind
from dataselect.output import damaged_file, read_json, read_table
from dataselect.records import RunRecord, SelectionManifest, check_record

RUN_REPORT_DIR = "report"
SELECTION_REPORT_DIR = ".report"
# the output folders a report goes into (outdir kinds): a recipe's root, a select job's or
# a Python selection's folder; the report's files are listed in their marker
REPORT_KINDS = ("recipe", "job", "selection")


def read_report_input(out: str) -> tuple[dict[str, Any], str]:
    """The run record to report on, and the report's folder name under ``out``."""
    if os.path.exists(os.path.join(out, RUN_FILE)):
        from pipelines.run_recipe import read_run

        run = read_run(out, "report on")
        check_run_record(out, run, os.path.join(out, RUN_FILE))
        return run, RUN_REPORT_DIR
    manifest = os.path.join(out, MANIFEST_FILE)
    if recorded_kind(out) == "union":
        # a union's manifest records no scorer or policy of its own: read as a selection's
        # it looked damaged, and the line said to delete a good run
        raise InputError("is a recipe run's union of its tasks' selections, which has no "
                         "report of its own: report on the run folder "
                         f"{os.path.dirname(os.path.abspath(out))} instead", where=out)
    # a score store, feature store, index...: named as what it is, not as an old layout
    refuse_kind(out, REPORT_KINDS, "a run or a selection", "the output folder of a "
                "finished `dataselect run` or `dataselect select`")
    if os.path.exists(manifest):
        record = read_manifest(manifest)
        check_record_in(out, record, manifest)  # this job's manifest, not another's
        _check_manifest(record, manifest)
        run = selection_as_run(out, record)
        check_record(run, RunRecord, manifest)  # the keys the report reads as a run's
        return run, SELECTION_REPORT_DIR
    old = legacy_entries(out, depth=1)
    if old:
        raise InputError(f"was written by an older dataselect (its bookkeeping is named "
                         f"{', '.join(old)}): rerun the job into a new folder", where=out)
    raise InputError(f"no {RUN_FILE} or {MANIFEST_FILE} here: report on the output folder "
                     "of a finished `dataselect run` or `dataselect select`", where=out)


def check_pool_unchanged(out: str, run: dict[str, Any]) -> None:
    """Refuse to report on a job whose pool changed (or went) since it ran, as a resumed
    job refuses: the report draws the pool, and would draw it as it is now beside
    selections and scores made from what it was. The job's manifest recorded the pool's
    content fingerprint; a selection written through the Python API records no pool
    settings to read it with, and its report reads nothing of the pool."""
    spec = run["recipe"].get("pool")
    recorded = _recorded_pool(out, run)
    if not spec or not recorded:
        return
    from dataselect.corpus import read_corpus

    try:
        pool = read_corpus(spec["paths"], spec["text"], spec["id_field"],
                           int(recorded["partition_bytes"]))
    except InputError as exc:
        raise InputError(f"cannot read the job's pool to check that it is unchanged "
                         f"({exc}); report from the folder the job ran in, with its pool "
                         "in place", where=out) from None
    changed = pool.changed_since(recorded)
    if changed:
        raise InputError(f"the pool changed since the job ran ({first_names(changed)}); "
                         "the report would draw it as it is now, not as the job read it: "
                         "rerun the job (with --overwrite) first", where=out)


def check_outputs_present(out: str, run: dict[str, Any], values: bool = False) -> None:
    """Refuse a run whose selections went missing or changed since it ran: each task's
    folder, the union, and every part their manifests list, which must be the parts that
    folder's job wrote (:func:`~dataselect.footer.check_parts`). The report would
    otherwise list a task it has no rows for, or draw plots from part of a selection, or
    from another job's rows, and exit 0.

    Each folder's manifest must name the job its marker records, and that job must be the
    one the run recorded for it: a task folder copied in whole from a run with other
    settings is consistent in itself, and only the run's record tells it apart.

    ``values``: also read every part whole and check the values its footer hashed (every
    column: a selection's text rewritten, footer kept), for a reader that takes the rows
    through another path than :func:`~dataselect.footer.verified` (``eval`` trains on
    them as a corpus)."""
    folders = [(task.get("path", os.path.join(TASKS_DIR, name)), task)
               for name, task in run["tasks"].items()]
    if "union" in run:
        folders.append((UNION_DIR, run["union"]))
    for relative, recorded in folders:
        folder = os.path.normpath(os.path.join(out, relative))
        manifest = os.path.join(folder, MANIFEST_FILE)
        if not os.path.isfile(manifest):
            raise InputError(f"is missing ({MANIFEST_FILE} not found) though the run wrote "
                             "it: restore it, or rerun the job", where=folder)
        record = read_manifest(manifest)
        check_record_in(folder, record, manifest)
        if recorded.get(RECORD_JOB_KEY) != record[RECORD_JOB_KEY]:
            raise InputError("holds the selection of another job than the one this run "
                             f"recorded for it in its {RUN_FILE}: it was copied in from "
                             "another run; restore it, or rerun the recipe with --overwrite",
                             where=folder)
        parts = (record.get("output") or {}).get("parts") or []
        missing = [p["file"] for p in parts
                   if not os.path.isfile(os.path.join(folder, p["file"]))]
        if missing:
            raise InputError(f"the parts {first_names(missing)} its manifest lists are "
                             "missing: restore them, or rerun the job", where=folder)
        check_parts(folder, parts)
        if values:
            for part in parts:
                path = os.path.join(folder, part["file"])
                verified(path, read_table(path))


def _recorded_pool(out: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """The pool's fingerprint as the job recorded it: in the manifest of its (first)
    selection, which a run's tasks share."""
    task = next(iter(run["tasks"].values()), None)
    if task is None:
        return None
    path = os.path.join(out, task.get("path", "."), MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    return (read_manifest(path).get("inputs") or {}).get("pool")


def read_manifest(path: str) -> dict[str, Any]:
    """A selection's ``.manifest.json`` (a select job's, a recipe task's, the union's),
    with the shape of every key the report reads checked (:mod:`dataselect.records`)."""
    record = read_json(path)
    check_record(record, SelectionManifest, path)
    return record


def damaged(path: str, what: str) -> InputError:
    """The one wording of a record dataselect wrote that reads back wrong (as
    :func:`dataselect.output.damaged_file` and :mod:`dataselect.records` say it)."""
    return damaged_file(path, what)


def _check_manifest(manifest: Any, path: str) -> None:
    """The fields of a selection's manifest the report reads have the types dataselect
    writes: a manifest edited into another shape is one line naming it, not a TypeError
    deep inside the report."""
    counts, scores = manifest.get("counts"), manifest.get("scores")
    if not isinstance(counts, dict) or not isinstance(counts.get("selected"), int):
        raise damaged(path, "its counts are not dataselect's (no whole 'selected' count)")
    if not isinstance(scores, dict) or not isinstance(scores.get("scorer"), str):
        raise damaged(path, "its scores record names no scorer")
    if not FOLDER_NAME.match(scores["scorer"]):  # it names the folder .scores/<scorer>
        raise damaged(path, f"its scorer {scores['scorer']!r} is not a scorer's name")
    for key in ("selection", "job", "metrics", "timings"):
        if not isinstance(manifest.get(key) or {}, dict):
            raise damaged(path, f"its {key!r} is not a mapping")
    check_metrics(manifest.get("metrics") or {}, path)


def check_metrics(metrics: dict[str, Any], path: str) -> None:
    """The report prints every metric as a number: one edited into text (``"abc"``) is a
    damaged record, not a format error deep in the page."""
    for name, value in metrics.items():
        if name.endswith("note") and isinstance(value, str):  # why a metric is missing
            continue
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, int | float)):
            raise damaged(path, f"its metric {name!r} is {value!r}, not a number")


def check_run_shape(run: Any, path: str) -> None:
    """The same for a recipe's run record (for ``report`` and ``eval``): tasks, scorers
    and the recipe as written."""
    if not isinstance(run, dict) or not isinstance(run.get("recipe"), dict):
        raise damaged(path, "it holds no recipe")
    check_record(run, RunRecord, path)
    tasks, scorers = run.get("tasks"), run.get("scorers")
    if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
        raise damaged(path, "its tasks are not dataselect's")
    if not isinstance(scorers, list) or not all(isinstance(n, str) for n in scorers):
        raise damaged(path, "its scorers are not a list of names")
    # names become folders the report reads (.scores/<scorer>, tasks/<task>): a name or a
    # path that leads elsewhere would make it read outside the run's folder
    for name in scorers:
        if not FOLDER_NAME.match(name):
            raise damaged(path, f"its scorer {name!r} is not a scorer's name")
    for name, task in tasks.items():
        metrics = task.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise damaged(path, f"its task {name!r} has metrics that are not a mapping")
        check_metrics(metrics, path)
        if not FOLDER_NAME.match(name) or task.get("path", f"{TASKS_DIR}/{name}") \
                != f"{TASKS_DIR}/{name}":
            raise damaged(path, f"its task {name!r} is not in {TASKS_DIR}/<task>")


def check_run_record(out: str, run: dict[str, Any], path: str) -> None:
    """The run record ``run`` (read from ``path`` in the run folder ``out``) has
    dataselect's shape (:func:`check_run_shape`) and is this run's own, not another run's
    copied in: the report would state that run's settings and numbers, and ``eval`` would
    train under them."""
    check_run_shape(run, path)
    check_record_in(out, run, path)


def selection_as_run(out: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """A selection's manifest as the run record of a one-task run."""
    name = os.path.basename(os.path.abspath(out)) or "selection"
    policy = dict(manifest.get("selection") or {})
    job = manifest.get("job") or {}
    recipe: dict[str, Any] = {"name": name, "selection": policy}
    if job.get("pool"):  # written by `dataselect select`: the pool can be read again
        recipe["pool"] = {"paths": job["pool"], "text": job["text_field"],
                          "id_field": job["id_field"],
                          "partition_mb": job["partition_bytes"] / 2**20}
    counts = manifest["counts"]
    task = {"selected": counts["selected"], "path": ".", "counts": counts,
            RECORD_JOB_KEY: manifest.get(RECORD_JOB_KEY),
            "metrics": manifest.get("metrics", {}),
            "composition": manifest.get("composition")}
    return {"recipe": recipe, "tasks": {name: task},
            "scorers": [manifest["scores"]["scorer"]],
            "timings": manifest.get("timings", {})}
