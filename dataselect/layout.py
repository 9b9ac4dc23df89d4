"""Names inside dataselect's output folders, in one place.

A selection folder (``dataselect select --out``, ``Selection.write``, a recipe's
``tasks/<task>/``) and a union folder (a recipe's ``union/``) are datasets: their only
visible files are the ``part-NNNNN.parquet`` (or ``.arrow``) parts. Everything else a job
keeps there (manifest, metric counts, score stores, the ``save_to_disk`` copy, the marker,
the lock, temporaries) has a name starting with ``.``, the one prefix every reader skips:

- Hugging Face ``datasets`` (``load_dataset(PATH)``, ``load_dataset("parquet",
  data_dir=PATH)``) skips hidden files and folders (and folders starting with ``__``),
  but not names starting with ``_``;
- pyarrow's dataset discovery, and pandas through it, skips names starting with ``.``
  or ``_``;
- polars reads every file below a folder, hidden ones included, so a polars user reads
  the parts' glob (``pl.scan_parquet("OUT/*.parquet")``), which matches only parts.

A recipe's output root is not one dataset (it holds one selection per task plus their
union, a report and evaluation results); its own bookkeeping is hidden the same way.

Score stores and feature stores are internal folders, always under a hidden name here;
their inner names (``_manifest.json`` and the parts) did not change.
"""

from __future__ import annotations

import os
import re

# a name that becomes one folder inside an output (a recipe's task, a scorer's score
# store): ASCII letters, digits, '_', '-', '.', starting with a letter or digit, so it
# can be neither absolute, nor '..', nor hold a separator that would lead out of the output
# (\Z, not $: $ also matches before a final newline, and 'task\n' would pass)
# ASCII only, on purpose: a name with 'é' has two spellings (NFC and NFD) that look alike
# but name two folders (macOS, and object stores, may turn one into the other), and some
# file systems and object stores take only ASCII; so the rule says "ASCII letters", never
# calling 'é' a non-letter
FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
FOLDER_NAME_RULE = ("ASCII letters, digits, '_', '-' or '.', starting with an ASCII letter or "
                    "digit (it names a folder, kept portable across file systems and object "
                    "stores)")

# in a selection or union folder
# written by dataselect into a cache folder it makes (fingerprints, converted models): the
# folder is then known as its own, and a folder input's note leaves its files out
CACHE_MARKER = ".dataselect-cache"
MANIFEST_FILE = ".manifest.json"  # written last: the folder is finished when it exists
STATS_DIR = ".stats"  # per-part n-gram counts for the KL metric
SCORES_DIR = ".scores"  # score stores, one folder per scorer
PARSED_DIR = ".parsed"  # the pool's partitions as Arrow files, while a job runs
HF_DIR = ".hf"  # the save_to_disk layout, for datasets.load_from_disk

# in a recipe's output root
TASKS_DIR = "tasks"  # tasks/<task>/: each task's selection (a dataset)
UNION_DIR = "union"  # every chosen row once (a dataset)
ATTRIBUTION_DIR = "attribution"  # attribution/<task>.parquet, with `attribution:`
RUN_FILE = ".run.json"
MODELS_DIR = ".models"
WARMUP_DIR = ".warmup"
FEATURES_DIR = ".features"

# what a job writes in its output, for the checks of a feature store folder given inside it
# (features.check_feature_folder): in a selection or union folder, its hidden bookkeeping
# (".report" is the selection report's folder, pipelines.report_input); in a recipe's
# root, besides its selections (tasks/<task>, union), the folders and files it writes
# ("eval" and "report": pipelines.evaluate, pipelines.report_input). A recipe's
# ".features" holds one store per scorer, so only ".features" itself is taken.
SELECTION_OWN = (MANIFEST_FILE, STATS_DIR, SCORES_DIR, PARSED_DIR, HF_DIR, ".report",
                 ".dataselect.json", ".dataselect.lock")
RECIPE_OWN = (TASKS_DIR, ATTRIBUTION_DIR, RUN_FILE, MODELS_DIR, WARMUP_DIR, FEATURES_DIR,
              PARSED_DIR, "eval", "report", ".dataselect.json", ".dataselect.lock")

def own_place(parts: tuple[str, ...], recipe: bool) -> str | None:
    """Where the folder at ``parts`` (relative to a job's output: a selection's, or a
    ``recipe``'s root) lies among what the job writes, in a user's words (to follow "lies
    in OUT, "), or None where the job writes nothing there: a feature store is refused
    there (a selection's readers would read it as rows, a rerun would write into it)."""
    if not parts:
        return "the output folder"
    if recipe:
        if parts[0] == UNION_DIR:
            return _own_in_selection(parts[1:], f"the union folder ({UNION_DIR})")
        if parts[0] == TASKS_DIR and len(parts) > 1:
            return _own_in_selection(parts[2:], f"the selection of task {parts[1]!r} "
                                                f"({os.path.join(*parts[:2])})")
        if parts[0] in RECIPE_OWN and (parts[0] != FEATURES_DIR or len(parts) == 1):
            return f"in the recipe's own {parts[0]}, which the job writes"
        return None
    return _own_in_selection(parts, "the selection")


def _own_in_selection(parts: tuple[str, ...], what: str) -> str | None:
    if not parts:
        return f"in {what}, which the job writes"
    if not parts[0].startswith("."):
        return f"inside {what}, whose readers would read the features as its rows"
    if parts[0] in SELECTION_OWN:
        return f"in {what}'s own {parts[0]}, which the job writes"
    return None


# the names dataselect used before, which Hugging Face datasets reads as data
LEGACY_NAMES = {"_manifest.json": MANIFEST_FILE, "_stats": STATS_DIR, "_scores": SCORES_DIR,
                "_run.json": RUN_FILE, "_models": MODELS_DIR, "_warmup": WARMUP_DIR,
                "_features": FEATURES_DIR}


def legacy_entries(path: str, depth: int = 3) -> list[str]:
    """Relative paths of bookkeeping under its old names in the folder ``path`` (and in
    its visible subfolders, e.g. a recipe's ``tasks/<task>/``), in sorted order."""
    found: list[str] = []
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if entry.name in LEGACY_NAMES:
            found.append(entry.name)
        elif depth > 1 and not entry.name.startswith(".") and entry.is_dir(
                follow_symlinks=False):
            found += [os.path.join(entry.name, sub)
                      for sub in legacy_entries(entry.path, depth - 1)]
    return found
