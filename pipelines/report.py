"""``dataselect report OUT/``: one HTML page with PNG plots of a finished run or selection.

What a person reviewing a selection wants to see before training on it: how each scorer's
scores are spread over the pool and where the chosen rows sit, what the selection is made
of (by domain, task, subtask or source, against the pool), how far it moved the n-gram
distribution towards the target (KL reduction), whether scorers and tasks agree (score
rank correlation, overlap of their choices), and, after ``dataselect eval``, whether
training on it beat random rows of the same size.

The page is ``OUT/report/index.html`` with its plots beside it, so the folder can be
copied or served as it is; for a ``dataselect select`` output, which is a dataset, it is
``OUT/.report/index.html``, out of dataset readers' sight (:mod:`pipelines.report_input`).
Every plot labels both axes, and a figure's title sits above its panels' titles.

Plots read the score stores a column at a time; a pool of more
than ``MAX_POINTS`` rows is thinned by a fixed stride (the same rows for every scorer, so
correlations stay paired), which keeps the report's memory bounded.
:func:`check_renders` opens the page in headless Chromium and counts the images that
loaded, for tests and for ``dataselect report --check``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import html
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from dataselect import composition, storage
from dataselect.composition import class_names, count_labels
from dataselect.errors import InputError, one_line
from dataselect.footer import RECORD_JOB_KEY, check_record_job, check_sealed, verified
from dataselect.layout import SCORES_DIR, TASKS_DIR
from dataselect.outdir import OutputFolder, hold_lock, normalize, remove_listed
from dataselect.output import (
    atomic_write,
    damaged_if_unreadable,
    read_json,
    read_table,
    write_json,
)
from dataselect.records import EvalResults, FitStats, check_record
from dataselect.scoring import stored_parts
from dataselect.temporary import checked_temporary_folder
from dataselect.writer import MANIFEST_FILE
from pipelines.report_input import (
    REPORT_KINDS,
    check_outputs_present,
    check_pool_unchanged,
    read_manifest,
    read_report_input,
)

MAX_POINTS = 200_000
# the manifest's label columns first, in its order, so the plot shows the column the
# manifest counted (a pool labelled only by `label` had counts and no plot), then others
LABEL_COLUMNS = (*composition.LABEL_COLUMNS, "subtask", "lang", "source")
TOP_LABELS = 10
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def write_report(out: str, console: Console | None = None) -> str:
    """Write ``OUT/report/index.html`` (``OUT/.report/`` for a select output) and its
    PNGs; return the page's path.

    The files are listed in the output folder's marker as they are written, and a rerun
    deletes exactly those it listed before (:mod:`dataselect.outdir`), so a file of the
    user's in the report folder is never deleted, and never overwritten: a name the report
    would write that it did not list is refused. Text from the data (a domain, a scorer's
    name) is drawn as written: matplotlib would read ``$...$`` in it as mathematics, and
    fail on an unbalanced ``$``."""
    import matplotlib

    matplotlib.use("Agg")
    run, report_dir = read_report_input(out)
    check_outputs_present(out, run)
    check_pool_unchanged(out, run)
    with hold_lock(normalize(out)):
        claimed = OutputFolder.reopen(out, REPORT_KINDS)
        _check_report_unchanged(claimed, report_dir)
        remove_listed(claimed.path, [f for f in claimed.files
                                     if f.startswith(report_dir + os.sep)])
        files = ReportFiles(claimed, report_dir)
        if os.path.islink(claimed.join(report_dir)):
            raise InputError("is a symbolic link; the report is written inside the output "
                             "folder only: remove the link", where=claimed.join(report_dir))
        os.makedirs(claimed.join(report_dir), exist_ok=True)
        with matplotlib.rc_context({"text.parse_math": False}):
            page = _write_page(out, run, files)
        _record_report_files(files)
    if console is not None:
        console.print(f"report: {sum(f.endswith('.png') for f in files.written)} plots")
    return page


# the report's record of what it wrote: each file's SHA-256, so that the next report
# replaces only files that are as it left them
REPORT_RECORD = ".written.json"


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record_report_files(files: ReportFiles) -> None:
    """Write :data:`REPORT_RECORD` beside the files the report just wrote, listed in the
    folder's marker like them."""
    path = files.path(REPORT_RECORD)
    record = {name: _digest(files.folder.join(os.path.join(files.sub, name)))
              for name in files.written if name != REPORT_RECORD}
    write_json({"sha256": record}, path)


