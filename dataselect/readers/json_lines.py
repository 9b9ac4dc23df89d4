"""JSON lines parsed one by one with Python's ``json``, where Arrow's fast reader refused
the records or may have changed a value: every refusal is an error naming the line and the
field (malformed JSON, a key given twice, a number Arrow cannot store as given, a value
whose type changes between lines, a lone surrogate)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from dataselect.errors import InputError
from dataselect.readers.base import Piece

# Integers above this are not all exact as doubles; Arrow's JSON reader turns an integer
# beyond 64 bits, or any integer in a column that also holds a fraction, into a double.
EXACT_DOUBLE_INT = 2**53


class _TooLarge:
    """Stands for a number literal Arrow cannot store as given (an integer beyond 64
    bits, a float beyond the double range, ``NaN``) while its field is looked for."""


class _NotFinite(ValueError):
    """A number literal that is no finite double (the message is the literal)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> float:
    """Python's ``json`` reads ``NaN``, ``Infinity`` and ``-Infinity``; JSON has none."""
    raise _NotFinite(text)


def _exact_int(text: str) -> int:
    value = int(text)
    if not -2**63 <= value < 2**63:
        raise OverflowError(text)
    return value


def read_jsonl_lines(piece: Piece, data: bytes) -> pa.Table:
    records, rows = [], []
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the file's final newline ends a line; it does not start one
    for offset, line in enumerate(lines):
        if not line.strip():
            continue  # blank lines are not records; line numbers still count them
        row = piece.first_row + offset
        records.append(_parse_record(piece, line, row))
        rows.append(row)
    try:
        # every record's keys count, not the first record's only (from_pylist's schema)
        table = (pa.Table.from_struct_array(pa.array(records)) if records
                 else pa.table({}))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _mixed_type_error(piece, records, rows, exc) from None
    except UnicodeEncodeError:
        raise _lone_surrogate_error(piece, records, rows) from None
    return table.append_column("_row", pa.array(rows, pa.int64()))


def _parse_record(piece: Piece, line: bytes, row: int) -> dict:
    """One line as a record, or an error naming the line: malformed JSON, a line that is
    not an object, a key given twice (Python would keep the last silently; Arrow refuses),
    an integer beyond 64 bits (Arrow would round it into a float)."""
    where = piece.where(row)
    try:
        record = json.loads(line, parse_int=_exact_int, parse_float=_finite_float,
                            parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"malformed JSON ({exc})", where=where) from None
    except _DuplicateKey as exc:
        raise InputError("key given twice in one object; keep one of them", where=where,
                         field=str(exc)) from None
    except OverflowError as exc:
        raise InputError(
            f"integer {shown_number(str(exc))} is beyond the 64-bit range that Arrow and "
            "Parquet store exactly; store it as a string (quoted)", where=where,
            field=_field_of_bad_number(line)) from None
    except _NotFinite as exc:
        raise InputError(
            f"number {shown_number(str(exc))} is not a finite double (JSON has no NaN or "
            "Infinity, and this literal is beyond the double range); store it as a string "
            "(quoted) or null", where=where, field=_field_of_bad_number(line)) from None
    if not isinstance(record, dict):
        raise InputError(f"each line must be a JSON object, got {type(record).__name__}",
                         where=where)
    return record


def shown_number(text: str, limit: int = 24) -> str:
    """A long number literal shortened for a one-line message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} digits)"


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (the message is the key)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _field_of_bad_number(line: bytes) -> str | None:
    """The top-level key whose value holds a number literal Arrow cannot store as given."""
    marker = _TooLarge()

    def parse(convert: Callable[[str], Any]) -> Callable[[str], Any]:
        def parsed(text: str) -> Any:
            try:
                return convert(text)
            except (OverflowError, _NotFinite):
                return marker
        return parsed

    record = json.loads(line, parse_int=parse(_exact_int), parse_float=parse(_finite_float),
                        parse_constant=parse(_no_constant))
    return _field_holding(record, lambda v: v is marker) if isinstance(record, dict) else None


def _mixed_type_error(piece: Piece, records: list[dict], rows: list[int],
                      exc: Exception) -> InputError:
    """Find the field and line where a value changes type, at any depth: a key of a
    nested object (``meta.a``) or the items of a list (``messages[2].content``)."""
    seen: dict[str, dict[str, int]] = {}  # column path -> kind -> first row holding it
    for record, row in zip(records, rows):
        for key, shown, kind in _value_kinds(record, "", ""):
            kinds = seen.setdefault(key, {})
            clash = next((k for k in kinds if not _kinds_join(k, kind)), None)
            if clash is not None:
                return InputError(
                    f"type changes from {clash} (line {kinds[clash] + 1}) to {kind}; give "
                    "the field one type on every line", where=piece.where(row), field=shown,
                )
            kinds.setdefault(kind, row)
    return InputError(f"cannot convert records: {exc}", where=piece.path)


_BIG_INT = f"int beyond 2**{EXACT_DOUBLE_INT.bit_length() - 1}"


def _kinds_join(first: str, then: str) -> bool:
    """Whether Arrow stores values of both kinds in one column: integers join floats as
    doubles, but only those a double holds exactly."""
    return first == then or {first, then} in ({"int", "float"}, {"int", _BIG_INT})


def _value_kinds(value: Any, key: str, shown: str) -> Iterator[tuple[str, str, str]]:
    """``(key, shown, kind)`` for ``value`` and every value nested in it, but nulls: ``key``
    is the column path every list item shares (``messages[].content``), ``shown`` the same
    path with the item's index (``messages[2].content``)."""
    if value is None:
        return
    if key:
        big = type(value) is int and abs(value) > EXACT_DOUBLE_INT
        yield key, shown, _BIG_INT if big else type(value).__name__
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _value_kinds(item, f"{key}.{name}" if key else name,
                                    f"{shown}.{name}" if shown else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _value_kinds(item, f"{key}[]", f"{shown}[{index}]")


def _lone_surrogate_error(piece: Piece, records: list[dict], rows: list[int]) -> InputError:
    """A ``\\ud800``-style escape is valid JSON but no character: UTF-8 cannot store it."""
    for record, row in zip(records, rows):
        if (field := _surrogate_field(record)) is not None:
            return InputError(
                "a \\u escape encodes a lone UTF-16 surrogate, which UTF-8 cannot store; "
                "pair it with its other half or remove it", where=piece.where(row), field=field,
            )
    return InputError("a string cannot be stored as UTF-8", where=piece.path)



def field_of_bad_bytes(line: bytes) -> str | None:
    """The top-level key whose value holds the bad bytes: decoded with ``surrogateescape``
    they become lone surrogates, which JSON parsing keeps where they were."""
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError:
        return None  # the bad bytes are outside any string
    return _surrogate_field(record) if isinstance(record, dict) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_field(record: dict) -> str | None:
    """The first top-level key whose name or value (at any depth) holds a lone surrogate."""
    return _field_holding(record, lambda v: isinstance(v, str) and bool(_SURROGATE.search(v)))


def _field_holding(record: dict, found: Callable[[Any], bool]) -> str | None:
    """The first top-level key whose name or value (at any depth) is ``found``."""
    for key, value in record.items():
        if found(key) or _holds(value, found):
            return key
    return None


def _holds(value: Any, found: Callable[[Any], bool]) -> bool:
    if found(value):
        return True
    if isinstance(value, dict):
        return any(found(k) or _holds(v, found) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds(v, found) for v in value)
    return False

