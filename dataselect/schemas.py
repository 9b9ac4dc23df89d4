"""One schema for rows read from many files, or one line naming the files that disagree.

Why: each input file (and each piece of a large JSONL file) is read on its own, so each has
the types its own values suggest: a column may be ``int64`` in one file and ``string`` in
another, absent from a third, and all-null (type ``null``) in a fourth. Rows of different
files written side by side must still make one dataset that pandas, pyarrow and
``datasets`` open, so they are brought to one schema, and only where no value changes:
a missing or all-null column becomes nulls of the other files' type, an integer column
joins a float column only when every value is exact as a float, a struct gains the fields
other files give it. Anything else (``int64`` against ``string``, a list against a
scalar, text against bytes at any depth, a decimal against a float at any depth unless its
type proves every value a float too) is refused before rows are mixed, naming both files,
the column and both types.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from dataselect.checks import shown
from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, parse_json
from dataselect.output import OutputFormat, read_from, write_to


def unify(schemas: Sequence[tuple[str, pa.Schema]]) -> pa.Schema:
    """The one schema every ``(place, schema)`` converts to without loss, in the order the
    columns first appear; or an :class:`InputError` naming two places that disagree."""
    check_class_labels(schemas)
    unified = pa.schema([])
    first_place: dict[str, str] = {}
    for place, schema in _decoded_where_mixed(schemas):
        if any(_lossy_join(unified.field(f.name), f) for f in schema
               if unified.get_field_index(f.name) >= 0):
            raise _disagreement(unified, first_place, place, schema)
        try:
            unified = pa.unify_schemas([unified, schema], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            raise _disagreement(unified, first_place, place, schema) from None
        for name in schema.names:
            first_place.setdefault(name, place)
    return unified


def hf_features(schema: pa.Schema) -> dict[str, Any] | None:
    """The feature of each column that the schema's ``huggingface`` metadata (written by
    ``datasets``) describes, by column name: ``{}`` without that metadata or without
    features in it, None when it is there but cannot be read (not JSON, an ``info`` or
    ``features`` that is no object)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    try:
        found = parse_json(raw)
    except UnreadableJSON:
        return None
    info = found.get("info", {}) if isinstance(found, dict) else None
    if not isinstance(info, dict):
        return None
    features = info.get("features")  # none, or null: no description, as datasets reads it
    return {} if features is None else features if isinstance(features, dict) else None


# datasets' list features (older files write Sequence, newer List; a JSON list is one too)
_LIST_FEATURES = ("Sequence", "List", "LargeList")


def _class_labels(feature: Any, place: str = "") -> dict[str, Any]:
    """The ClassLabels inside one column's ``feature`` description, by where they are
    (``""`` for the column itself, ``"[]"`` for its items, ``".f"`` for a struct field):
    their names, or the description as it is where it holds no list of names."""
    if isinstance(feature, list):
        return _class_labels(feature[0], place + "[]") if len(feature) == 1 else {}
    if not isinstance(feature, dict):
        return {}
    kind = feature.get("_type")
    if kind == "ClassLabel":
        names = feature.get("names")
        return {place: names if isinstance(names, list) else feature}
    if kind in _LIST_FEATURES:
        return _class_labels(feature.get("feature"), place + "[]")
    if kind is not None:
        return {}
    found: dict[str, Any] = {}
    for name, child in feature.items():
        found.update(_class_labels(child, f"{place}.{name}"))
    return found


def check_class_labels(schemas: Sequence[tuple[str, pa.Schema]]) -> None:
    """Refuse, naming both places and the column, input files that describe a column as a
    ``datasets`` ClassLabel with other names (or names in another order), or as a
    ClassLabel in one and not in another, or whose ``huggingface`` metadata cannot be read
    where another's makes the column a ClassLabel.

    Why: a ClassLabel column holds class numbers, and only its file's names say what they
    mean (0 is ``neg`` in one file, ``pos`` in another), but rows of all input files are
    written as one dataset with one description: the parts, the ``save_to_disk`` copy and
    the label counts (precision) read every file's numbers with one file's names, and a
    plain file's ``7`` became a class number out of range, all with exit 0."""
    seen: dict[str, dict[str | None, str]] = {}  # column -> {description: first place}
    for place, schema in schemas:
        names = tuple(dict.fromkeys(schema.names))
        keys = _column_keys((schema.metadata or {}).get(b"huggingface"), names)
        for name, key in zip(names, keys):
            described = seen.setdefault(name, {})
            described.setdefault(key, place)
            labelled = [k for k in described if k]
            if labelled and len(described) > 1:
                other = next(k for k in described if k != key)
                raise InputError(_labels_clash(key, other, described[other]), where=place,
                                 field=name)


