"""How a recipe's problems are told: one line naming the recipe file, the dotted key
(``scorers.dsir.num_buckets``) and the value found, for every problem pydantic or a
scorer's own checks found, and never pydantic's text (which reprs every bad value whole)."""

from __future__ import annotations

from typing import Any

import pydantic

from dataselect import checks
from dataselect.errors import InputError


class RecipeError(InputError):
    """A recipe that cannot be run as written; names the file and the key."""


class NestedError(ValueError):
    """Errors of a nested validation, kept with their own keys so the message names
    ``scorers.dsir.num_buckets`` and not just ``scorers``. (Not rendered here: pydantic's
    text would repr every bad value in full.)"""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__(f"{len(errors)} nested error(s)")
        self.errors = errors

    @classmethod
    def of(cls, prefix: tuple[Any, ...], exc: pydantic.ValidationError) -> NestedError:
        return cls([{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors()])


def setting_error(exc: InputError, prefix: tuple[Any, ...], given: dict[str, Any],
                  owner: str) -> NestedError:
    """A scorer's or the warmup's range error at its recipe key. A seed the section does
    not set came from the recipe's ``seed``, so that is the key named."""
    field = exc.field or ""
    if field == "seed" and "seed" not in given:
        loc, message = ("seed",), f"{exc.message} (as the {owner} seed)"
    else:
        loc, message = (*prefix, *([field] if field else [])), exc.message
    return NestedError([{"loc": loc, "msg": message, "type": "value_error",
                         "input": given.get(field, exc)}])


def recipe_error(exc: pydantic.ValidationError, where: str) -> RecipeError:
    """One clause per problem, each naming its dotted key and the value found; the first
    key is the error's field."""
    problems = []
    for error in exc.errors():
        nested = error.get("ctx", {}).get("error")
        if isinstance(nested, NestedError):
            problems += [{**e, "loc": (*error["loc"], *e["loc"])} for e in nested.errors]
        else:
            problems.append(error)
    clauses, first = [], None
    for error in problems:
        key = _dotted(error["loc"])
        found = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        # the value, cut short: it may be a long string or a large nested list
        shown = "" if (error["type"] == "missing" or isinstance(found, dict)
                       or ", got " in message) else f" (got {checks.shown(found)})"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        if first is None:
            first = key
            clauses.append(f"{message}{shown}")
        else:
            clauses.append(f"{key}: {message}{shown}" if key else f"{message}{shown}")
    return RecipeError("; ".join(clauses), where=where, field=first or None)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
