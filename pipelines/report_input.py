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

from dataselect.errors import InputError
from dataselect.layout import MANIFEST_FILE, RUN_FILE, legacy_entries
from dataselect.output import read_json

RUN_REPORT_DIR = "report"
SELECTION_REPORT_DIR = ".report"


def read_report_input(out: str) -> tuple[dict[str, Any], str]:
    """The run record to report on, and the report's folder name under ``out``."""
    if os.path.exists(os.path.join(out, RUN_FILE)):
        from pipelines.run_recipe import read_run

        return read_run(out, "report on"), RUN_REPORT_DIR
    manifest = os.path.join(out, MANIFEST_FILE)
    if os.path.exists(manifest):
        return selection_as_run(out, read_json(manifest)), SELECTION_REPORT_DIR
    old = legacy_entries(out, depth=1)
    if old:
        raise InputError(f"was written by an older dataselect (its bookkeeping is named "
                         f"{', '.join(old)}): rerun the job into a new folder", where=out)
    raise InputError(f"no {RUN_FILE} or {MANIFEST_FILE} here: report on the output folder "
                     "of a finished `dataselect run` or `dataselect select`", where=out)


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
            "metrics": manifest.get("metrics", {}),
            "composition": manifest.get("composition")}
    return {"recipe": recipe, "tasks": {name: task},
            "scorers": [manifest["scores"]["scorer"]],
            "timings": manifest.get("timings", {})}