@functools.lru_cache(maxsize=64)
def _column_keys(raw: bytes | None, names: tuple[str, ...]) -> tuple[str | None, ...]:
    """:func:`_described` of each of ``names`` in the metadata ``raw``; None for each where
    it cannot be read. Kept: every piece of a large file has the same description."""
    features = hf_features(pa.schema([], metadata=None if raw is None
                                     else {b"huggingface": raw}))
    return tuple(None if features is None else _described(features.get(name))
                 for name in names)


def _described(feature: Any) -> str:
    """One column's ClassLabels as a key ("" for none), comparable between files."""
    try:
        labels = _class_labels(feature)
        return json.dumps(labels, sort_keys=True) if labels else ""
    except RecursionError:  # a description nested beyond reading: not the same as another
        return json.dumps({"": "(a description nested too deeply to read)"})


def _labels_clash(here: str | None, there: str | None, other: str) -> str:
    """The message for a column described as ``here`` in one file and ``there`` in
    ``other`` (:func:`_described`'s keys; None: metadata that cannot be read)."""
    if here is None or there is None:
        labelled = there if here is None else here
        which = "here" if here is None else f"in {other}"
        said = (f"{which} the 'huggingface' schema metadata cannot be read, so what its "
                f"numbers mean is unknown, but it is {_shown_labels(labelled)} "
                f"{'in ' + other if here is None else 'here'}")
    else:
        said = f"it is {_shown_labels(here)} here but {_shown_labels(there)} in {other}"
    return (f"{said}; a ClassLabel column holds class numbers that only its file's names "
            "give meaning to, and the rows of one input's files are read as one dataset "
            "with one set of names, so give the column the same ClassLabel names, in the "
            "same order, in every file (datasets: Dataset.align_labels_with_mapping or "
            "cast_column), or write them all as plain values")


def _shown_labels(key: str | None) -> str:
    """A column's ClassLabels as a message names them, from :func:`_described`'s key."""
    if not key:
        return "no ClassLabel"
    return "a ClassLabel " + "; ".join(
        f"{'with names' if not where else f'at {where} with names'} {shown(names, 120)}"
        for where, names in json.loads(key).items())


def _decoded_where_mixed(schemas: Sequence[tuple[str, pa.Schema]]
                         ) -> list[tuple[str, pa.Schema]]:
    """``schemas`` with a dictionary-encoded column (a pandas categorical) given as its
    values' type wherever another file holds that column in another type: decoding loses
    nothing, and the files then agree. Where every file encodes it alike, it stays."""
    types: dict[str, set[pa.DataType]] = {}
    for _, schema in schemas:
        for field in schema:
            types.setdefault(field.name, set()).add(field.type)
    mixed = {name for name, kinds in types.items()
             if len(kinds) > 1 and any(pa.types.is_dictionary(k) for k in kinds)}
    if not mixed:
        return list(schemas)
    return [(place, pa.schema([_decoded(f) if f.name in mixed else f for f in schema],
                              metadata=schema.metadata)) for place, schema in schemas]


def _decoded(field: pa.Field) -> pa.Field:
    return field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) \
        else field


def _disagreement(unified: pa.Schema, first_place: dict[str, str], place: str,
                  schema: pa.Schema) -> InputError:
    for field in schema:
        index = unified.get_field_index(field.name)
        if index < 0:
            continue
        before = unified.field(index)
        if _clash(before, field):
            return InputError(
                f"column holds {field.type} here but {before.type} in "
                f"{first_place[field.name]}; rows of all input files are written as one "
                "dataset, so convert the column to one type in every file", where=place,
                field=field.name)
    duplicated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    return InputError("has two columns of the same name; rename one", where=place,
                      field=duplicated[0] if duplicated else None)