def _check_report_unchanged(folder: OutputFolder, sub: str) -> None:
    """Refuse, before the last report's files are deleted, one that was changed since that
    report wrote it (the user's notes in ``index.html``, an edited plot): the rerun
    deleted and rewrote it without a word (pass 20, g03). A report written before the
    record existed has none, and its files are replaced as they were."""
    record_name = os.path.join(sub, REPORT_RECORD)
    if record_name not in folder.files or not os.path.isfile(folder.join(record_name)):
        return
    record = read_json(folder.join(record_name)).get("sha256")
    if not isinstance(record, dict):
        raise InputError("is damaged (no sha256 record): delete it and the report files it "
                         "lists, then rerun", where=folder.join(record_name))
    for name, digest in record.items():
        path = folder.join(os.path.join(sub, str(name)))
        if os.path.isfile(path) and _digest(path) != digest:
            raise InputError("was changed since dataselect report wrote it, and the report "
                             "would replace it: move it away (or delete it), then rerun",
                             where=path)


def _html(text: str) -> str:
    """``text`` for the page: control and bidirectional-formatting characters escaped as
    in every line dataselect prints (a NUL in a recipe's name made the page invalid HTML,
    and U+202E reversed what followed it), then HTML's own escapes."""
    return html.escape(one_line(str(text)))


@dataclass
class ReportFiles:
    """The report's files in the output folder: each name is listed in the folder's
    marker before it is written (so the next report, or ``--overwrite``, deletes it), and
    a file of that name that the report did not list, the user's, is refused."""

    folder: OutputFolder
    sub: str
    written: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        relative = os.path.join(self.sub, name)
        path = self.folder.join(relative)
        if os.path.lexists(path) and relative not in self.folder.files:
            raise InputError("exists and is not a file dataselect report wrote; move it "
                             "away (the report writes only files it lists, and deletes "
                             "nothing else)", where=path)
        self.folder.expect([relative])
        self.written.append(name)
        return path


def _write_page(out: str, run: dict[str, Any], folder: ReportFiles) -> str:
    """Every section's plots and the page; returns the page's path."""
    tasks = list(run["tasks"])
    scorers = list(run["scorers"])
    # where each task's selection lives: tasks/<task>/ of a run, the folder itself for a
    # select output
    dirs = {task: os.path.normpath(os.path.join(out, run["tasks"][task].get(
                "path", os.path.join(TASKS_DIR, task)))) for task in tasks}
    sections: list[str] = [_overview(run)]
    scores = {task: _task_scores(dirs[task], scorers) for task in tasks}
    sections.append(_section("Score distributions",
                             "Each scorer's scores over the pool (grey) and over the rows "
                             "the task chose (colour). Higher is more wanted.",
                             [_plot_scores(folder, scorer, tasks, scores)
                              for scorer in scorers]))
    label = _label_column(dirs[tasks[0]])
    if label:
        sections.append(_section(f"Composition by {label}",
                                 f"Share of each {label} in the pool and in each task's "
                                 "selection (the top labels; the rest as 'other').",
                                 [_plot_composition(folder, dirs, label, run)]))
    sections.append(_section("KL reduction",
                             "How much closer (in hashed n-gram KL divergence to the target) "
                             "the selection is than the pool, per task.",
                             [_plot_kl(folder, run)]))
    agreement = [_plot_task_overlap(folder, out, tasks)] if "union" in run else []
    if len(scorers) > 1:
        agreement += [_plot_scorer_agreement(folder, task, scorers, scores[task], run)
                      for task in tasks]
    if agreement:
        sections.append(_section("Agreement",
                                 "Overlap (Jaccard) of the tasks' selections; with several "
                                 "scorers, Spearman correlation of their pool scores and "
                                 "overlap of their top rows per task.", agreement))
    choices = _fit_details(dirs, scorers)
    if choices:
        sections.append(_section("Scorer choices",
                                 "What a scorer chose for you while fitting, per task: auto's "
                                 "validation of its candidates (AUC and recall measure how "
                                 "well a scorer tells held-out target rows from a pool "
                                 "sample, not the quality of a model trained on the "
                                 "selection), ZIP-FIT fast's compression level.", [], choices))
    results = os.path.join(out, "eval", "results.json")
    if os.path.exists(results):
        record = read_json(results)
        check_record(record, EvalResults, results)
        # this run's evaluation, not one copied in from another run
        check_record_job(record, results, run[RECORD_JOB_KEY])
        # and its numbers as eval wrote them: an edited loss is not drawn as a result
        check_sealed(record, results, f"rerun `dataselect eval {out}` to write it again "
                                      "(finished trainings are reused)")
        sections.append(_eval_section(folder, record))
    page = folder.path("index.html")
    title = _html(run["recipe"].get("name") or os.path.basename(os.path.abspath(out)))
    _write_text(page, _PAGE.format(title=title, body="\n".join(sections)))
    return page


