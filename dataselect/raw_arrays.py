"""Raw numpy arrays in a hidden work folder of a score store, on a disk or in an object store.

The shuffles that run on the workers (the duplicate-id check, :mod:`dataselect.duplicates`;
exact ranks for ``combine(method="rank")``, :mod:`dataselect.rank_scale`) pass sorted arrays
between their stages through files. A raw file (no header) is read back in slices with one
range read each, the same request on a local disk and in an object store, where a
memory map or ``np.load`` would need the whole object.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from dataselect import storage
from dataselect.output import atomic_write


def fresh_folder(path: str) -> str | None:
    """``path`` made an empty folder (in an object store a prefix, emptied of what a killed
    job left); None where it cannot be made, such as in a local store the user may only
    read, or where something that is not a folder of ours stands (a planted link): the
    caller then does its work on the client."""
    if storage.is_remote(path):
        remove_folder(path)
        return path
    shutil.rmtree(path, ignore_errors=True)  # refuses a symbolic link: makedirs then fails
    try:
        os.makedirs(path)
    except OSError:
        return None
    return path


def remove_folder(path: str) -> None:
    if not storage.is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    storage.remove([storage.join(path, name) for name in storage.names_below(path)])


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