def _clash(before: pa.Field, field: pa.Field) -> bool:
    """Whether two files' types of one column cannot be one column's without a value
    changing its meaning. Arrow's permissive unification refuses most such pairs, but
    takes ``string`` and ``binary`` as ``binary``, and a decimal and a float as the float
    (:func:`_lossy_join`)."""
    try:
        pa.unify_schemas([pa.schema([before]), pa.schema([field])],
                         promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return True
    return _lossy_join(before, field)


def _lossy_join(before: pa.Field, field: pa.Field) -> bool:
    """Whether one place inside the two types holds values that the type Arrow joins them
    as would change: text in one and bytes in the other (one file's text would be written
    as bytes, which pandas, polars and ``datasets`` read back as bytes), or a decimal in
    one and a float in the other (a decimal is exact by intent; 0.1 or 2**60 + 1 are not
    floats, and Arrow's cast rounds them without a word)."""
    ours, theirs = _leaves(before.type), _leaves(field.type)
    return any(_lossy_pair(ours[place], kind) for place, kind in theirs.items()
               if place in ours)


def _lossy_pair(ours: pa.DataType, theirs: pa.DataType) -> bool:
    kinds = {_text_or_bytes(ours), _text_or_bytes(theirs)}
    return kinds == {"text", "bytes"} or _inexact_as_float(ours, theirs) \
        or _inexact_as_float(theirs, ours)


# decimal digits every integer of which a float of this many bits holds exactly
_FLOAT_DIGITS = {16: 3, 32: 7, 64: 15}


def _inexact_as_float(kind: pa.DataType, other: pa.DataType) -> bool:
    """Whether ``kind`` is a decimal type not every value of which the float type
    ``other`` holds exactly: only whole numbers of no more digits than the float's
    mantissa holds (``decimal128(15, 0)`` in a double) are known exact from the type."""
    if not (pa.types.is_decimal(kind) and pa.types.is_floating(other)):
        return False
    return kind.scale > 0 or kind.precision - kind.scale > _FLOAT_DIGITS[other.bit_width]


def _text_or_bytes(kind: pa.DataType) -> str | None:
    """``"text"`` for a string type, ``"bytes"`` for a binary one, else None."""
    if (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)):
        return "text"
    if (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or pa.types.is_fixed_size_binary(kind) or pa.types.is_binary_view(kind)):
        return "bytes"
    return None