# --- data ---------------------------------------------------------------------------


def _stride(files: list[str]) -> int:
    rows = 0
    for f in files:
        with damaged_if_unreadable(f):
            rows += pq.ParquetFile(storage.arrow_path(f)).metadata.num_rows
    return max(1, math.ceil(rows / MAX_POINTS))


def _task_scores(task_dir: str, scorers: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per scorer: the pool's eligible scores (thinned) and the selected rows' scores."""
    found: dict[str, dict[str, np.ndarray]] = {}
    selected = _selected_table(task_dir, ["score", *[f"score_{s}" for s in scorers]])
    for scorer in scorers:
        files = sorted(glob.glob(os.path.join(task_dir, SCORES_DIR, scorer,
                                              "part-*.parquet")))
        if not files:
            continue
        step = _stride(files)
        store = stored_parts(os.path.join(task_dir, SCORES_DIR, scorer))
        parts = []
        for index in range(len(files)):
            # each part checked to be the one the store wrote (dataselect.footer)
            table = store.read(index, ["score", "filtered_by"])
            score = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
            if "filtered_by" in table.column_names:
                filtered = ~table["filtered_by"].is_null().to_numpy(zero_copy_only=False)
                score = np.where(filtered, np.nan, score)
            parts.append(score)
        pool = np.concatenate(parts)[::step]
        column = f"score_{scorer}" if f"score_{scorer}" in selected else "score"
        found[scorer] = {"pool": pool, "selected": selected.get(column, np.zeros(0))}
    return found


def _output_files(out: str, sub: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out, sub, "part-*.parquet"))
                  + glob.glob(os.path.join(out, sub, "part-*.arrow")))


def _read_output(path: str) -> pa.Table:
    """An output part, read whole; its footer was checked before any plot
    (:func:`~pipelines.report_input.check_outputs_present`), its hashed values are here."""
    return verified(path, read_table(path))


def _selected_table(task_dir: str, columns: list[str]) -> dict[str, np.ndarray]:
    values: dict[str, list[np.ndarray]] = {}
    for f in _output_files(task_dir, ""):
        table = _read_output(f)
        for c in columns:
            if c in table.column_names:
                values.setdefault(c, []).append(
                    table[c].to_numpy(zero_copy_only=False).astype(np.float64))
    return {c: np.concatenate(v) for c, v in values.items()}


def _label_column(task_dir: str) -> str | None:
    files = _output_files(task_dir, "")
    if not files:
        return None
    names = _read_output(files[0]).column_names
    return next((c for c in LABEL_COLUMNS if c in names), None)


def _labels(files: list[str], column: str) -> Counter:
    """Rows per label of ``column`` in ``files``, as the manifest's composition counts them
    (a ClassLabel's numbers by its names). Why: the pool's counts, from the manifest, said
    ``neg`` where the selection's, read here as numbers, said ``0``."""
    counts: Counter = Counter()
    for f in files:
        counts.update(_count_labels(_read_output(f), column))
    return counts


def _count_labels(table: pa.Table, column: str) -> Counter:
    """Rows per value of ``column`` in ``table``, a ClassLabel's by its names."""
    if column not in table.column_names:
        return Counter()
    if class_names(table.schema, column) is not None:
        return count_labels(table, column)
    return Counter(str(v) for v in table[column].to_pylist())


# --- plots --------------------------------------------------------------------------


def _save(fig: Any, folder: ReportFiles, name: str) -> str:
    import matplotlib.pyplot as plt

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png"
    with atomic_write(folder.path(safe)) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return safe


def _plot_scores(folder: ReportFiles, scorer: str, tasks: list[str],
                 scores: dict[str, dict[str, dict[str, np.ndarray]]]) -> str:
    import matplotlib.pyplot as plt

    cols = min(len(tasks), 4)
    rows = math.ceil(len(tasks) / cols)
    # constrained layout places the figure's title above the panels' titles, not on them
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows + 0.4),
                             squeeze=False, layout="constrained")
    for ax, task in zip(axes.flat, tasks):
        data = scores[task].get(scorer)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(f"{scorer} score", fontsize=8)
        ax.set_ylabel("rows (log scale)", fontsize=8)
        if data is None:
            ax.text(0.5, 0.5, "no score store", ha="center", transform=ax.transAxes)
            continue
        pool = data["pool"][np.isfinite(data["pool"])]
        chosen = data["selected"][np.isfinite(data["selected"])]
        if not len(pool):
            continue
        bins = np.histogram_bin_edges(pool, bins=40)
        ax.hist(pool, bins=bins, color="0.75", label="pool")
        if len(chosen):
            ax.hist(chosen, bins=bins, color="tab:blue", label="selected")
        ax.set_yscale("log")
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{scorer} scores", fontsize=11)
    return _save(fig, folder, f"scores_{scorer}")


