"""The shapes of the JSON records dataselect writes and later reads back: a feature store's
``_manifest.json``, an index's ``index.json``, ``eval/results.json``, a run's ``.run.json``
and a selection's ``.manifest.json``.

A record edited by hand (a count made text, a mapping emptied) was a ``TypeError`` or
``KeyError`` deep inside whatever used it first. Each record is checked where it is read,
against the keys its reader uses, and one that differs is one line naming the file and
the key, "damaged or edited". The shapes are ``TypedDict`` s checked by pydantic in strict
mode (a count is an int, never ``"3"`` or ``true``); keys nobody reads are not checked, so
a record from a version that wrote more is still accepted.
"""

from __future__ import annotations

import os
from typing import Any

from typing_extensions import Required, TypedDict

from dataselect.output import damaged_file

# a number the report formats: an int or a float (strict mode takes an int for a float)
Number = float


class FeatureManifest(TypedDict, total=False):
    dim: Required[int]
    views: int
    view_weights: list[Number] | None
    side: str


class WrittenFile(TypedDict, total=False):
    """What identifies a file of an index as written: its size, and a hash of its bytes
    (``xxh3_128``) or of the ids it holds (``ids``)."""

    bytes: Required[int]
    xxh3_128: str
    ids: str


class IndexMeta(TypedDict, total=False):
    kind: Required[str]
    dim: Required[int]
    rows: int
    features: FeatureManifest
    files: dict[str, WrittenFile]


class _Stats(TypedDict):
    mean: Number
    std: Number | None


class _Loss(TypedDict):
    selected: _Stats
    random: _Stats
    difference: _Stats
    selected_better_seeds: int


class _TaskResult(TypedDict):
    train_rows: int
    loss: _Loss
    seeds: list[Any]


class _EvalSettings(TypedDict):
    steps: int
    seeds: list[int]


class EvalResults(TypedDict):
    summary: dict[str, _TaskResult]
    settings: _EvalSettings


class _Counts(TypedDict, total=False):
    rows_in: Required[int]
    eligible: Required[int]
    selected: Required[int]
    filtered: dict[str, int]


class _ManifestCounts(TypedDict, total=False):
    """A selection's counts; the union's has no pool counts of its own."""

    rows_in: int
    eligible: int
    selected: int
    written: int
    overlap: int
    filtered: dict[str, int]
    per_task: dict[str, int]


class _Task(TypedDict, total=False):
    selected: Required[int]
    counts: Required[_Counts]
    metrics: dict[str, Any]
    composition: dict[str, Any] | None
    path: str


class _PoolSpec(TypedDict):
    paths: str | list[str]
    text: Any
    id_field: str
    partition_mb: Number


class _Recipe(TypedDict, total=False):
    name: str | None
    selection: Required[dict[str, Any]]
    pool: _PoolSpec | None


class _Union(TypedDict, total=False):
    selected: Required[int]


class _Timings(TypedDict, total=False):
    total_seconds: Number | None


class RunRecord(TypedDict, total=False):
    recipe: Required[_Recipe]
    tasks: Required[dict[str, _Task]]
    scorers: Required[list[str]]
    union: _Union
    timings: _Timings


class _Part(TypedDict, total=False):
    file: Required[str]


class _Output(TypedDict, total=False):
    parts: list[_Part]


class _Inputs(TypedDict, total=False):
    pool: dict[str, Any] | None


class FitStats(TypedDict, total=False):
    tables: list[_FitTable]
    notes: list[str]


class _FitTable(TypedDict):
    title: str
    columns: list[str]
    rows: list[list[Any]]


class _Job(TypedDict, total=False):
    pool: str | list[str] | None
    text_field: Any
    id_field: str
    partition_bytes: int


class SelectionManifest(TypedDict, total=False):
    """A select job's, a recipe task's or the union's ``.manifest.json``."""

    counts: Required[_ManifestCounts]
    scores: dict[str, Any]
    selection: dict[str, Any]
    job: _Job
    metrics: dict[str, Any]
    timings: _Timings
    composition: dict[str, Any] | None
    inputs: _Inputs
    output: _Output
    fit: dict[str, Any]



def check_record(data: Any, shape: type, path: str | os.PathLike) -> None:
    """Refuse ``data`` (read from ``path``) unless it has ``shape``: one line naming the
    file, the first key that differs and what it holds."""
    from pydantic import TypeAdapter, ValidationError

    try:
        _adapter(shape, TypeAdapter).validate_python(data, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "its content"
        held = "nothing" if error["type"] == "missing" else repr(error["input"])[:60]
        raise damaged_file(path, f"its {where!r} holds {held} ({error['msg'].lower()})"
                           ) from None


_ADAPTERS: dict[type, Any] = {}


def _adapter(shape: type, adapter: Any) -> Any:
    """One pydantic adapter per shape (building one takes milliseconds)."""
    if shape not in _ADAPTERS:
        _ADAPTERS[shape] = adapter(shape)
    return _ADAPTERS[shape]

