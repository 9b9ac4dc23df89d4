"""Where a part file dataselect wrote belongs, recorded in the file itself.

A job resumes from the parts it finds, and ``report``, ``eval``, ``load_hf`` and selection
from a score store read them, trusting that a part in a folder is the one the folder's
marker and manifest describe. A part edited afterwards (its scores negated and written
back with pyarrow, which keeps schema metadata), a part swapped for another job's, or a
marker whose identity was edited to match other settings, was read as if it were: a job
resumed from it, a report drew it, and each exited 0 with a wrong result.

So every part records, when it is written, in its own metadata (the Parquet footer, the
Arrow IPC schema; an ``.npz`` file: a member named ``footer``):

- ``job``: a digest of the identity of the folder it was written into (the marker's
  ``identity``; for a score store, the description its ``_manifest.json`` holds);
- ``index``: its partition, and ``rows``: its row count;
- ``digest``: a hash of the values of its ``columns``, taken from the arrays in memory as
  they are written, so it costs no read: every column of a selection or union part (and
  of its ``save_to_disk`` shard), which hold only the chosen rows, so that rewritten text
  is caught too; the ids, scores and filter column of a score part, which has a row per
  pool row.

The records written beside the parts (a selection's ``.manifest.json``, a run's
``.run.json``, an evaluation's ``results.json``) name the job they belong to the same way
(:data:`RECORD_JOB_KEY`), so one copied in from another output is refused too.

Readers check what costs nothing: the footer (job, index, rows) whenever a part is reused
or opened, which reads no data, and the digest wherever the columns are read anyway
(selection reads a score part whole). A part with no footer was written by an older
version, or rewritten by a tool that dropped it: where it came from is unknown, and it is
refused the same way (``--overwrite`` recomputes it). The recorded values are a function of
the job's identity and the part's content, so a rerun or a resume writes the same bytes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, parse_json
from dataselect.outdir import recorded_files, recorded_identity, refuse_foreign_data
from dataselect.output import jsonable, load_arrays, read_part_info, read_schema, read_table

FOOTER_KEY = b"dataselect.part"
NPZ_MEMBER = "footer"  # the member of an .npz file that holds its footer


def job_digest(identity: Any) -> str:
    """A short digest of a folder's identity as its marker holds it (JSON, keys sorted)."""
    text = json.dumps(jsonable(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def columns_digest(table: pa.Table, names: Iterable[str]) -> str:
    """A hash of the values of ``table``'s columns ``names``, the same however the table is
    cut into chunks (in memory when written, as read back from the file)."""
    hasher = xxhash.xxh3_128()
    for name in names:
        hasher.update(name.encode() + b"\0")
        _feed(hasher, table[name].combine_chunks())
    return hasher.hexdigest()


def _feed(hasher: Any, array: pa.Array) -> None:
    """Feed one column's values: which are null, then the values (numbers as their bytes,
    text and bytes as their lengths and contents; other types as below, never the bytes
    under a null, which differ between an array in memory and one read back)."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if isinstance(array.type, pa.ExtensionType):
        array = array.storage
    hasher.update(len(array).to_bytes(8, "little"))
    if array.null_count:
        hasher.update(np.packbits(array.is_valid().to_numpy(zero_copy_only=False)).tobytes())
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        hasher.update(np.ascontiguousarray(array.fill_null(0).to_numpy()).tobytes())
        return
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) \
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) \
            or pa.types.is_string_view(kind) or pa.types.is_binary_view(kind) \
            or pa.types.is_fixed_size_binary(kind):
        _feed_bytes(hasher, array)
    elif pa.types.is_null(kind):
        return
    elif pa.types.is_boolean(kind):
        hasher.update(np.packbits(array.fill_null(False).to_numpy(zero_copy_only=False))
                      .tobytes())
    elif pa.types.is_temporal(kind) and kind.bit_width in (32, 64):
        # timestamps, dates, times, durations: their counts of units
        _feed(hasher, array.view(pa.int32() if kind.bit_width == 32 else pa.int64()))
    elif pa.types.is_decimal(kind):
        _feed_bytes(hasher, array.cast(pa.large_string()))
    elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)
          or pa.types.is_fixed_size_list(kind) or pa.types.is_map(kind)
          or pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind)):
        if pa.types.is_map(kind):  # as the list of its entries, which compute can flatten
            array = array.cast(pa.list_(pa.struct([kind.key_field, kind.item_field])))
        lengths = pc.list_value_length(array).fill_null(0).cast(pa.int64())
        hasher.update(np.ascontiguousarray(lengths.to_numpy()).tobytes())
        _feed(hasher, array.flatten())  # the values of the non-null lists only
    elif pa.types.is_struct(kind):
        for field, child in zip(kind, array.flatten(), strict=True):  # parent nulls applied
            hasher.update(field.name.encode() + b"\0")
            _feed(hasher, child)
    else:  # a union or a type newer than this code: its values as Python sees them
        hasher.update(repr(array.to_pylist()).encode())


def _feed_bytes(hasher: Any, array: pa.Array) -> None:
    """Text and bytes: their lengths, then their contents."""
    values = array.cast(pa.large_binary()).fill_null(b"")
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset:
                                                            values.offset + len(values) + 1]
    hasher.update(np.diff(offsets).tobytes())
    data = values.buffers()[2]
    if data is not None:
        hasher.update(memoryview(data)[int(offsets[0]):int(offsets[-1])])


def digestible(schema: pa.Schema, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that ``schema`` has as numbers, text or bytes (what
    :func:`columns_digest` hashes), in that order."""
    found = []
    for name in names:
        index = schema.get_field_index(name)
        if index < 0:
            continue
        kind = schema.field(index).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_string_view(kind) or pa.types.is_binary_view(kind)):
            found.append(name)
    return found


@dataclass(frozen=True)
class PartOrigin:
    """Where a part belongs: the folder's identity digest (:func:`job_digest`) and the
    part's partition index."""

    job: str
    index: int

    def footer(self, rows: int, digest: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"job": self.job, "index": self.index, "rows": rows, **(digest or {})}

    def stamp(self, table: pa.Table, columns: Iterable[str] = (), *, every: bool = False,
              **extra: Any) -> pa.Table:
        """``table`` with its footer in its schema metadata, the values of those of
        ``columns`` it holds as numbers or text hashed, or with ``every`` all its columns
        whatever their type (and ``extra`` keys: the digest of a file that goes with it).

        Selection and union parts (and their ``save_to_disk`` shards) hash every column:
        they hold only the chosen rows, so hashing their pool columns (the text a user
        reads) costs little, and a part whose text was rewritten, footer kept, is refused
        wherever it is read instead of served as the selection. Score parts hold a row
        per pool row and hash their ids and scores only."""
        names = list(table.column_names) if every else digestible(table.schema, columns)
        digest = {"columns": names, "digest": columns_digest(table, names)} if names else {}
        digest.update(extra)
        metadata = dict(table.schema.metadata or {})
        metadata[FOOTER_KEY] = json.dumps(self.footer(table.num_rows, digest),
                                          sort_keys=True).encode()
        return table.replace_schema_metadata(metadata)

    def check(self, path: str | os.PathLike, metadata: dict[bytes, bytes] | None,
              rows: int | None) -> dict[str, Any]:
        """Refuse the part at ``path`` unless its footer (in ``metadata``) says it belongs
        here and holds ``rows`` rows (None: not known without reading it); returns the
        footer."""
        footer = read_footer(path, (metadata or {}).get(FOOTER_KEY))
        # the footer's number, then the folder's: "its rows is 40, not 39" read as if the
        # file held 40 where the manifest listed 39, the other way round
        wrong = [f"its footer records {key} {footer.get(key)!r} where {whose} {want!r}"
                 for key, want, whose in (("index", self.index, "the folder's list has"),
                                          ("rows", rows, "the folder's record has"))
                 if want is not None and footer.get(key) != want]
        if footer.get("job") != self.job:
            wrong.insert(0, "it names another job than the one its folder's marker "
                            "records")
        if wrong:
            raise replaced(path, "; ".join(wrong))
        return footer

    def check_file(self, path: str | os.PathLike, rows: int | None = None
                   ) -> dict[str, Any]:
        """:meth:`check` for the part file at ``path``, from its footer alone: no data is
        read, whatever the part's size."""
        metadata, found = read_part_info(path)
        footer = self.check(path, metadata, found)
        if rows is not None and found != rows:
            raise replaced(path, f"it holds {found} rows where this job has {rows!r}")
        return footer

    def check_reused(self, path: str | os.PathLike, rows: int, schema: pa.Schema) -> None:
        """Refuse a finished part a resumed job would keep as its result unless it is the
        one written here: its footer (:meth:`check_file`), its columns and their types
        (``schema``, what this job writes: a column dropped, retyped or added since), and
        the values its footer hashed (ids, scores, ranks: scores negated, rows reordered).
        An output part holds the selected rows only, so reading those columns is cheap."""
        footer = self.check_file(path, rows)
        found = read_schema(path)
        difference = schema_difference(found, schema)
        if difference:
            raise replaced(path, difference)
        names = [n for n in hashed_columns(path, footer) if n in found.names]
        check_values(path, read_table(path, names), footer)

    def read(self, path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
        """The part at ``path`` (all its columns, or ``columns`` and those its footer
        hashed), refused unless it is the one written here with the values written."""
        if columns is None:
            return self.check_table(path, read_table(path))
        schema = read_schema(path)
        footer = self.check(path, schema.metadata, None)
        wanted = [*hashed_columns(path, footer), *columns]
        names = [n for n in dict.fromkeys(wanted) if n in schema.names]
        return self.check_table(path, read_table(path, names))

    def check_table(self, path: str | os.PathLike, table: pa.Table) -> pa.Table:
        """Refuse a part read whole (``table``) whose footer or values are not what this
        folder wrote; returns ``table``."""
        footer = self.check(path, table.schema.metadata, table.num_rows)
        check_values(path, table, footer)
        return table

    def stamp_arrays(self, arrays: dict[str, np.ndarray], rows: int = 0) -> dict[str, Any]:
        """``arrays`` (an ``.npz`` file's members) with their footer member."""
        footer = self.footer(rows, {"digest": arrays_digest(arrays)})
        return {**arrays, NPZ_MEMBER: np.array(json.dumps(footer, sort_keys=True))}

    def load_arrays(self, path: str | os.PathLike) -> dict[str, np.ndarray]:
        """The members of the ``.npz`` file at ``path``, without the footer, once its
        footer says it belongs here and its arrays are the ones written."""
        return self.check_arrays(path, load_arrays(path))

    def check_arrays(self, path: str | os.PathLike, saved: dict[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
        """:meth:`load_arrays` for members already read (``saved``)."""
        raw = saved.get(NPZ_MEMBER)
        footer = self.check(path, {FOOTER_KEY: str(raw).encode()} if raw is not None
                            else None, None)
        arrays = {name: value for name, value in saved.items() if name != NPZ_MEMBER}
        if footer.get("digest") != arrays_digest(arrays):
            raise replaced(path, "its arrays are not the ones dataselect wrote")
        return arrays


# the key of a record dataselect writes beside parts (a selection's or union's
# .manifest.json, a run's .run.json, an evaluation's results.json) that names the job it
# belongs to: the job_digest of its folder's marker identity
RECORD_JOB_KEY = "job_digest"


def check_record_job(record: Any, path: str, job: str) -> None:
    """Refuse the record at ``path`` (read as ``record``) unless it names the job ``job``
    (:func:`job_digest` of its folder's marker identity, or the run's record of it).

    A record copied in from another output (another run's ``.run.json``, another job's
    ``.manifest.json``, a whole task folder from a run with other settings) is dataselect's
    own and reads back well: without this, ``report`` drew that other job's settings and
    numbers, and ``eval`` trained under them, each exiting 0, where a rerun of the job
    refuses the folder. A record with no job was written by an older dataselect."""
    found = record.get(RECORD_JOB_KEY) if isinstance(record, dict) else None
    if found is None:
        raise InputError("records no job it belongs to (written by an older dataselect): "
                         "rerun the job with --overwrite to write it again", where=path)
    if found != job:
        raise InputError("belongs to another job than the one this output folder records "
                         f"(its {RECORD_JOB_KEY} is not the job's): it, or its folder's "
                         "marker, was copied in from another output; restore it, or rerun "
                         "the job with --overwrite to write it again", where=path)


# the key under which a record whose numbers are shown as results (an evaluation's
# results.json and each training's result in eval/runs/) keeps a digest of the rest of it
RECORD_CONTENT_KEY = "content_digest"


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with :data:`RECORD_CONTENT_KEY`: the :func:`job_digest` of everything
    else in it, as JSON writes it (so it reads back to the same digest)."""
    body = {k: v for k, v in record.items() if k != RECORD_CONTENT_KEY}
    return {**body, RECORD_CONTENT_KEY: job_digest(body)}


def seal_problem(record: Any) -> str | None:
    """Why ``record`` (read back from JSON) is not as dataselect sealed it, or None.

    Why: the job digest names the job a record belongs to, not its numbers. An
    evaluation's ``results.json`` with a loss edited (valid JSON, the same job) was drawn
    by ``report`` as the evaluation's result, exit 0, though edited results are refused."""
    if not isinstance(record, dict) or RECORD_CONTENT_KEY not in record:
        return ("records no digest of its contents (written by an older dataselect, or "
                "edited)")
    body = {k: v for k, v in record.items() if k != RECORD_CONTENT_KEY}
    if record[RECORD_CONTENT_KEY] != job_digest(body):
        return ("was edited after dataselect wrote it: its contents do not match the "
                f"digest it records ({RECORD_CONTENT_KEY})")
    return None


def check_sealed(record: Any, path: str, fix: str) -> None:
    """Refuse ``record`` (read from ``path``) unless :func:`seal_problem` finds nothing;
    ``fix`` says how to write it again."""
    problem = seal_problem(record)
    if problem is not None:
        raise InputError(f"{problem}; {fix}", where=path)


def check_record_in(folder: str, record: Any, path: str) -> str:
    """:func:`check_record_job` against the job the marker of ``folder`` records; returns
    that job's digest.

    The stored digest alone is a claim the record makes about itself: a manifest of
    another job, its ``job_digest`` edited to this one's, passed, and ``report`` showed
    that job's seed and numbers for this folder. So the settings the record states (a
    selection's ``job``, a run's ``recipe``, a union's counts and format) are compared
    with the identity the marker records, too."""
    identity = recorded_identity(folder)
    job = job_digest(identity)
    check_record_job(record, path, job)
    clash = record_contradicts(record, identity)
    if clash is not None:
        raise InputError(f"belongs to another job than the one this output folder records "
                         f"(its {clash} is not the job's): it, or its folder's marker, was "
                         "copied in from another output; restore it, or rerun the job with "
                         "--overwrite to write it again", where=path)
    return job


# settings that an identity records resolved (absolute) and a record as the user gave them
_SPELLED_PATHS = frozenset({"pool", "target", "paths", "eval", "path"})


def record_contradicts(record: Any, identity: Any) -> str | None:
    """The first setting (``job.seed``) that ``record`` (a manifest or run record) states
    otherwise than the marker's ``identity``; None when none does. Only settings both
    hold are compared (an identity leaves out the ones that do not change the output),
    input paths not (each side spells them its own way); a record of a shape this does
    not know is left to :func:`check_record_job`."""
    if not isinstance(record, dict) or not isinstance(identity, dict):
        return None
    settings = identity.get("settings")
    if isinstance(settings, dict):
        for key in ("job", "recipe"):
            if isinstance(record.get(key), dict):
                return _first_difference(jsonable(record[key]), settings, key)
        return None
    output = record.get("output") if isinstance(record.get("output"), dict) else {}
    if "format" in identity and "format" in output and output["format"] != identity["format"]:
        return "output.format"
    if ("selections" in identity and isinstance(record.get("counts"), dict)  # a union
            and jsonable(record["counts"].get("per_task")) != identity.get("counts")):
        return "counts.per_task"
    chosen = identity.get("selection")  # a selection written through the API
    if isinstance(chosen, dict):
        for key, name in (("selection", "policy"), ("scores", "scores")):
            if key in record and name in chosen and jsonable(record[key]) != chosen[name]:
                return key
    return None


def _first_difference(stated: Any, recorded: Any, where: str) -> str | None:
    """The dotted name of the first key both mappings hold with other values."""
    if isinstance(stated, dict) and isinstance(recorded, dict):
        for key in sorted(set(stated) & set(recorded)):
            if key in _SPELLED_PATHS:
                continue
            found = _first_difference(stated[key], recorded[key], f"{where}.{key}")
            if found is not None:
                return found
        return None
    return None if stated == recorded else where


def check_parts(folder: str, parts: list[dict[str, Any]]) -> None:
    """Refuse a selection folder whose parts are not the ones its job wrote: each listed
    part's footer must name the job the folder's marker records, its place in the list
    and the rows the manifest lists (:mod:`dataselect.footer`; read from the footers
    alone, whatever the parts' size), and no other part file may lie beside them (readers
    of the folder, and the report, take every ``part-*`` file)."""
    job = job_digest(recorded_identity(folder))
    for index, part in enumerate(parts):
        PartOrigin(job, index).check_file(os.path.join(folder, part["file"]), part.get("rows"))
    listed = {os.path.normpath(part["file"]) for part in parts}
    extra = sorted(name for name in (os.path.basename(p) for p in
                                     glob.glob(os.path.join(folder, "part-*")))
                   if name not in listed)
    if extra:
        raise InputError("is not a part of this selection (its folder's manifest does not "
                         "list it), yet every reader of the folder would read its rows as "
                         "the selection's: move it away",
                         where=os.path.join(folder, extra[0]))
    refuse_foreign_data(folder, [*listed, *recorded_files(folder)])


def reusable(check: Callable[[], object], overwrite: bool) -> bool:
    """Whether a finished part found on resuming may be reused: ``check`` (one of
    :class:`PartOrigin`'s) passes. A part that fails it is refused with the check's one
    line, or, with ``overwrite`` (the user asked to replace what is there), computed again:
    it is listed in the folder's marker, so it is dataselect's to replace."""
    try:
        check()
    except InputError:
        if overwrite:
            return False
        raise
    return True


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """A hash of named arrays: names, types, shapes and values."""
    hasher = xxhash.xxh3_128()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        hasher.update(value.tobytes())
    return hasher.hexdigest()


def read_footer(path: str | os.PathLike, raw: bytes | None) -> dict[str, Any]:
    """A part's footer from its metadata value; none, or not one dataselect writes, is
    refused: where the part came from is unknown."""
    if raw is None:
        raise replaced(path, "it records no origin (written by an older dataselect, or "
                             "rewritten by another tool)")
    try:
        footer = parse_json(raw)
    except UnreadableJSON:
        footer = None
    if not isinstance(footer, dict):
        raise replaced(path, "its record of origin is not dataselect's")
    return footer


def check_values(path: str | os.PathLike, table: pa.Table, footer: dict[str, Any]) -> None:
    """Refuse ``table`` (read from ``path``) when the columns its footer hashed no longer
    hold the values written; a footer that hashed none checks nothing."""
    names = hashed_columns(path, footer)
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise replaced(path, f"it lacks the column {missing[0]!r} it was written with")
    if names and columns_digest(table, names) != footer.get("digest"):
        raise replaced(path, f"its {', '.join(names)} values are not the ones dataselect "
                             "wrote")


def schema_difference(found: pa.Schema, want: pa.Schema) -> str | None:
    """How a part's columns (``found``) differ from the ones its job writes (``want``),
    in words for :func:`replaced`, or None when they are the same (schema metadata aside:
    it holds the footer)."""
    if found.equals(want, check_metadata=False):
        return None
    missing = [n for n in want.names if n not in found.names]
    if missing:
        return f"it lacks the column {missing[0]!r} it was written with"
    extra = [n for n in found.names if n not in want.names]
    if extra:
        return f"it has a column {extra[0]!r} it was not written with"
    if found.names != want.names:
        return "its columns are not in the order they were written in"
    for field, written in zip(found, want, strict=True):
        if field.type != written.type:
            return f"its column {field.name!r} is {field.type}, not {written.type} as written"
    return "its columns are not the ones it was written with"


def hashed_columns(path: str | os.PathLike, footer: dict[str, Any]) -> list[str]:
    """The columns whose values ``footer`` (of the part at ``path``) hashed."""
    names = footer.get("columns") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise replaced(path, "its record of origin is not dataselect's")
    return names


def verified(path: str | os.PathLike, table: pa.Table) -> pa.Table:
    """``table``, a part read whole from ``path`` whose footer was checked already (its
    job, index and rows: :meth:`PartOrigin.check_file`), once its hashed values are the
    ones written."""
    check_values(path, table, read_footer(path, (table.schema.metadata or {}).get(FOOTER_KEY)))
    return table


def replaced(path: str | os.PathLike, why: str) -> InputError:
    """The one line for a part that is not the one its folder's records describe."""
    return InputError(f"this file is not the one dataselect wrote here ({why}): it, or its "
                      "folder's records, were edited or replaced since; rerun the job with "
                      "--overwrite to compute it again, or delete the output folder and "
                      "rerun", where=os.fspath(path))
