"""Fingerprints of input files: what decides whether stored results still apply.

A job's inputs are identified by :func:`file_identity`: the file's size, inode, mtime and
ctime plus a hash of a few sampled blocks, read in milliseconds whatever the file's size,
so no process reads every byte of a pool before any work (at web scale that was terabytes
through the client). Any write changes ctime, which the kernel sets and no user can set
back, so a same-size edit (a redaction), even one hidden by ``touch -d``, still changes
the identity; the sampled blocks catch edits on file systems whose timestamps are coarse.

:func:`file_fingerprint` hashes a file's whole content; it identifies small files whose
content, not place, matters (model weights, a fastText model), and is described below.

A resumed job reuses score and output parts only while the inputs' fingerprints match, so
a fingerprint must change with any edit, including a same-size edit in the middle of a file
(a redaction), which a hash of the head and tail misses. So the whole content is hashed,
with xxh3_128 (faster than the disk delivers it), and each result is cached under the
file's identity and change times, so an unchanged file is read once, not once per run.

The cache key is ``(realpath, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``. Users
can set mtime back (``touch -d``) but not ctime, which the kernel sets on every write, so
any write makes a new key. Results are kept in this process and on disk (one small JSON
file per key under ``$DATASELECT_CACHE/fingerprints`` or
``${XDG_CACHE_HOME:-~/.cache}/dataselect/fingerprints``); a damaged entry is recomputed
and rewritten, and an unwritable cache folder only costs the re-reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from dataselect import storage
from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, read_json_file

HASH_BLOCK = 8 << 20
# Timestamps are coarse (a clock tick, or whole seconds on some file systems), so a write
# just after the stat can leave them unchanged; a file changed this recently is hashed but
# not cached, as git does with its "racily clean" index entries.
RACY_SECONDS = 2.0
HEX_DIGEST = re.compile("[0-9a-f]{32}")

CacheKey = tuple[str, int, int, int, int, int]
_memory: dict[CacheKey, str] = {}


# The sampled blocks of file_identity: the first and last IDENTITY_EDGE bytes, and
# IDENTITY_BLOCKS blocks of IDENTITY_BLOCK bytes spread evenly between them.
IDENTITY_EDGE, IDENTITY_BLOCK, IDENTITY_BLOCKS = 64 << 10, 4 << 10, 8


def file_identity(path: str) -> dict[str, Any]:
    """``{"path", "bytes", "xxh3_128"}`` of an input file (or an HF dataset folder: every
    file below it), where the digest covers the file's metadata (size, inode, mtime and
    ctime in nanoseconds) and its sampled blocks (:data:`IDENTITY_EDGE` and
    :data:`IDENTITY_BLOCKS`), never its whole content.

    Why not the content: hashing it made the client read every input byte before any
    work. What it costs: a copied or moved pool (another inode and ctime) is another
    input, so a job is resumed only on the files it started on; ``chmod`` does the same.
    An object in an object store is identified by its metadata alone (ETag or version,
    size, modification time: :func:`dataselect.storage.object_fingerprint`)."""
    return _fingerprint(path, _identity_digest)


def _identity_digest(path: str) -> tuple[int, str]:
    """``(size, digest)`` of a file's metadata and sampled blocks (:func:`file_identity`)."""
    info = _stat(path)
    digest = xxhash.xxh3_128(json.dumps([info.st_size, info.st_ino, info.st_mtime_ns,
                                         info.st_ctime_ns]).encode())
    try:
        with open(path, "rb", buffering=0) as f:
            for offset, length in _sampled_blocks(info.st_size):
                f.seek(offset)
                digest.update(f.read(length))
    except OSError as exc:
        raise InputError(f"cannot read the file to fingerprint it ({exc.strerror or exc})",
                         where=path) from exc
    return info.st_size, digest.hexdigest()