def _plot_composition(folder: ReportFiles, dirs: dict[str, str], column: str,
                      run: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    groups = {"pool": _pool_labels(run, column)}
    for task, task_dir in dirs.items():
        groups[task] = _labels(_output_files(task_dir, ""), column)
    total: Counter = Counter()
    for counts in groups.values():
        total.update({k: v / max(sum(counts.values()), 1) for k, v in counts.items()})
    top = [k for k, _ in total.most_common(TOP_LABELS)]
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 3, 3.6))
    bottom = np.zeros(len(groups))
    cmap = plt.get_cmap("tab20")
    for i, label in enumerate([*top, "other"]):
        shares = []
        for counts in groups.values():
            n = max(sum(counts.values()), 1)
            value = counts.get(label, 0) if label != "other" else sum(
                v for k, v in counts.items() if k not in top)
            shares.append(value / n)
        ax.bar(list(groups), shares, bottom=bottom, label=label[:40], color=cmap(i % 20))
        bottom += np.array(shares)
    ax.set_ylabel("share of rows")
    ax.set_xlabel("the pool, then each selection", fontsize=8)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", title=column)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(fig, folder, f"composition_{column}")


def _pool_labels(run: dict[str, Any], column: str) -> Counter:
    """Label counts over the whole pool: the counts the job's scoring pass took (every
    label, in the manifest's ``composition``), which the report's check of the pool
    (unchanged since the job) makes current. Only a column the manifest did not count
    (more than ``MAX_LABELS`` labels, or a column outside its list) is counted by reading
    the pool, a partition at a time. Why: the report read the whole pool again for counts
    the job already held, a pass as long as scoring at web scale."""
    from dataselect.corpus import read_corpus

    found = next(iter(run["tasks"].values()), {}).get("composition") or {}
    if found.get("column") == column and isinstance(found.get("pool"), dict):
        return Counter(found["pool"])
    spec = run["recipe"].get("pool")
    if spec is None:  # written without its pool's settings (the Python API)
        return Counter()
    pool = read_corpus(spec["paths"], spec["text"], spec["id_field"],
                       max(1, int(spec["partition_mb"] * 2**20)))
    counts: Counter = Counter()
    for table in pool.iter_tables():
        counts.update(_count_labels(table, column))
    return counts


