"""Errors a user can act on.

Every input problem is raised as an :class:`InputError` that names the place (file and line
or row) and the field, so a bad record among millions can be found and fixed without a
debugger. Nothing in dataselect skips a bad record silently.
"""

from __future__ import annotations


class DataSelectError(Exception):
    """Base class for errors dataselect raises on purpose."""


class InputError(DataSelectError, ValueError):
    """A record, file or setting cannot be used as given.

    ``where`` is a human-readable place such as ``pool/a.jsonl:17`` (1-based line) or
    ``pool/b.parquet row 4``; ``field`` is the column or key at fault, when there is one.
    """

    def __init__(self, message: str, *, where: str | None = None, field: str | None = None):
        self.message = message
        self.where = where
        self.field = field
        parts = [p for p in (where, f"field {field!r}" if field else None) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)

    def __reduce__(self):
        # keep where/field when the error travels from a Dask worker to the client
        return _rebuild, (type(self), self.message, self.where, self.field)


def _rebuild(cls: type[InputError], message: str, where: str | None, field: str | None
             ) -> InputError:
    return cls(message, where=where, field=field)


class EmptyCorpusError(InputError):
    """A pool or target holds no records."""


class DuplicateIdError(InputError):
    """Two records share an id; the message names both places."""


class OutputConflictError(DataSelectError):
    """The output folder holds results of a different job, so resuming would mix them."""
