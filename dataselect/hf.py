"""A selection as a Hugging Face ``datasets.Dataset`` memory-mapped from the output folder.

``datasets.load_dataset(OUT)`` reads a selection folder's parts as they are, through a
conversion into its own cache. For a ``Dataset`` memory-mapped straight from the output,
the folder can also hold the layout ``Dataset.save_to_disk`` writes, under ``OUT/.hf/``:

    .hf/data-NNNNN-of-MMMMM.arrow   an Arrow stream file per non-empty part, in part order
    .hf/dataset_info.json           the features
    .hf/state.json                  the list of shards; written last, so it marks the copy whole

``datasets.load_from_disk("OUT/.hf")`` opens it. A job writes it with ``save_to_disk``
(``--save-to-disk``, a recipe's ``output.save_to_disk``), after the parts and before the
manifest; :func:`load_hf` (and ``Selection.to_hf``) writes it on first use for a finished
folder that lacks it. Shards are written atomically and skipped when present, so an
interrupted conversion resumes, and every file is recorded in the folder's marker, so
``--overwrite`` removes the copy with the rest of the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dataselect import storage
from dataselect.checks import (
    check_hf_data_files,
    check_path,
    read_hf_state,
    special_kind,
)
from dataselect.corpus import Corpus
from dataselect.errors import InputError
from dataselect.execution import Runner, default_runner, partition_tasks, run_stage
from dataselect.footer import (
    PartOrigin,
    check_parts,
    check_record_in,
    job_digest,
    replaced,
    reusable,
    verified,
)
from dataselect.layout import HF_DIR, MANIFEST_FILE
from dataselect.outdir import (
    OutputFolder,
    hold_lock,
    normalize,
    recorded_identity,
    refuse_kind,
    refuse_legacy,
)
from dataselect.output import (
    atomic_write,
    damaged_if_unreadable,
    read_json,
    read_schema,
    read_table,
    write_json,
)

STATE_FILE, INFO_FILE = "state.json", "dataset_info.json"  # the names load_from_disk reads
# output folders that are one dataset (a recipe root holds several, and is refused)
DATASET_KINDS = ("job", "selection", "union")
SELECTION_FOLDERS = ("the folder of a finished selection (dataselect select --out, a recipe's "
                     "tasks/<task>/ or union/)")


def shard_name(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


def shard_names(rows: list[int]) -> list[str]:
    """The shard files for parts with ``rows`` rows each: one per non-empty part, or a
    single empty shard when every part is empty."""
    count = max(1, sum(1 for r in rows if r))
    return [shard_name(i, count) for i in range(count)]


def write_hf(folder: OutputFolder, parts: list[str], rows: list[int],
             runner: Runner = default_runner) -> dict[str, Any]:
    """Write ``folder``'s ``parts`` (file names, ``rows`` rows each) as the ``save_to_disk``
    layout under ``.hf/``; parts already converted are kept. Returns the manifest entry."""
    hf = folder.join(HF_DIR)
    names = shard_names(rows)
    folder.expect([os.path.join(HF_DIR, n) for n in [*names, INFO_FILE, STATE_FILE]])
    _check_hf_folder(hf)
    os.makedirs(hf, exist_ok=True)
    folder.remove_temporaries(HF_DIR)
    sources = [p for p, r in zip(parts, rows) if r] or parts[:1]
    schema = _features(_unified_schema([folder.join(p) for p in parts]),
                       folder.join(parts[0])).arrow_schema
    writer = _WriteShard(folder.path, tuple(sources), tuple(names), schema,
                         job_digest(folder.identity))
    run_stage(runner, "write:hf", partition_tasks("write-hf", writer, len(names)))
    info = _dataset_info(schema, sum(os.path.getsize(os.path.join(hf, n)) for n in names))
    with atomic_write(os.path.join(hf, INFO_FILE)) as tmp, open(tmp, "w",
                                                               encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    write_json(_state(names, folder.identity), os.path.join(hf, STATE_FILE))
    return {"path": HF_DIR, "shards": len(names), "rows": sum(rows)}


def _state(names: list[str], identity: Any) -> dict[str, Any]:
    """``state.json`` as dataselect writes it for the shards ``names`` of the job
    ``identity``: every column, no output format, no split."""
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str)
                                 .encode()).hexdigest()[:16]
    return {"_data_files": [{"filename": n} for n in names], "_fingerprint": fingerprint,
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
            "_output_all_columns": False, "_split": None}


def _refuse_not_a_folder(path: str) -> None:
    """Refuse a ``path`` that is a file (a part, ``.manifest.json``), a FIFO or a device,
    in one line naming it: every later step reads ``path/.hf`` and ``path/.dataselect.json``,
    and a file there gave a raw NotADirectoryError naming ``<file>/.hf``, which says
    neither what was given nor what is wanted. Nothing is opened (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # refused next, as a folder that holds no selection
    if stat.S_ISDIR(mode):
        return
    what = "a file" if stat.S_ISREG(mode) else special_kind(path)
    raise InputError(f"is {what}, not a folder: load_hf reads {SELECTION_FOLDERS}; give "
                     "that folder", where=path)


def _check_hf_folder(hf: str) -> None:
    """Refuse anything but a folder (or nothing) at ``OUT/.hf``, in one line naming it:
    a user's file there ended ``load_hf`` in ``os.makedirs``' FileExistsError, and a link
    would lead the copy's reads and writes out of the output folder."""
    try:
        mode = os.lstat(hf).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        return
    what = ("a symbolic link" if stat.S_ISLNK(mode) else "a file" if stat.S_ISREG(mode)
            else special_kind(hf))
    raise InputError(f"is {what}, not a folder: dataselect keeps the datasets "
                     "(save_to_disk) copy of the selection here; move it away, then rerun",
                     where=hf)


def _check_bookkeeping(hf: str, names: list[str]) -> None:
    """Refuse, before ``datasets`` opens them, a bookkeeping file or shard of the copy that
    is not a regular file (by ``lstat``: dataselect writes no links): a FIFO at
    ``dataset_info.json`` gave datasets' "neither a Dataset directory nor a DatasetDict
    directory", a link would read a file outside the output."""
    for name in (STATE_FILE, INFO_FILE, *names):
        file = os.path.join(hf, name)
        try:
            mode = os.lstat(file).st_mode
        except FileNotFoundError:
            raise InputError("is missing from the datasets (save_to_disk) copy: delete "
                             f"{hf} and call load_hf again, which writes the copy anew",
                             where=file) from None
        if not stat.S_ISREG(mode):
            what = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder"
                    if stat.S_ISDIR(mode) else special_kind(file))
            raise InputError(f"is {what}, not the file dataselect wrote: delete {hf} and "
                             "call load_hf again, which writes the copy anew", where=file)