def _sampled_blocks(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the blocks :func:`file_identity` reads: the head, blocks
    spread evenly over the middle, and the tail (the whole file when it is small)."""
    if size <= 2 * IDENTITY_EDGE + IDENTITY_BLOCKS * IDENTITY_BLOCK:
        return [(0, size)]
    middle = size - 2 * IDENTITY_EDGE - IDENTITY_BLOCK
    return ([(0, IDENTITY_EDGE)]
            + [(IDENTITY_EDGE + middle * (i + 1) // (IDENTITY_BLOCKS + 1), IDENTITY_BLOCK)
               for i in range(IDENTITY_BLOCKS)]
            + [(size - IDENTITY_EDGE, IDENTITY_EDGE)])


def file_fingerprint(path: str) -> dict[str, Any]:
    """``{"path", "bytes", "xxh3_128"}`` of a file, or of a folder (an HF dataset): then the
    hash covers every file's path below the folder and content hash. An object in an
    object store is fingerprinted from its metadata (ETag or version, size, modification
    time; :func:`dataselect.storage.object_fingerprint`): hashing it would download every
    byte of the pool through one process."""
    return _fingerprint(path, content_hash)


def _fingerprint(path: str, file_digest: Callable[[str], tuple[int, str]]) -> dict[str, Any]:
    """An object's metadata, a folder's files or a file, each file digested by
    ``file_digest`` (``(size, hex digest)``): the one shape of both fingerprints. A local
    path is recorded resolved and absolute (:func:`dataselect.storage.resolved`), so that
    the same file spelled ``p/a.parquet`` or ``/abs/p/a.parquet`` is the same input."""
    if storage.is_remote(path):
        return storage.object_fingerprint(path)
    if os.path.isdir(path):
        return _folder_fingerprint(path, file_digest)
    size, digest = file_digest(path)
    return {"path": storage.resolved(path), "bytes": size, "xxh3_128": digest}


def _folder_fingerprint(path: str, file_digest: Callable[[str], tuple[int, str]]
                        ) -> dict[str, Any]:
    files = sorted((p.relative_to(path).as_posix(), p)
                   for p in map(Path, storage.walk_local(path)) if p.is_file())
    combined, total = xxhash.xxh3_128(), 0
    for relative, file in files:
        size, digest = file_digest(str(file))
        combined.update(json.dumps([relative, size, digest]).encode() + b"\n")
        total += size
    return {"path": storage.resolved(path), "bytes": total, "xxh3_128": combined.hexdigest()}


def content_hash(path: str) -> tuple[int, str]:
    """``(size, xxh3_128 hex digest)`` of a file's content, from the cache when its key
    matches; a fresh hash is cached only if the file did not change while being read."""
    before = _stat(path)
    key = _cache_key(path, before)
    cached = _memory.get(key) or _read_entry(key)
    if cached is not None:
        _memory[key] = cached
        return before.st_size, cached
    started = time.time()
    digest = hash_file(path)
    if _cache_key(path, _stat(path)) == key and not _is_racy(before, started):
        _memory[key] = digest
        _write_entry(key, digest)
    return before.st_size, digest


def hash_file(path: str) -> str:
    """Stream the file through xxh3_128 in ``HASH_BLOCK`` blocks into one reused buffer."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as f:
            while read := f.readinto(buffer):
                digest.update(view[:read])
    except OSError as exc:
        raise InputError(f"cannot read the file to fingerprint it ({exc.strerror or exc})",
                         where=path) from exc
    return digest.hexdigest()


# folders the cache must neither lie in nor hold: the command's inputs, outputs and models
_KEPT_OUT_OF: list[str] = []


def keep_cache_out_of(paths: Iterable[str]) -> None:
    """Keep the fingerprint cache out of ``paths`` (local files, folders or globs a command
    reads or writes) for the rest of this process.

    Why: the cache folder comes from the environment (``DATASELECT_CACHE``,
    ``XDG_CACHE_HOME``). Pointed at a pool folder, dataselect wrote ``fingerprints/`` into
    the pool (an input touched, and the next job read the entries as pool rows); pointed
    at ``--out``, it wrote them into its own selection and then refused it for holding a
    folder its marker does not list. The cache only saves time: where it would land in
    such a folder, fingerprints are computed without it."""
    for path in paths:
        if not isinstance(path, str) or not path:
            continue
        try:
            path = storage.local_form(path)  # a file: URL is the path it names
        except InputError:
            continue
        if storage.is_remote(path):
            continue
        prefix = re.split(r"[*?\[]", path, maxsplit=1)[0]
        if prefix != path:  # a glob: the folder it starts in
            prefix = os.path.dirname(prefix) or "."
        _KEPT_OUT_OF.append(os.path.realpath(os.path.expanduser(prefix)))


@contextlib.contextmanager
def cache_kept_out_of(paths: Iterable[str]) -> Iterator[None]:
    """:func:`keep_cache_out_of` for one command: the paths it and whatever runs inside it
    (a recipe's own paths) registered are let go when it ends, so that a process running
    many commands (a test session, a program) neither grows the list nor keeps an earlier
    command's paths out of the cache."""
    before = len(_KEPT_OUT_OF)
    keep_cache_out_of(paths)
    try:
        yield
    finally:
        del _KEPT_OUT_OF[before:]


def kept_path_holding(folder: str | os.PathLike) -> str | None:
    """The path this command reads or writes (:func:`keep_cache_out_of`) that is ``folder``
    or a folder above it, else None: a cache that must write (a model conversion) refuses
    such a folder instead of skipping it."""
    real = os.path.realpath(folder)
    return next((kept for kept in _KEPT_OUT_OF
                 if real == kept or real.startswith(kept + os.sep)), None)


def _cache_usable() -> bool:
    folder = os.path.realpath(cache_dir())
    if any(folder == kept or folder.startswith(kept + os.sep)
           or kept.startswith(folder + os.sep) for kept in _KEPT_OUT_OF):
        return False
    return _dedicated(cache_root())


# what a cache folder of dataselect's holds: its fingerprints, and the imported models
CACHE_ENTRIES = frozenset({"fingerprints", "models"})


def _dedicated(root: Path) -> bool:
    """Whether ``root`` is a cache folder of dataselect's own: absent (it is made so), or
    holding nothing but :data:`CACHE_ENTRIES`, ``fingerprints`` being a folder of its own.

    Why: the folder comes from the environment, and a command's own paths are not all
    that a job reads (a URL spelling of the pool, a folder linked from inside it, a model
    or held-out folder a recipe names, the pool of the run ``eval`` is given, a program's
    own paths through the Python API). A folder holding anything else is someone's data:
    the cache, which only saves time, is not used there."""
    try:
        names = set(os.listdir(root))
    except FileNotFoundError:
        return True
    except OSError:  # not a folder, or unreadable
        return False
    if not names <= CACHE_ENTRIES:
        return False
    entries = root / "fingerprints"
    return not entries.is_symlink() and (entries.is_dir() or not entries.exists())


def cache_root() -> Path:
    """The cache folder: ``$DATASELECT_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/dataselect``.
    Read from the environment on every call, so tests and jobs can point it elsewhere."""
    if root := os.environ.get("DATASELECT_CACHE"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "dataselect"


def cache_dir() -> Path:
    """Where the fingerprint entries are kept, inside :func:`cache_root`."""
    return cache_root() / "fingerprints"


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot fingerprint the file ({exc.strerror or exc})",
                         where=path) from exc


def _cache_key(path: str, st: os.stat_result) -> CacheKey:
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def _is_racy(st: os.stat_result, started: float) -> bool:
    return started - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 < RACY_SECONDS


# an entry's name ends in a suffix no input reader takes, so that a folder linked to the
# cache from inside a pool, or a glob through it, never reads an entry as data
ENTRY_SUFFIX = ".fingerprint"


def _entry_path(key: CacheKey) -> Path:
    return cache_dir() / (hashlib.sha256(json.dumps(key).encode()).hexdigest() + ENTRY_SUFFIX)


def _read_entry(key: CacheKey) -> str | None:
    """The cached digest, or None when there is none or it is unreadable, damaged or for
    another key (it is then rewritten after hashing)."""
    if not _cache_usable():
        return None
    if not _entry_path(key).is_file():  # none yet; a FIFO planted there would block
        return None
    try:
        entry = read_json_file(_entry_path(key))
        digest = entry["xxh3_128"]
        valid = entry["key"] == list(key) and HEX_DIGEST.fullmatch(digest) is not None
    except (OSError, UnreadableJSON, KeyError, TypeError):
        return None
    return digest if valid else None


def _write_entry(key: CacheKey, digest: str) -> None:
    """Temp file and rename, so a reader never sees half an entry; any OS error (read-only
    or full cache folder) is ignored: the cache saves time, it is never needed."""
    if not _cache_usable():
        return
    folder = cache_dir()
    temp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": list(key), "xxh3_128": digest}, f)
        os.replace(temp, _entry_path(key))
    except OSError:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
