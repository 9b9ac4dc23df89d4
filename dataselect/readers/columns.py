"""What every reader's columns are held to, whatever the format: names an output can keep,
types a selection can take rows of, nesting Arrow reads back, and valid string bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from dataselect.errors import InputError
from dataselect.readers.base import MAX_NESTING, Piece, unreadable
from dataselect.schemas import nesting


def check_column_names(place: str, schema: pa.Schema) -> None:
    """Refuse column names no output can keep, before any work: two columns of one name
    (pyarrow refuses to pick one by name, so ids, text and labels could not be read), two
    fields of one name inside a struct at any depth (Arrow keeps both, but pandas and
    ``datasets`` read one value and drop the other, and polars cannot read the output)
    and a name holding a NUL character at any depth (``datasets`` cuts the name there, so
    the output no longer loads as one dataset)."""
    repeated = next((n for n in schema.names if schema.names.count(n) > 1), None)
    if repeated is not None:
        raise InputError("has two columns of the same name; rename or drop one",
                         where=place, field=repeated)
    for field in schema:
        paths = list(_fields_under(field.name, field.type))
        if (name := next((p for p, _ in paths if "\0" in p), None)) is not None:
            raise InputError(
                "a column or key name holds a NUL character (\\u0000), which datasets and "
                "other readers cut the name at; rename it", where=place,
                field=name)
        if (name := next(filter(None, (_repeated_child(p, k) for p, k in paths)),
                         None)) is not None:
            raise InputError(
                "a struct holds two fields of this name, of which pandas, datasets and "
                "polars keep one value or none; rename or drop one", where=place,
                field=name)
        if (kind := _untakeable(field.type)) is not None:
            raise InputError(
                f"has type {kind}, whose rows Arrow cannot pick out (a selection takes rows "
                "from every column); cast the column to a plain type (a string view to "
                "string, a run-end-encoded column to its values' type) or drop it",
                where=place, field=field.name)


def _fields_under(name: str, kind: pa.DataType) -> Iterator[tuple[str, pa.DataType]]:
    """``(path, type)`` of column ``name`` and of every field under it, parents first: a
    struct's field as ``name.key``, list items as ``name[]``, a map's keys and values as
    ``name[].key`` and ``name[].value``, a dictionary as its values, an extension type
    (a tensor, a UUID) as its storage."""
    yield name, kind
    if pa.types.is_dictionary(kind):
        yield from _fields_under(name, kind.value_type)
    elif isinstance(kind, pa.BaseExtensionType):
        yield from _fields_under(name, kind.storage_type)
    elif pa.types.is_map(kind):
        yield from _fields_under(f"{name}[].key", kind.key_type)
        yield from _fields_under(f"{name}[].value", kind.item_type)
    elif pa.types.is_struct(kind) or pa.types.is_union(kind):
        for child in kind:
            yield from _fields_under(f"{name}.{child.name}", child.type)
    elif kind.num_fields:  # lists of any kind
        yield from _fields_under(f"{name}[]", kind.field(0).type)


def _repeated_child(name: str, kind: pa.DataType) -> str | None:
    """``name.key`` where struct ``name`` holds two fields named ``key``."""
    if not (pa.types.is_struct(kind) or pa.types.is_union(kind)):
        return None
    names = [child.name for child in kind]
    return next((f"{name}.{n}" for n in names if names.count(n) > 1), None)


def _untakeable(kind: pa.DataType) -> pa.DataType | None:
    """The first type at or under ``kind`` that Arrow's ``take`` (or an empty table of
    it) does not support: view strings, run-end encoding, unions. They reached the write
    pass and failed there, after scoring, as a traceback."""
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind) \
            or pa.types.is_run_end_encoded(kind) or pa.types.is_union(kind):
        return kind
    children = (kind.field(i).type for i in range(kind.num_fields))  # any nested type
    return next((found for child in children if (found := _untakeable(child)) is not None),
                None)


def check_nesting(path: str, schema: pa.Schema) -> None:
    """The limit JSON lines are held to (:func:`~dataselect.readers.jsonl.check_json_depth`),
    for tabular files: a deeper column could not be read back from an Arrow output."""
    for field in schema:
        if nesting(field.type) > MAX_NESTING:
            raise InputError(
                f"column is nested {nesting(field.type)} levels deep, more than the "
                f"{MAX_NESTING} Arrow can read back; flatten it, or store it as a JSON string",
                where=path, field=field.name)

def check_values(piece: Piece, table: pa.Table) -> None:
    """Parquet and Arrow readers do not check string bytes, so a writer's non-UTF-8 bytes
    read fine but end up in output that pandas and polars refuse; a corrupt batch can hold
    offsets out of range. Full validation catches both, at a few percent of the read."""
    for name, column in zip(table.column_names, table.columns):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            if "utf8" not in str(exc).lower().replace("-", ""):
                raise unreadable(piece.path, piece.fmt, exc, field=name) from None
            row = _first_invalid_row(column)
            where = piece.path if row is None else piece.where(piece.first_row + row)
            raise InputError(
                "invalid UTF-8 in a string value; rewrite the file with this column decoded "
                "to valid UTF-8, or remove the bad bytes", where=where, field=name,
            ) from None


def _first_invalid_row(column: pa.ChunkedArray) -> int | None:
    """Binary search over slices of a flat string column (a slice validates its own values
    only). Nested columns validate their whole child array whatever the slice: no row."""
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    first, stop = 0, len(column)  # the first bad row is in [first, stop)
    while stop - first > 1:
        middle = (first + stop) // 2
        try:
            column.slice(first, middle - first).validate(full=True)
            first = middle
        except pa.ArrowInvalid:
            stop = middle
    return first

