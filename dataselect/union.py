"""Several selections from one pool, as one dataset and as one selection per label.

A multi-task job chooses rows per target task; the training set a user takes away is
usually their union, and they need to see which task wanted each row (to reweight, or to
drop a task later without rerunning). :func:`write_union` writes that union in the pool's
partition order with a ``tasks`` list column, resumable part by part like every other
output. :func:`split_selection` goes the other way for a global budget: one selection
whose rows are handed to the task (label) they scored best for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dataselect.corpus import Corpus
from dataselect.errors import InputError
from dataselect.execution import Runner, default_runner, partition_tasks, run_stage
from dataselect.footer import (
    RECORD_JOB_KEY,
    PartOrigin,
    job_digest,
    reusable,
)
from dataselect.hf import datasets_notes, write_hf
from dataselect.layout import MANIFEST_FILE
from dataselect.outdir import claim_output, refuse_foreign_data
from dataselect.output import (
    OutputFormat,
    jsonable,
    part_name,
    write_json,
    write_table,
)
from dataselect.select import Selection
from dataselect.writer import output_rows, output_schema

TASKS_COLUMN = "tasks"
# the column a union adds: the labels of the selections that chose the row
TASKS_FIELD = pa.field(TASKS_COLUMN, pa.list_(pa.string()))


@dataclass(frozen=True)
class _WriteUnionPart:
    pool: Corpus
    chosen: dict[str, dict[int, np.ndarray]]  # label -> partition -> sorted positions
    out: str
    fmt: OutputFormat
    schema: pa.Schema
    # the digest of the folder's identity (dataselect.footer), and whether a finished part
    # that is not the one it wrote is written again (else refused)
    job: str
    overwrite: bool = False

    def __call__(self, index: int) -> dict[str, Any]:
        path = os.path.join(self.out, part_name(index, self.fmt))
        mine = {label: parts.get(index, np.empty(0, np.int64))
                for label, parts in self.chosen.items()}
        rows = np.unique(np.concatenate([np.empty(0, np.int64), *mine.values()]))
        origin = PartOrigin(self.job, index)
        written = self.schema.append(TASKS_FIELD)
        if os.path.exists(path) and reusable(
                lambda: origin.check_reused(path, len(rows), written), self.overwrite):
            return {"rows": len(rows), "reused": True}
        table = output_rows(self.pool, index, self.pool.read_partition(index), self.schema)
        members = {label: set(positions.tolist()) for label, positions in mine.items()}
        labels = [[label for label in self.chosen if row in members[label]]
                  for row in rows.tolist()]
        picked = table.take(pa.array(rows, pa.int64())).append_column(
            TASKS_FIELD, pa.array(labels, TASKS_FIELD.type))
        write_table(origin.stamp(picked, every=True), path, self.fmt)
        return {"rows": len(rows), "reused": False}


def write_union(selections: dict[str, Selection], out: str, fmt: OutputFormat = "parquet",
                runner: Runner = default_runner, overwrite: bool = False,
                save_to_disk: bool = False) -> dict[str, Any]:
    """Write every row chosen by any selection once, with the labels that chose it (in
    the order of ``selections``); return the manifest (also saved as ``.manifest.json``).
    ``save_to_disk`` adds the ``datasets.load_from_disk`` layout (:mod:`dataselect.hf`)."""
    if not selections:
        raise InputError("no selections to unite")
    pools = {jsonable(s.pool.fingerprint()).__repr__() for s in selections.values()}
    if len(pools) > 1:
        raise InputError("selections to unite were made on different pools")
    pool = next(iter(selections.values())).pool
    job = jsonable({"selections": {k: s.description() for k, s in selections.items()},
                    "counts": {k: s.num_selected for k, s in selections.items()},
                    "format": fmt})
    with claim_output(out, "union", job, inputs=pool.files, overwrite=overwrite) as folder:
        out = folder.path
        folder.expect([part_name(i, fmt) for i in range(pool.npartitions)] + [MANIFEST_FILE])
        refuse_foreign_data(out, folder.files)  # read with the parts by every reader
        folder.remove_temporaries()
        chosen = {label: {i: p for i, p in s.positions.items() if len(p)}
                  for label, s in selections.items()}
        schema = output_schema(pool, (TASKS_COLUMN,), fmt)
        writer = _WriteUnionPart(pool, chosen, out, fmt, schema,
                                 job_digest(folder.identity), overwrite)
        results = run_stage(runner, "write:union",
                            partition_tasks("write-union", writer, pool.npartitions))
        folder.remove_temporaries()  # a killed worker's, which a glob of parts would match
        names = [part_name(i, fmt) for i in range(pool.npartitions)]
        rows = [r["rows"] for r in results]
        times_chosen = _times_chosen(selections)
        manifest = {
            RECORD_JOB_KEY: job_digest(folder.identity),
            "counts": {"selected": sum(r["rows"] for r in results),
                       "per_task": {k: s.num_selected for k, s in selections.items()},
                       "overlap": int((times_chosen > 1).sum())},
            "output": {"format": fmt, "column": TASKS_COLUMN,
                       "parts": [{"file": n, "rows": r} for n, r in zip(names, rows)],
                       "partitions_reused": sum(1 for r in results if r["reused"])},
            "inputs": {"pool": pool.fingerprint()},
        }
        notes = [] if save_to_disk else datasets_notes(  # as a selection's
            schema, [s for _, s in pool.schemas(False)])
        if notes:
            manifest["notes"] = notes
        if save_to_disk:
            manifest["output"]["save_to_disk"] = write_hf(folder, names, rows, runner)
        write_json(manifest, os.path.join(out, MANIFEST_FILE))
    return manifest


def _times_chosen(selections: dict[str, Selection]) -> np.ndarray:
    """How many selections chose each chosen row (as ``partition << 32 | position``)."""
    keys = [np.asarray(p, np.int64) + (np.int64(i) << 32)
            for s in selections.values() for i, p in s.positions.items()]
    if not keys:
        return np.zeros(0, np.int64)
    _, counts = np.unique(np.concatenate(keys), return_counts=True)
    return counts


@dataclass(frozen=True)
class _LabelsAt:
    column: str
    positions: dict[int, np.ndarray]

    def __call__(self, table: pa.Table, index: int) -> list[str]:
        chosen = self.positions.get(index)
        if chosen is None or not len(chosen):
            return []
        return table[self.column].take(pa.array(chosen, pa.int64())).to_pylist()


def split_selection(selection: Selection, column: str, labels: list[str],
                    runner: Runner = default_runner) -> dict[str, Selection]:
    """One selection per label: the chosen rows whose score column ``column`` holds that
    label, ranked in the order the whole selection ranked them (0 = best of the label)."""
    found = run_stage(runner, f"split:{column}",
                      selection.scores.delayed(_LabelsAt(column, selection.positions)))
    unknown = {v for values in found for v in values} - set(labels)
    if unknown:
        raise InputError(f"score column {column!r} holds labels {sorted(unknown)} not in "
                         f"{labels}", field=column)
    out = {}
    for label in labels:
        positions, global_ranks = {}, {}
        for index, values in enumerate(found):
            mine = np.array([v == label for v in values], bool)
            if len(values):
                positions[index] = selection.positions[index][mine]
                global_ranks[index] = selection.ranks[index][mine]
            else:
                positions[index] = np.empty(0, np.int64)
                global_ranks[index] = np.empty(0, np.int64)
        every = np.sort(np.concatenate([np.empty(0, np.int64), *global_ranks.values()]))
        ranks = {i: np.searchsorted(every, r).astype(np.int64) for i, r in global_ranks.items()}
        counts = {**selection.counts, "selected": len(every),
                  "selected_by_all_tasks": selection.num_selected}
        policy = {**selection.policy, "split_by": column, "label": label}
        out[label] = Selection(selection.pool, selection.scores, positions, ranks, policy,
                               counts)
    return out