def _check_written(hf: str, name: str, found: Any, expected: dict[str, Any]) -> None:
    """Refuse the JSON file ``hf/name`` unless it holds ``expected``, naming the first key
    that differs. Why: ``load_from_disk`` applies what ``state.json`` and
    ``dataset_info.json`` say (``_format_columns: ["id"]`` returned the id column alone,
    with no error), so a copy whose files are not what dataselect wrote is damaged."""
    expected = json.loads(json.dumps(expected))  # tuples as the JSON file holds them
    where = os.path.join(hf, name)
    if not isinstance(found, dict):
        found = {}
    for key in sorted(set(found) | set(expected)):
        if found.get(key, _ABSENT) == expected.get(key, _ABSENT):
            continue
        held = "lacks it" if key not in found else f"holds {_as_json(found[key])}"
        wrote = ("writes none" if key not in expected
                 else f"writes {_as_json(expected[key])}")
        raise InputError(f"{held} where dataselect {wrote}: the datasets copy was edited or "
                         f"damaged; delete {hf} and call load_hf again, which writes it "
                         "anew", where=where, field=key)


_ABSENT = object()


def _as_json(value: Any) -> str:
    """``value`` as the JSON file spells it (``null``, ``false``), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class _WriteShard:
    """Copy one part into its shard (an Arrow stream file with the dataset's features and
    a footer naming the folder's job, :mod:`dataselect.footer`); a shard already there is
    kept when it is the one this job wrote, else written again (it is a copy)."""

    folder: str
    parts: tuple[str, ...]
    names: tuple[str, ...]
    schema: pa.Schema
    job: str

    def __call__(self, index: int) -> int:
        path = os.path.join(self.folder, HF_DIR, self.names[index])
        origin = PartOrigin(self.job, index)
        if os.path.exists(path) and reusable(lambda: check_shard(origin, path), True):
            return 0
        source = os.path.join(self.folder, self.parts[index])
        table = origin.stamp(_conform(verified(source, read_table(source)), self.schema),
                             every=True)
        with atomic_write(path) as tmp, pa.OSFile(tmp, "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        return table.num_rows


def check_shard(origin: PartOrigin, path: str) -> None:
    """Refuse the shard at ``path`` unless its footer says it is shard ``origin.index`` of
    the job ``origin.job`` wrote, with the rows it holds (read by memory-mapping it)."""
    with damaged_if_unreadable(path), pa.memory_map(path) as source:
        table = pa.ipc.open_stream(source).read_all()
    origin.check_table(path, table)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order (a column a part lacks is null)."""
    columns = [table[f.name] if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata()).cast(schema)


def _unified_schema(paths: list[str]) -> pa.Schema:
    """The parts' one schema, with the ``huggingface`` features they all describe
    themselves with, where ``datasets`` reads them.

    Why keep them: a pool written by ``datasets`` keeps a ClassLabel's names there (the
    column holds codes), and the parts keep that metadata, so ``datasets.load_dataset``
    read the parts with the names while the ``save_to_disk`` copy, built from the columns
    alone, gave plain integers: one selection, two datasets."""
    found = [read_schema(p) for p in paths]
    try:
        unified = pa.unify_schemas([s.remove_metadata() for s in found],
                                   promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"the parts' columns do not agree ({exc})", where=paths[0]) from None
    described = {(s.metadata or {}).get(b"huggingface") for s in found}
    if len(described) == 1 and (features := described.pop()) is not None:
        kept = unified.with_metadata({b"huggingface": features})
        if _hf_metadata_problem(kept) is None:
            return kept
    return unified


def check_hf_schema(pool: Corpus, parse: bool = False) -> None:
    """Refuse, before any work, a pool column that the ``save_to_disk`` layout cannot
    hold (a Parquet map, a time with time zone...): ``datasets`` fails on it only after
    every part is written, so the job would end without its manifest. Call it at a job's
    start when ``save_to_disk`` is set; Parquet, Arrow and HF pools answer from their
    metadata, JSONL ones (which hold no such types) only when ``parse``."""
    for place, schema in pool.schemas(parse):
        _features(schema, place)


def _features(schema: pa.Schema, place: str) -> Any:
    """The datasets features of ``schema``; a column without one is named in one line."""
    from datasets import Features

    try:
        return Features.from_arrow_schema(schema)
    except (ValueError, TypeError, NotImplementedError):
        pass
    for column in schema:
        try:
            Features.from_arrow_schema(pa.schema([column]))
        except (ValueError, TypeError, NotImplementedError):
            raise InputError(f"column of type {column.type} has no Hugging Face datasets "
                             "equivalent, so the save_to_disk copy cannot hold it: drop "
                             "--save-to-disk (output.save_to_disk), or cast or drop the "
                             "column", where=place, field=column.name) from None
    problem = _hf_metadata_problem(schema)
    if problem is not None:  # every column has a type: the file's own description fails
        raise InputError(f"its {problem}, so the save_to_disk copy cannot be made: drop "
                         "--save-to-disk (output.save_to_disk), or write the file again "
                         "without that metadata", where=place)
    return Features.from_arrow_schema(schema)


def _hf_metadata_problem(schema: pa.Schema) -> str | None:
    """Why ``datasets`` cannot read the ``huggingface`` metadata of ``schema`` (the
    features a file written by ``datasets`` describes itself with: ClassLabel names,
    sequences), or None when it can or there is none.

    Why: a file whose metadata is not JSON, or names a feature type ``datasets`` does not
    know, made ``Features.from_arrow_schema`` raise a JSONDecodeError, TypeError or
    ValueError from deep inside ``datasets``: a traceback with ``--save-to-disk``, and,
    without it, a selection carrying the same metadata that ``datasets`` cannot load."""
    if b"huggingface" not in (schema.metadata or {}):
        return None
    from datasets import Features

    try:
        Features.from_arrow_schema(schema)
    except Exception as exc:  # whatever datasets raises on a description it cannot read
        said = " ".join(str(exc).split())[:200] or type(exc).__name__
        return (f"'huggingface' schema metadata is not one Hugging Face datasets reads "
                f"({type(exc).__name__}: {said})")
    return None


def datasets_notes(schema: pa.Schema, pool_schemas: Iterable[pa.Schema] = ()) -> list[str]:
    """A note naming the columns of an output ``schema`` that Hugging Face ``datasets``
    has no type for (a Parquet map, ``arrow.uuid``, ``decimal32``, a list view...), or
    none: ``datasets.load_dataset`` fails on such a selection, which pyarrow and pandas
    read. Said in the manifest and the summary rather than refused: the selection is
    right, and those readers need it as it is (``save_to_disk``, which needs datasets,
    refuses such a column before work, :func:`check_hf_schema`). ``pool_schemas``: the
    pool files' own schemas, whose ``huggingface`` metadata the parts keep."""
    described = [s for s in [schema, *pool_schemas] if b"huggingface" in (s.metadata or {})]
    if all(_plain(field.type) for field in schema) and not described:
        return []  # no need to import datasets
    try:
        from datasets import Features
    except ImportError:
        return []
    problem = next(filter(None, map(_hf_metadata_problem, described)), None)
    if problem is not None:
        return [f"the pool's {problem}, and the parts keep it as the pool had it, so "
                "datasets.load_dataset cannot read this selection (pyarrow and pandas read "
                "it): write the pool again without that metadata to read it with datasets"]
    unreadable = []
    for column in schema:
        try:
            Features.from_arrow_schema(pa.schema([column]))
        except (ValueError, TypeError, NotImplementedError):
            unreadable.append(f"{column.name!r} ({column.type})")
    if not unreadable:
        return []
    return [f"Hugging Face datasets has no type for the column(s) {', '.join(unreadable)}, "
            "so datasets.load_dataset cannot read this selection (pyarrow and pandas read "
            "it): cast or drop the column in the pool to read the selection with datasets"]


def _plain(kind: pa.DataType) -> bool:
    """Whether ``kind`` is built of types every reader of a selection knows (numbers,
    strings, binaries, times, lists and structs of them), with no need to ask datasets."""
    if isinstance(kind, pa.ExtensionType) or pa.types.is_map(kind) \
            or pa.types.is_decimal(kind) or pa.types.is_interval(kind):
        return False
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) \
            or pa.types.is_fixed_size_list(kind):
        return _plain(kind.value_type)
    if pa.types.is_struct(kind):
        return all(_plain(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_dictionary(kind):
        return _plain(kind.value_type)
    return (pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind) or pa.types.is_null(kind)
            or pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or pa.types.is_fixed_size_binary(kind) or pa.types.is_temporal(kind))


def _dataset_info(schema: pa.Schema, size: int) -> dict[str, Any]:
    """``dataset_info.json`` as ``save_to_disk`` writes it (top-level keys sorted)."""
    from datasets import DatasetInfo, Features
    from datasets.utils.py_utils import asdict

    info = asdict(DatasetInfo(features=Features.from_arrow_schema(schema), dataset_size=size,
                              size_in_bytes=size))
    return {key: info[key] for key in sorted(info)}


def _finished_parts(path: str) -> tuple[list[str], list[int]]:
    """The part files and their row counts of a finished selection or union folder."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        raise InputError(f"no {MANIFEST_FILE} here: give {SELECTION_FOLDERS}", where=path)
    manifest = read_json(manifest_path)
    check_record_in(path, manifest, manifest_path)  # this folder's, not another job's
    parts = manifest["output"]["parts"]
    check_parts(path, parts)  # the parts its job wrote, not others put in their place
    return [p["file"] for p in parts], [int(p["rows"]) for p in parts]


def _check_shards(path: str, shards: list[str]) -> None:
    """Refuse a ``save_to_disk`` copy whose shards (as ``state.json`` lists them) are not
    the ones the job in ``path`` wrote, all of them, in order."""
    job = job_digest(recorded_identity(path))
    for index, shard in enumerate(shards):
        if os.path.basename(shard) != shard_name(index, len(shards)):
            raise replaced(shard, f"state.json lists it as shard {index + 1} of "
                                  f"{len(shards)}")
        check_shard(PartOrigin(job, index), shard)


def load_hf(path: str | os.PathLike, runner: Runner = default_runner) -> Any:
    """The selection (or union) in ``path`` as a ``datasets.Dataset`` memory-mapped from
    ``path/.hf/``; the ``save_to_disk`` copy is written first if the folder lacks it."""
    import datasets

    path = normalize(check_path(path, "path"))
    if storage.is_remote(path):
        raise InputError("the datasets layout is written to, and mapped from, a local folder; "
                         "read the parts from the URL instead: datasets.load_dataset("
                         f"'parquet', data_files='{path}/part-*.parquet')", where=path)
    _refuse_not_a_folder(path)
    refuse_kind(path, DATASET_KINDS, "a selection", SELECTION_FOLDERS)
    hf = os.path.join(path, HF_DIR)
    _check_hf_folder(hf)
    if not os.path.lexists(os.path.join(hf, STATE_FILE)):
        refuse_legacy(path)
        parts, rows = _finished_parts(path)
        with hold_lock(path):
            folder = OutputFolder.reopen(path, DATASET_KINDS)
            write_hf(folder, parts, rows, runner)
    _check_bookkeeping(hf, [])
    shards = check_hf_data_files(hf)
    _check_bookkeeping(hf, [os.path.basename(shard) for shard in shards])
    _check_shards(path, shards)
    _check_copy(path, hf, shards)
    with damaged_if_unreadable(os.path.join(hf, STATE_FILE)):
        return datasets.load_from_disk(hf)


def _check_copy(path: str, hf: str, shards: list[str]) -> None:
    """Refuse a copy whose ``state.json`` or ``dataset_info.json`` is not what
    :func:`write_hf` writes for its shards (checked before, :func:`_check_shards`): every
    column, no output format or split, the shards' features and size."""
    from datasets import Features

    names = [os.path.basename(shard) for shard in shards]
    _check_written(hf, STATE_FILE, read_hf_state(hf),
                   _state(names, recorded_identity(path)))
    with damaged_if_unreadable(shards[0]), pa.memory_map(shards[0]) as source:
        schema = pa.ipc.open_stream(source).schema
    info = os.path.join(hf, INFO_FILE)
    with damaged_if_unreadable(info):
        found = read_json(info)
    size = sum(os.path.getsize(shard) for shard in shards)
    _check_written(hf, INFO_FILE, found,
                   _dataset_info(Features.from_arrow_schema(schema).arrow_schema, size))