def _leaves(kind: pa.DataType, place: tuple = ()) -> dict[tuple, pa.DataType]:
    """The type of every value inside ``kind`` that holds no other, by its place (a
    struct's field by name, any other child by position; a dictionary as its values)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not kind.num_fields or _text_or_bytes(kind) is not None:
        return {place: kind}
    found: dict[tuple, pa.DataType] = {}
    for i in range(kind.num_fields):
        child = kind.field(i)
        found.update(_leaves(child.type,
                             (*place, child.name if pa.types.is_struct(kind) else i)))
    return found


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """``table`` with the columns of ``schema`` in its order (nulls where it has none) and
    its types; a value that would change (an integer beyond 2**53 read as a float, say) is
    an error naming the column, never a rounded number."""
    if table.schema.equals(schema):
        return table
    columns = [_cast(table[field.name] if field.name in table.column_names
                     else pa.nulls(table.num_rows, field.type), field, where)
               for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _cast(column: pa.ChunkedArray | pa.Array, field: pa.Field, where: str
          ) -> pa.ChunkedArray | pa.Array:
    try:
        return column.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise InputError(
            f"column is {column.type} here but {field.type} in another input file, and its "
            f"values do not convert exactly ({_first_sentence(exc)}); convert the column to "
            "one type in every file", where=where, field=field.name) from None


def concat(tables: Sequence[pa.Table], places: Sequence[str]) -> pa.Table:
    """``tables`` (read from ``places``) as one table of their unified schema."""
    if len(tables) == 1:
        return tables[0]
    schema = unify(list(zip(places, (t.schema for t in tables))))
    return pa.concat_tables([conform(t, schema, p) for t, p in zip(tables, places)])


def check_storable(place: str, schema: pa.Schema, fmt: OutputFormat) -> None:
    """Refuse a column an output part in ``fmt`` cannot hold, before any part is written,
    naming the file and the column: a type the writer refuses, or one it writes but that
    reads back broken or changed (Parquet writes ``fixed_size_list<int64, 0>`` as a file no
    reader opens, and cannot write a dictionary of structs at all). Asked of the writer
    itself, once per distinct type (:func:`_storage_problem`)."""
    for field in schema:
        problem = _storage_problem(field.type, fmt)
        if problem is not None:
            raise InputError(problem, where=place, field=field.name)


@functools.lru_cache(maxsize=4096)
def _storage_problem(kind: pa.DataType, fmt: OutputFormat) -> str | None:
    """Why a column of type ``kind`` cannot be kept in ``fmt``, with the fix (None: it
    can): objects that are all empty (``{}``, at any depth) make a struct without fields,
    which Parquet cannot store; any other type is written and read back in memory."""
    if fmt == "parquet" and _has_empty_struct(kind):
        return ("holds only empty objects ({}) (at some depth), which Parquet cannot store; "
                "give the objects a key, drop the column, or write --format arrow")
    failure = _round_trip_failure(kind, fmt)
    if failure is None:
        return None
    if fmt == "arrow":
        return (f"has type {kind}, which an Arrow file cannot hold ({failure}); cast or "
                "drop the column")
    other = (", or write --format arrow" if _round_trip_failure(kind, "arrow") is None
             else "")
    return (f"has type {kind}, which Parquet cannot store ({failure}); cast or drop the "
            f"column{other}")


def _round_trip_failure(kind: pa.DataType, fmt: OutputFormat) -> str | None:
    """What goes wrong when a value and a null of type ``kind`` are written as an output
    part in ``fmt`` and read back (None: nothing). A type may come back another way that
    holds the same values (Parquet reads ``timestamp[s]`` as ``timestamp[ms]``), which
    every output already does: only an error or a changed value counts."""
    column = _sample(kind)
    sink = pa.BufferOutputStream()
    failures = (pa.ArrowException, OSError, ValueError, TypeError)
    try:
        write_to(pa.table({"c": column}), sink, fmt)
    except failures as exc:
        return _first_sentence(exc)
    try:
        back = read_from(pa.BufferReader(sink.getvalue()), fmt)
        back.validate(full=True)
    except failures as exc:
        return f"what it writes cannot be read back: {_first_sentence(exc)}"
    if back.column(0).to_pylist() != column.to_pylist():
        return "what it writes reads back as other values"
    return None


def _sample(kind: pa.DataType) -> pa.Array:
    """A value and a null of type ``kind`` (two nulls where no value can be made up): a
    list of one item, a fixed-size list full, a struct with every field set; an extension
    type's (a tensor, a UUID) from its storage type's."""
    if isinstance(kind, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(kind, _sample(kind.storage_type))
    if pa.types.is_dictionary(kind):
        values = _sample(kind.value_type).slice(0, 1)
        return pa.DictionaryArray.from_arrays(pa.array([0, None], kind.index_type), values)
    try:
        array = pa.array([_sample_value(kind), None], kind)
        array.validate(full=True)
        return array
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        return pa.nulls(2, kind)


def _sample_value(kind: pa.DataType) -> object:
    types = pa.types
    if types.is_dictionary(kind):
        return _sample_value(kind.value_type)
    if types.is_struct(kind):
        return {kind.field(i).name: _sample_value(kind.field(i).type)
                for i in range(kind.num_fields)}
    if types.is_fixed_size_list(kind):
        return [_sample_value(kind.value_type)] * kind.list_size
    if types.is_map(kind):
        return [(_sample_value(kind.key_type), _sample_value(kind.item_type))]
    if (types.is_list(kind) or types.is_large_list(kind) or types.is_list_view(kind)
            or types.is_large_list_view(kind)):
        return [_sample_value(kind.value_type)]
    if types.is_fixed_size_binary(kind) and not types.is_decimal(kind):
        return b"a" * kind.byte_width
    return next((value for test, value in _SCALARS if test(kind)), None)


# a value of each scalar type, for _sample_value
_SCALARS: tuple[tuple[Callable[[pa.DataType], bool], object], ...] = (
    (pa.types.is_boolean, True),
    (lambda k: pa.types.is_integer(k) or pa.types.is_floating(k), 1),
    (pa.types.is_decimal, decimal.Decimal(0)),
    (pa.types.is_date, datetime.date(2000, 1, 2)),
    (pa.types.is_timestamp, datetime.datetime(2000, 1, 2, 3, 4, 5)),
    (pa.types.is_time, datetime.time(1, 2, 3)),
    (pa.types.is_duration, datetime.timedelta(seconds=5)),
    (lambda k: pa.types.is_string(k) or pa.types.is_large_string(k)
     or pa.types.is_string_view(k), "a"),
    (lambda k: pa.types.is_binary(k) or pa.types.is_large_binary(k)
     or pa.types.is_binary_view(k), b"a"),
)


def _has_empty_struct(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind) and kind.num_fields == 0:
        return True
    return any(_has_empty_struct(kind.field(i).type) for i in range(kind.num_fields))


def nesting(kind: pa.DataType) -> int:
    """Levels of a column's type, counting the leaf: ``int64`` is 1, ``list<int64>`` 2; a
    JSON record's deepest value is as deep as its column (:data:`readers.base.MAX_NESTING`)."""
    return 1 + max((nesting(kind.field(i).type) for i in range(kind.num_fields)), default=0)


def _first_sentence(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__
