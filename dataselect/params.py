"""Settings dataclasses, read the same way from every place a user gives them.

A scorer's parameters, the LoRA warmup's and the evaluation's settings are each one
dataclass: its fields (names, types, defaults) are the single definition of what may be set.
Users give values as Python keywords, as ``-p KEY=VALUE`` text on the command line, or as
YAML values in a recipe; all three go through :func:`settings_model`, a strict pydantic
model built from the dataclass, so a value that one path accepts the others accept too, and
``k: true``, ``"1.0"`` for an integer or NaN are refused everywhere. Text from the command
line is first turned into the field's type (:func:`settings_from_text`): a list from
comma-separated text, ``none`` or ``auto`` for an optional field, ``true``/``false`` for a
boolean. Ranges are the dataclass' own business (its ``__post_init__`` or ``check()``, built
on :mod:`dataselect.checks`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from dataselect import checks
from dataselect.errors import InputError

if TYPE_CHECKING:
    from pydantic import BaseModel, BeforeValidator

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

# pydantic (40 ms to import) is loaded by the functions that build or run a model: a job
# whose scorer takes its defaults never needs it


def checked(check: Callable[..., Any], optional: bool = False, **limits: Any
            ) -> BeforeValidator:
    """A pydantic validator that applies one of :mod:`dataselect.checks` before pydantic's
    own type conversion, which would turn ``true`` into 1 and ``"nan"`` into NaN."""
    from pydantic import BeforeValidator

    def validate(value: Any) -> Any:
        if optional and value is None:
            return None
        return check(value, None, **limits)

    return BeforeValidator(validate)


@functools.cache
def settings_model(cls: type) -> type[BaseModel]:
    """A strict pydantic model of ``cls``'s init fields (unknown keys, booleans as numbers
    and NaN refused)."""
    import pydantic

    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.init:
            fields[f.name] = (_strict(_listed(hints[f.name])), None)
    return pydantic.create_model(f"{cls.__name__}Settings", __config__=pydantic.ConfigDict(
        extra="forbid", allow_inf_nan=False), **fields)


def field_types(cls: type) -> dict[str, Any]:
    """Each init field's type, as the model checks it."""
    hints = typing.get_type_hints(cls)
    return {f.name: _listed(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _boolean_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """``(name, may be None)`` of each boolean init field of the dataclass ``cls``."""
    found = []
    for name, kind in field_types(cls).items():
        base, optional = _unwrap_optional(kind)
        if base is bool:
            found.append((name, optional))
    return tuple(found)


def check_booleans(settings: Any) -> None:
    """Every boolean field of a settings dataclass holds True or False (or None where its
    type allows): built in Python, ``DSIR(length_normalize="no")`` was a true setting,
    which the command line and recipes (strict, :func:`settings_model`) refuse."""
    for name, optional in _boolean_fields(type(settings)):
        checks.optional(checks.check_bool, getattr(settings, name), name) if optional \
            else checks.check_bool(getattr(settings, name), name)


def validate_settings(cls: type, values: Mapping[str, Any], owner: str,
                      complete: bool = True) -> dict[str, Any]:
    """``values`` checked against ``cls``'s fields; only the keys given are returned (the
    dataclass fills in its defaults). Errors are an InputError naming the key. With
    ``complete``, the values are all there will be: a field without a default must be
    among them."""
    unknown = sorted(set(values) - set(field_types(cls)))
    if unknown:
        raise InputError(f"{owner} has no parameter {unknown[0]!r}; known: "
                         f"{sorted(field_types(cls))}", field=unknown[0])
    if complete:
        check_required(cls, values, owner)
    if not values:  # nothing to check: the dataclass' defaults are its own
        return {}
    import pydantic

    try:
        model = settings_model(cls).model_validate(dict(values))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(message, field=key) from None
    return model.model_dump(exclude_unset=True)


def check_required(cls: type, values: Mapping[str, Any], owner: str) -> None:
    """Refuse settings that leave out a field without a default (``embed``'s ``model``),
    naming the key and how to give it; building the object would fail with a TypeError
    about ``__init__``. A job's seed, and the budget of a scorer that takes it, are filled
    in by the job when not given (``scorers.build_scorer``), so never missing."""
    later = {"seed"} | ({"k", "fraction"} if getattr(cls, "takes_budget", False) else set())
    missing = [f.name for f in dataclasses.fields(cls)
               if f.init and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING
               and f.name not in values and f.name not in later]
    if missing:
        raise InputError(f"{owner} needs the setting {missing[0]!r}: give it with "
                         f"-p {missing[0]}=VALUE (in a recipe, as a key of its settings)",
                         field=missing[0])


def settings_from_text(cls: type, pairs: Mapping[str, str], owner: str,
                       complete: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` text (the command line's ``-p``), each value turned into its field's
    type, then checked like any other value."""
    kinds = field_types(cls)
    values = {}
    for key, text in pairs.items():
        if key not in kinds:
            raise InputError(f"{owner} has no parameter {key!r}; known: {sorted(kinds)}",
                             field=key)
        values[key] = _from_text(text, kinds[key], key)
    return validate_settings(cls, values, owner, complete)


def _from_text(text: str, kind: Any, key: str) -> Any:
    base, optional = _unwrap_optional(kind)
    if optional and text.lower() in ("none", "auto"):
        return None
    origin = typing.get_origin(base)
    if origin is list:
        parts = [part for part in text.split(",") if part]
        if not parts and optional:  # "-p candidates=" meant the default (None), silently
            raise InputError(f"{key}= lists nothing: give comma-separated values, or leave "
                             f"{key} out for its default", field=key)
        return parts
    try:
        if base is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError(text)
            return text.lower() in TRUE
        if base is int:  # ASCII digits only: int() reads any script's digits
            return checks.number_from_text(int, text)
        if base is float:
            return checks.check_finite(checks.number_from_text(float, text), key)
    except InputError:
        raise
    except ValueError:
        hint = (checks.ASCII_HINT if not text.isascii()
                else " (an integer, without a decimal point)" if base is int else "")
        name = getattr(base, "__name__", str(base))
        raise InputError(f"{text!r} is not a valid {name}{hint}", field=key) from None
    return text


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if (isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union) \
            and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else kind), True
    return kind, False


def _listed(annotation: Any) -> Any:
    """Sequences (tuples of module names, lists of checkpoints) are lists in YAML and
    comma-separated on the command line."""
    base, optional = _unwrap_optional(annotation)
    origin = typing.get_origin(base)
    if origin in (list, tuple) or "Sequence" in str(base):
        return list[str] | None if optional else list[str]
    return annotation


def _strict(annotation: Any) -> Any:
    """A field's annotation with numbers checked strictly: pydantic would read ``true`` as
    1 and accept NaN."""
    base, optional = _unwrap_optional(annotation)
    if base is bool:
        from pydantic import Strict

        return Annotated[annotation, Strict()]
    if base is int:
        return Annotated[annotation, checked(checks.check_int, optional, maximum=None)]
    if base is float:
        return Annotated[annotation, checked(checks.check_finite, optional)]
    return annotation


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """One settable field, described for people: its name, the type a ``-p`` value is
    read as, and its default (:func:`value_text` writes it as ``-p`` would take it)."""

    name: str
    type: str
    default: Any
    required: bool = False


def describe_settings(cls: type) -> list[SettingInfo]:
    """``cls``'s init fields in declaration order: what ``dataselect scorers`` lists, from
    the same types :func:`settings_from_text` converts by, so the listing cannot drift from
    what is accepted."""
    kinds = field_types(cls)
    described = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            value: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            described.append(SettingInfo(f.name, type_text(kinds[f.name]), None, True))
            continue
        described.append(SettingInfo(f.name, type_text(kinds[f.name]), value))
    return described


def type_text(kind: Any) -> str:
    """A field's type as a user types it: ``int``, ``fast|slow``, ``list``, ``float|none``."""
    base, optional = _unwrap_optional(kind)
    args = typing.get_args(base)
    if typing.get_origin(base) is typing.Literal:
        text = "|".join(str(a) for a in args)
    elif typing.get_origin(base) is list:
        text = "list"  # comma-separated on the command line (_from_text)
    elif isinstance(base, type):
        text = base.__name__
    else:
        text = str(base).replace("typing.", "")
    return f"{text}|none" if optional else text


def value_text(value: Any) -> str:
    """A default as ``-p KEY=VALUE`` text would give it (:func:`_from_text` reads it back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
