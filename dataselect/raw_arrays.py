"""Raw numpy arrays in a hidden work folder of a score store, on a disk or in an object store.

The shuffles that run on the workers (the duplicate-id check, :mod:`dataselect.duplicates`;
exact ranks for ``combine(method="rank")``, :mod:`dataselect.rank_scale`) pass sorted arrays
between their stages through files. A raw file (no header) is read back in slices with one
range read each, the same request on a local disk and in an object store, where a
memory map or ``np.load`` would need the whole object.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator

import numpy as np

from dataselect import storage
from dataselect.outdir import hold_lock
from dataselect.output import atomic_write, temporary_of


@contextlib.contextmanager
def store_lock(store: str) -> Iterator[None]:
    """Hold a local score store's lock (:func:`~dataselect.outdir.hold_lock`) while a
    shuffle works in it: a second process shuffling the same store at once is refused in
    one line ("in use by another dataselect job") instead of deleting the first one's work
    files under it. An object store offers no lock that dies with its holder, so a store
    there is not locked: do not run two such jobs on one store at once."""
    if storage.is_remote(store):
        yield
        return
    with hold_lock(store):
        yield


def fresh_folder(path: str, ours: re.Pattern[str]) -> str | None:
    """``path`` as a folder holding none of the work files a shuffle writes there (names
    matching ``ours``, and their temporaries), made if missing; in an object store a
    prefix. Only those names are removed, each a regular file removed unopened: a file
    of yours in the folder stays, and nothing is followed or opened, so a link or a FIFO
    is never written through or waited on. None where the folder cannot be used (a link,
    a FIFO or a file stands at ``path``; a store the user may only read): the caller then
    does its work on the client."""
    if storage.is_remote(path):
        remove_folder(path, ours)
        return path
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path)
        except OSError:
            return None
        return path
    if not stat.S_ISDIR(found.st_mode) or not os.access(path, os.W_OK | os.X_OK):
        return None
    remove_folder(path, ours, keep_folder=True)
    return path


def remove_folder(path: str, ours: re.Pattern[str], keep_folder: bool = False) -> None:
    """Remove the work files (``ours``) in ``path``, then the folder when it is left
    empty (unless ``keep_folder``)."""
    if storage.is_remote(path):
        storage.remove([storage.join(path, name) for name in storage.names_below(path)
                        if _is_ours(name, ours)])
        return
    try:
        entries = list(os.scandir(path))
    except OSError:  # gone, or not a folder: nothing of ours to remove
        return
    for entry in entries:
        if _is_ours(entry.name, ours) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    if not keep_folder:
        with contextlib.suppress(OSError):
            os.rmdir(path)  # only if empty: a file of yours keeps it


def _is_ours(name: str, ours: re.Pattern[str]) -> bool:
    return bool(ours.fullmatch(temporary_of(name) or name))


def remove_files(paths: list[str]) -> None:
    if paths and storage.is_remote(paths[0]):
        storage.remove(paths)
        return
    for path in paths:
        os.remove(path)


def write_array(path: str, values: np.ndarray) -> None:
    """``values`` as a raw file, written whole or not at all."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(np.ascontiguousarray(values).tobytes())


def read_array(path: str, dtype: type, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Items ``[start, stop)`` of a raw array file: one range read."""
    size = np.dtype(dtype).itemsize
    data = storage.read_range(path, start * size, None if stop is None else stop * size)
    return np.frombuffer(data, dtype)
