"""A method's settings, read the same way from ``-p KEY=VALUE`` text and from a recipe's
``attribution.params``: checked against the fields of the method's settings dataclass
(:mod:`dataselect.params`), plus the keys of the methods it shares keys with
(:attr:`attribution.base.Attributor.shares_keys_with`), which are range-checked by their
own class and then left out: before each built-in model-based method had its own
settings, all three took one set of keys, and what ran then still runs.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any

from attribution import ATTRIBUTIONS
from dataselect.params import settings_from_text, validate_settings


def owners(method: str) -> list[type]:
    """The settings classes whose keys ``method`` takes: its own first."""
    cls = ATTRIBUTIONS[method]
    shared = [ATTRIBUTIONS[n].settings_class for n in cls.shares_keys_with if n != method]
    return [cls.settings_class, *shared]


@functools.cache
def accepted(classes: tuple[type, ...]) -> type:
    """One dataclass with every field of ``classes`` (the first class's definition of a
    name wins; a field without a default comes first), for checking keys and types."""
    found: dict[str, tuple[str, Any, dataclasses.Field]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in found:
                found[f.name] = (f.name, hints[f.name], _copy(f))
    ordered = sorted(found.values(), key=lambda spec: spec[2].default is not dataclasses.MISSING
                     or spec[2].default_factory is not dataclasses.MISSING)
    return dataclasses.make_dataclass(f"{classes[0].__name__}Keys", ordered)


def _copy(f: dataclasses.Field) -> dataclasses.Field:
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory)
    if f.default is not dataclasses.MISSING:
        return dataclasses.field(default=f.default)
    return dataclasses.field()


def accepted_keys(method: str) -> type:
    """The dataclass of every key ``method`` takes (:func:`accepted`)."""
    return accepted(tuple(owners(method)))


def takes(method: str, key: str) -> bool:
    """Whether ``method`` takes the setting ``key`` (a recipe gives ``model`` and ``seed``
    only to a method that has them)."""
    return key in _field_names(accepted_keys(method))


def typed_settings(method: str, values: Mapping[str, Any], text: bool = False
                   ) -> dict[str, Any]:
    """``values`` (``-p`` text when ``text``) typed and key-checked for ``method``; only
    the keys given are returned."""
    read = settings_from_text if text else validate_settings
    return read(accepted_keys(method), values, method)


def build_settings(method: str, values: Mapping[str, Any]) -> Any:
    """The method's settings object from typed values: its own keys build it, a shared
    key is range-checked by its class (built with the same shared values) and dropped."""
    own, *shared = owners(method)
    for cls in shared:
        if (set(values) - _field_names(own)) & _field_names(cls):
            cls(**{k: v for k, v in values.items() if k in _field_names(cls)})
    return own(**{k: v for k, v in values.items() if k in _field_names(own)})


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}