def _plot_kl(folder: ReportFiles, run: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    tasks = list(run["tasks"])
    values = [run["tasks"][t]["metrics"].get("kl_reduction") for t in tasks]
    values = [np.nan if v is None else v for v in values]  # null: no pool sample
    fig, ax = plt.subplots(figsize=(1.1 * len(tasks) + 2.5, 3))
    ax.bar(tasks, values, color="tab:green")
    ax.set_ylabel("KL(target‖pool) − KL(target‖selection)", fontsize=8)
    ax.set_xlabel("selection", fontsize=8)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _save(fig, folder, "kl_reduction")


def _heatmap(ax: Any, matrix: np.ndarray, labels: list[str], title: str, axis: str) -> None:
    image = ax.imshow(matrix, vmin=-1 if matrix.min() < 0 else 0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(axis, fontsize=8)
    ax.set_ylabel(axis, fontsize=8)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def _plot_task_overlap(folder: ReportFiles, out: str, tasks: list[str]) -> str:
    import matplotlib.pyplot as plt

    chosen = {t: set() for t in tasks}
    for f in _output_files(out, "union"):
        table = _read_output(f)
        for row_id, labels in zip(table["id"].to_pylist(), table["tasks"].to_pylist()):
            for label in labels:
                chosen.setdefault(label, set()).add(row_id)
    matrix = np.array([[_jaccard(chosen[a], chosen[b]) for b in tasks] for a in tasks])
    fig, ax = plt.subplots(figsize=(1.0 * len(tasks) + 2.5, 0.9 * len(tasks) + 1.5))
    _heatmap(ax, matrix, tasks, "selection overlap between tasks (Jaccard)", "task")
    return _save(fig, folder, "task_overlap")


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def _plot_scorer_agreement(folder: ReportFiles, task: str, scorers: list[str],
                           scores: dict[str, dict[str, np.ndarray]], run: dict[str, Any]
                           ) -> str:
    import matplotlib.pyplot as plt

    names = [s for s in scorers if s in scores]
    pools = [scores[s]["pool"] for s in names]
    both = np.all([np.isfinite(p) for p in pools], axis=0)
    ranks = [_ranks(p[both]) for p in pools]
    k = max(1, int(run["tasks"][task]["selected"] * both.sum()
                   / max(run["tasks"][task]["counts"]["rows_in"], 1)))
    tops = [set(np.argsort(-p[both], kind="stable")[:k].tolist()) for p in pools]
    spearman = np.corrcoef(ranks) if len(ranks) > 1 else np.ones((1, 1))
    overlap = np.array([[_jaccard(a, b) for b in tops] for a in tops])
    fig, (left, right) = plt.subplots(1, 2, figsize=(2.2 * len(names) + 5, 1.0 * len(names)
                                                      + 2))
    _heatmap(left, np.atleast_2d(spearman), names, f"{task}: Spearman of pool scores",
             "scorer")
    _heatmap(right, overlap, names, f"{task}: top-row overlap (Jaccard)", "scorer")
    return _save(fig, folder, f"agreement_{task}")


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def _eval_section(folder: ReportFiles, results: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    summary = results["summary"]
    tasks = list(summary)
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 3, 3.4))
    x = np.arange(len(tasks))
    for offset, arm, color in ((-0.2, "selected", "tab:blue"), (0.2, "random", "0.6")):
        means = [summary[t]["loss"][arm]["mean"] for t in tasks]
        errors = [summary[t]["loss"][arm]["std"] or 0 for t in tasks]
        ax.bar(x + offset, means, width=0.4, yerr=errors, capsize=3, color=color, label=arm)
    ax.set_xticks(x, tasks, rotation=30, fontsize=8)
    ax.set_xlabel("task", fontsize=8)
    ax.set_ylabel("held-out loss (lower is better)")
    ax.legend(fontsize=8)
    image = _save(fig, folder, "eval_loss")
    rows = []
    for task, entry in summary.items():
        loss = entry["loss"]
        rows.append([task, str(entry["train_rows"]), _pm(loss["selected"]),
                     _pm(loss["random"]), _pm(loss["difference"]),
                     f"{loss['selected_better_seeds']}/{len(entry['seeds'])}"])
    settings = results["settings"]
    note = (f"Models trained {settings['steps']} steps per seed (seeds "
            f"{', '.join(map(str, settings['seeds']))}), same initialisation and batch order "
            "for both arms; mean ± standard deviation over seeds.")
    table = _table(["task", "rows", "selected", "random", "selected − random",
                    "better seeds"], rows)
    return _section("Evaluation", note, [image], table)


def _pm(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.4f}" + ("" if stats["std"] is None else f" ± {stats['std']:.4f}")


# --- page ---------------------------------------------------------------------------


def _overview(run: dict[str, Any]) -> str:
    rows = []
    for task, info in run["tasks"].items():
        counts, metrics = info["counts"], info["metrics"]
        filtered = ", ".join(f"{k}: {v}" for k, v in counts.get("filtered", {}).items())
        kl = metrics.get("kl_reduction")
        rows.append([task, str(counts["rows_in"]), str(counts["eligible"]),
                     filtered or "none", str(counts["selected"]),
                     "-" if kl is None else f"{kl:.4f}"])
    if "union" in run:
        rows.append(["union", "", "", "", str(run["union"]["selected"]), ""])
    recipe = run["recipe"]
    budget = {k: v for k, v in recipe["selection"].items() if v is not None}
    seconds = run.get("timings", {}).get("total_seconds")
    text = (f"Scorers: {', '.join(run['scorers'])}. Selection: "
            f"{', '.join(f'{k}={v}' for k, v in budget.items())}."
            + ("" if seconds is None else f" Run took {seconds:.1f} s."))
    table = _table(["task", "rows in", "eligible", "filtered", "selected", "KL reduction"],
                   rows)
    return _section("Overview", text, [], table)


def _fit_details(dirs: dict[str, str], scorers: list[str]) -> str:
    """The tables and notes each task's fits asked to show (``fit_stats_``), as HTML. A
    select output's manifest holds one scorer's fit, a recipe task's one per scorer."""
    parts = []
    for task, folder in dirs.items():
        path = os.path.join(folder, MANIFEST_FILE)
        fit = (read_manifest(path).get("fit") or {}) if os.path.exists(path) else {}
        per_scorer = fit if set(fit) <= set(scorers) else {scorers[0]: fit}
        for scorer, stats in per_scorer.items():
            check_record(stats, FitStats, path)
            for spec in stats.get("tables", []):
                title = f"{task}: {spec['title']}"
                parts.append(f"<h3>{_html(title)}</h3>")
                parts.append(_table(spec["columns"], [[str(c) for c in row]
                                                      for row in spec["rows"]]))
            parts += [f"<p>{_html(f'{task}/{scorer}: {note}')}</p>"
                      for note in stats.get("notes", [])]
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_html(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, text: str, images: list[str], extra: str = "") -> str:
    pictures = "".join(f'<img src="{_html(i)}" alt="{_html(i)}">' for i in images)
    return (f"<section><h2>{_html(title)}</h2><p>{_html(text)}</p>"
            f"{extra}{pictures}</section>")


def _write_text(path: str, text: str) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dataselect report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ display: block; max-width: 100%; margin: 0.5em 0; }}
</style></head>
<body><h1>dataselect report: {title}</h1>
{body}
<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-ok", String(ok.length));
}});
</script>
</body></html>
"""


def find_chromium() -> str | None:
    """A Chromium or Chrome binary: ``DATASELECT_CHROMIUM``, else the first on PATH."""
    given = os.environ.get("DATASELECT_CHROMIUM")
    if given:
        return given
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _run_browser(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end or ``timeout``, as ``subprocess.run`` would, but in a
    process group of its own, killed whole when it ends or times out: Chromium forks
    zygote and renderer processes, and killing only the process started left them
    running after dataselect exited. Its output goes to unnamed temporary files, not
    pipes, so a child that keeps them open cannot hold us past the browser's own exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        finally:  # the timeout, ^C, or its end: nothing it started may outlive it
            _kill_group(process.pid)
            process.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            command, process.returncode, out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"))


def _kill_group(group: int) -> None:
    """SIGKILL every process of the group ``group`` (one :func:`_run_browser` started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # all gone already
        os.killpg(group, signal.SIGKILL)


def check_renders(page: str, timeout: float = 60.0) -> dict[str, int]:
    """Load ``page`` in headless Chromium and return how many of its images loaded
    (``images_ok``) out of ``images_total``, as the page's own script counted them."""
    browser = find_chromium()
    if browser is None:
        raise InputError("no Chromium found to check the report with: install it "
                         "(Debian: apt-get install chromium) or set DATASELECT_CHROMIUM")
    # a profile of its own in a temporary folder: never a name in the user's folder
    profile = tempfile.mkdtemp(prefix="dataselect-chromium-", dir=checked_temporary_folder())
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--allow-file-access-from-files", "--virtual-time-budget=10000",
               "--dump-dom", "file://" + os.path.abspath(page)]
    try:
        done = _run_browser(command, timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        # DATASELECT_CHROMIUM naming a missing file, a folder, a program that never ends
        reason = ((exc.strerror or str(exc)) if isinstance(exc, OSError)
                  else f"no answer in {timeout:g} s")
        raise InputError(f"cannot run {browser} to check the report ({reason}): install "
                         "Chromium or set DATASELECT_CHROMIUM to its binary",
                         where=page) from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    found = {k: re.search(rf'data-images-{k}="(\d+)"', done.stdout) for k in ("ok", "total")}
    if done.returncode != 0 or not all(found.values()):
        said = " ".join(done.stderr.split())[-300:]  # the child's lines, as one line
        raise InputError(f"headless Chromium ({browser}) did not render the page (exit "
                         f"{done.returncode}): {said}", where=page)
    return {"images_ok": int(found["ok"].group(1)), "images_total": int(found["total"]
                                                                         .group(1))}
