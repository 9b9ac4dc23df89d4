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
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from dataselect import storage
from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, parse_json, read_json_file
from dataselect.layout import CACHE_MARKER

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

# the names a folder input skips (formats._hidden_name): a cache below such a name is not read
_HIDDEN_IN_FOLDER = (".", "_")


class _Kept(str):
    """A path a command reads or writes, as its real path (so the list compares with plain
    strings), and how much of the file system it reaches: ``whole`` (a file, or a folder
    the command writes: the output), ``folder`` (a folder input: its tree less hidden
    names, and the folders linked from it) or ``glob`` (what the pattern can match).

    Why: pass 13 kept the cache out of a folder input and of a glob's starting folder
    whole, so the hidden default model cache ``~/.cache/dataselect/models`` was refused
    for ``--pool "$HOME/*.jsonl"`` and for ``cd ~; --pool .``, neither of which can read
    it; while a cache folder inside a data folder linked from the pool was not seen."""

    kind: str
    parts: tuple[str, ...]
    _linked: list[str] | None
    pattern: str
    _matched: list[_Kept] | None

    def __new__(cls, real: str, kind: str, parts: tuple[str, ...] = (),
                pattern: str = "") -> _Kept:
        kept = super().__new__(cls, real)
        kept.kind, kept.parts, kept._linked = kind, parts, None
        kept.pattern, kept._matched = pattern, None
        return kept

    def matched(self) -> list[_Kept]:
        """What a glob reads that its pattern, read on real paths, does not show: each
        folder it matches (read as a folder input: its tree and the folders linked from
        it); each folder linked at a name a shorter part of the pattern matches, with the
        rest of the pattern below it; each file reached through a link; for a ``**``
        pattern, the folders where the ``**`` starts, read whole (it enters every folder
        below them, links too). Listed as the reader lists them
        (:func:`dataselect.formats.expand_paths`), once per command.

        Why: ``--pool 'p/*'`` matching ``p/sub -> X`` reads ``X`` as part of the pool, but
        the pattern's parts (``p``, ``*``) never name ``X``: a cache set in ``X/cache`` was
        made there, inside an input (pass 15, c01)."""
        if self._matched is not None:
            return self._matched
        self._matched = []
        if not self.pattern:  # a pattern's rest below a link: its own links are listed above
            return self._matched

        def matches(pattern: str) -> list[str]:
            try:
                return storage.glob_once(pattern)
            except (OSError, ValueError):
                return []

        parts = self.pattern.split(os.sep)
        until = parts.index("**") if "**" in parts else len(parts)
        start = len(os.path.dirname(re.split(r"[*?\[]", self.pattern, maxsplit=1)[0])
                    .split(os.sep))
        found = matches(self.pattern)
        if until < len(parts):
            found += matches(os.sep.join(parts[:until]) or os.sep)
        folders, files, below = set(), set(), []
        for match in found:
            real = os.path.realpath(match)
            if os.path.isdir(real):
                folders.add(real)
            elif real != os.path.abspath(match):
                files.add(real)
        for end in range(start + 1, min(until + 1, len(parts))):
            for match in matches(os.sep.join(parts[:end])):
                if os.path.islink(match) and os.path.isdir(match):
                    real = os.path.realpath(match)
                    below.append(_Kept(real, "glob", tuple(_parts(real) + parts[end:])))
        top: list[str] = []
        for folder in sorted(folders, key=_parts):  # a folder's own come right after it
            if not top or not _below(top[-1], folder):
                top.append(folder)
        self._matched = ([_Kept(folder, "folder") for folder in top] + below
                         + [_Kept(file, "whole") for file in sorted(files)])
        return self._matched

    def linked(self) -> list[str]:
        """The folders linked from inside a folder input under names it reads (read as
        part of it), listed once; hidden folders are not entered, as the reader enters
        none (``cd ~; --pool .`` does not walk ``~/.cache``)."""
        if self._linked is None:
            def hidden(name: str) -> bool:
                return name.startswith(_HIDDEN_IN_FOLDER)
            try:
                found = (storage.walk_local(self, enter=lambda name: not hidden(name))
                         if os.path.isdir(self) else [])
                self._linked = [os.path.realpath(path) for path in found
                                if not hidden(os.path.basename(path))
                                and os.path.islink(path) and os.path.isdir(path)]
            except OSError:
                self._linked = []
        return self._linked

    def reaches(self, real: str, made_in: str | None, glob_start_kept: bool = True) -> bool:
        """Whether a cache folder at ``real`` (a real path) lies in what this path reads
        or writes, or holds it; ``made_in``: the first folder that making the absent
        cache folder creates (None when it exists). ``glob_start_kept``: no folder is
        made in the folder a glob starts in (a cache's rule); otherwise only where the
        glob could read it (a temporary folder's rule, :func:`kept_path_holding`)."""
        if _below(real, self):  # the cache holds the input or output
            return True
        if self.kind == "whole":
            return _below(self, real)
        if self.kind == "glob":
            made_read = made_in is not None and (
                _read_below(self, made_in) if glob_start_kept
                else _glob_reaches(self.parts, _parts(made_in)))
            return _glob_reaches(self.parts, _parts(real)) or made_read or any(
                match.reaches(real, made_in, glob_start_kept) for match in self.matched())
        return any(_read_below(folder, real) or (made_in is not None
                                                  and _read_below(folder, made_in))
                   for folder in [str(self), *self.linked()])


def _below(folder: str, path: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _parts(real: str) -> list[str]:
    return [part for part in real.split(os.sep) if part]


def _read_below(folder: str, path: str) -> bool:
    """Whether a folder input ``folder`` reads ``path``: it is the folder or lies below it
    under no hidden name (a folder input skips those)."""
    if not _below(folder, path):
        return False
    rest = os.path.relpath(path, folder)
    return rest == "." or not any(part.startswith(_HIDDEN_IN_FOLDER)
                                  for part in rest.split(os.sep))


def _glob_reaches(pattern: tuple[str, ...] | list[str], path: list[str]) -> bool:
    """Whether a glob (split at ``/``) can match ``path``, a folder above a match (it
    would hold what the glob reads) or a folder a match reads (a folder matched is read
    as a folder input: its tree less hidden names). ``*`` matches no hidden name, as
    ``glob`` does, and ``**`` any number of non-hidden folders."""
    import fnmatch

    if not pattern:  # matched a folder above: the rest is read unless hidden
        return not any(part.startswith(_HIDDEN_IN_FOLDER) for part in path)
    if not path:  # the cache would hold what the rest of the glob matches
        return True
    head, name = pattern[0], path[0]
    if head == "**":
        return _glob_reaches(pattern[1:], path) or (
            not name.startswith(".") and _glob_reaches(pattern, path[1:]))
    if name.startswith(".") and not head.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, head) and _glob_reaches(pattern[1:], path[1:])


def _as_read(path: str) -> str:
    """``path`` absolute, ``~`` expanded, with a ``..`` after a link read as the system
    reads it (:func:`dataselect.storage.arrow_path`). Why: ``abspath`` alone drops ``L/..``
    as text, so with ``L -> E/sub`` the input ``L/../d`` was kept as ``./d`` while the
    reader read ``E/d``, and the cache was made inside that pool folder (pass 15, g05)."""
    return storage.arrow_path(os.path.expanduser(path))


def _kept(path: str, written: bool) -> _Kept:
    path = _as_read(path)
    prefix = re.split(r"[*?\[]", path, maxsplit=1)[0]
    if prefix != path:  # a glob: its starting folder as a real path, then the pattern
        start = os.path.dirname(prefix)
        real = os.path.realpath(start)
        rest = os.path.relpath(path, start).split(os.sep)
        return _Kept(real, "glob", tuple(_parts(real) + rest), pattern=path)
    real = os.path.realpath(path)
    return _Kept(real, "folder" if not written and os.path.isdir(real) else "whole")


def keep_cache_out_of(paths: Iterable[str], written: Iterable[str] = ()) -> None:
    """Keep the caches out of ``paths`` (local files, folders or globs a command reads or
    writes; ``written``: those of them it writes whole, the output) for the rest of this
    process. A path already kept is not added again (the Python API keeps each corpus
    it reads).

    Why: the cache folders come from the environment (``DATASELECT_CACHE``,
    ``DATASELECT_MODEL_CACHE``, ``XDG_CACHE_HOME``). Pointed at a pool folder, dataselect
    wrote ``fingerprints/`` into the pool (an input touched, and the next job read the
    entries as pool rows); pointed at ``--out``, it wrote them into its own selection and
    then refused it for holding a folder its marker does not list. The fingerprint cache
    only saves time: where it would land in such a folder, fingerprints are computed
    without it; the model cache is refused (:func:`kept_path_holding`)."""
    written = {_as_read(w) for w in written if isinstance(w, str) and w}
    for path in paths:
        if not isinstance(path, str) or not path:
            continue
        try:
            path = storage.local_form(path)  # a file: URL is the path it names
        except InputError:
            continue
        if storage.is_remote(path):
            continue
        kept = _kept(path, _as_read(path) in written)
        if not any(k == kept and k.kind == kept.kind and k.parts == kept.parts
                   for k in _KEPT_OUT_OF if isinstance(k, _Kept)):
            _KEPT_OUT_OF.append(kept)


@contextlib.contextmanager
def cache_kept_out_of(paths: Iterable[str], written: Iterable[str] = ()) -> Iterator[None]:
    """:func:`keep_cache_out_of` for one command: the paths it and whatever runs inside it
    (a recipe's own paths) registered are let go when it ends, so that a process running
    many commands (a test session, a program) neither grows the list nor keeps an earlier
    command's paths out of the cache."""
    before = len(_KEPT_OUT_OF)
    keep_cache_out_of(paths, written)
    try:
        yield
    finally:
        del _KEPT_OUT_OF[before:]


def _first_made(real: str) -> str | None:
    """The first folder that making an absent ``real`` creates (its topmost absent
    folder); None when it exists. Made inside a folder input under a name that folder
    reads, it adds an entry to the input even where the cache itself is hidden below."""
    if os.path.lexists(real):
        return None
    first = real
    while os.path.dirname(first) != first and not os.path.lexists(os.path.dirname(first)):
        first = os.path.dirname(first)
    return first


def kept_path_holding(folder: str | os.PathLike, glob_start_kept: bool = True) -> str | None:
    """The path this command reads or writes (:func:`keep_cache_out_of`) that reads or
    writes ``folder``, or that ``folder`` holds, else None; for a folder not made yet, also
    the input whose read tree it would be made in. A cache that must write (a model
    conversion) refuses such a folder instead of skipping it.

    ``glob_start_kept=False`` lets a folder be made in the folder a glob starts in where
    the glob's pattern cannot read it: the temporary folder is where such folders are
    meant to go, and ``--pool '/tmp/x_*.parquet'`` was refused for TMPDIR unset (pass 19,
    g01) while a cache keeps out of that folder altogether."""
    real = os.path.realpath(os.path.expanduser(os.fspath(folder)))
    return _kept_reaching(real, _first_made(real), glob_start_kept)


def _kept_reaching(real: str, made_in: str | None, glob_start_kept: bool = True) -> str | None:
    """:func:`kept_path_holding` of a real path, judged as it is (no link resolved)."""
    for kept in _KEPT_OUT_OF:
        if not isinstance(kept, _Kept):  # a plain path (a test's): kept whole
            kept = _Kept(os.path.realpath(kept), "whole")
        if kept.reaches(real, made_in, glob_start_kept):
            return str(kept)
    return None


_usable: dict[tuple[Any, ...], bool] = {}


def _cache_usable() -> bool:
    """Whether the fingerprint cache may be read and written: an absolute folder (``~``
    expanded), in no path this command reads or writes (:func:`kept_path_holding`), and
    dataselect's own (:func:`cache_foreign`). Remembered per cache folder and list of
    kept paths, as each file's fingerprint asks again."""
    root = cache_root()
    key = (str(root), tuple((str(k), getattr(k, "kind", "")) for k in _KEPT_OUT_OF))
    if key not in _usable or not _usable[key]:
        _usable.clear()
        _usable[key] = (root.is_absolute() and kept_path_holding(root) is None
                        and kept_path_holding(root / "fingerprints") is None
                        and cache_foreign(root) == [])
    return _usable[key]


_FINGERPRINT_NAME = re.compile(r"[0-9a-f]{64}\.fingerprint|\..+\.tmp|[0-9a-f]{64}\.json", re.S)
# a model cache folder's entries: converted folders, their locks, the temporary folders a
# conversion renames into place, and the wheels fetched for shortcuts
MODEL_ENTRY = re.compile(r"(?P<name>.+-[0-9a-f]{16})(?P<lock>\.lock)?"
                         r"|(?P<temp>\.tmp-.+-[0-9a-f]{16}-[0-9]+)|(?P<wheels>wheels)", re.S)
# a converted model folder's record (models.importer writes it; named here so that the
# cache's own check, in the core, knows a converted folder)
MODEL_MANIFEST = "dataselect-model.json"


def cache_foreign(root: Path) -> list[str] | None:
    """The names in the cache folder ``root`` that are not dataselect's (``[]``: the folder
    is its own, or absent, or empty), None when it is no readable folder. A folder holding
    :data:`CACHE_MARKER` is dataselect's; one without it (made by an older version) only
    when each entry looks as dataselect writes it: ``fingerprints/`` of fingerprint entries,
    ``models/`` and model cache entries (:func:`model_entry_ours`), as one folder may be
    both caches (``DATASELECT_CACHE`` and ``DATASELECT_MODEL_CACHE`` set alike).

    Why: the folder comes from the environment; judged by names alone, a folder holding
    the user's own ``models/`` or a ``fingerprints/`` of their Parquet files was taken as
    the cache, and entries were written among them."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except OSError:  # not a folder, or unreadable
        return None
    names = {entry.name: entry for entry in entries}
    marker = names.pop(CACHE_MARKER, None)
    marked = marker is not None and marker.is_file(follow_symlinks=False)
    return sorted(name for name, entry in names.items() if not _entry_ours(entry, marked))


def _entry_ours(entry: os.DirEntry, marked: bool) -> bool:
    """Whether ``entry`` is one of a cache's: by name and kind in a marked folder, and by
    what it holds too in one without the marker."""
    if entry.is_symlink():
        return False
    if entry.name == "fingerprints":
        return entry.is_dir() and (marked or _all_ours(entry.path, _fingerprint_ours))
    if entry.name == "models":
        return entry.is_dir() and (marked or cache_foreign(Path(entry.path)) == [])
    return model_entry_ours(entry, deep=not marked)


def _all_ours(folder: str, ours: Callable[[os.DirEntry], bool]) -> bool:
    try:
        return all(ours(entry) for entry in os.scandir(folder))
    except OSError:
        return False


def _fingerprint_ours(entry: os.DirEntry) -> bool:
    if not _FINGERPRINT_NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
        return False
    if not entry.name.endswith(".json"):
        return True
    try:  # an older version's entry: its shape, not just its name
        data = read_json_file(Path(entry.path))
    except (OSError, UnreadableJSON):
        return False
    return isinstance(data, dict) and set(data) == {"key", "xxh3_128"}


def model_entry_ours(entry: os.DirEntry, deep: bool = True) -> bool:
    """Whether ``entry`` of a model cache folder is one the model cache writes: a lock
    file, a converted folder, a conversion's temporary folder, or ``wheels/`` (no link);
    ``deep`` (a folder without the marker): a converted folder holds its import manifest
    and ``wheels/`` only wheels."""
    found = MODEL_ENTRY.fullmatch(entry.name)
    if found is None or entry.is_symlink():
        return False
    if found.group("lock"):
        return entry.is_file(follow_symlinks=False)
    if not entry.is_dir(follow_symlinks=False):
        return False
    if not deep:
        return True
    if found.group("wheels"):
        return _all_ours(entry.path, lambda e: e.name.startswith(".")
                         or (e.name.endswith(".whl") and e.is_file(follow_symlinks=False)))
    return bool(found.group("temp")) or os.path.isfile(os.path.join(entry.path, MODEL_MANIFEST))


def make_cache_folder(root: Path) -> None:
    """Make the cache folder ``root`` (its parents too) with :data:`CACHE_MARKER` in it, or
    add the marker to an existing one judged dataselect's (:func:`cache_foreign`), so that
    it is known as the cache from then on. OSError is left to the caller."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _make_marker(fd)
    finally:
        os.close(fd)


def _make_marker(root_fd: int) -> None:
    """:data:`CACHE_MARKER` in the folder open as ``root_fd``, unless a name is there: made
    with ``O_EXCL``, which follows no link, so a link planted under the marker's name
    does not get the line written into the file it names (``open(marker, "a")`` did)."""
    try:
        fd = os.open(CACHE_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644, dir_fd=root_fd)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write("a cache folder of dataselect's: it may be deleted whole\n")


def cache_root() -> Path:
    """The cache folder: ``$DATASELECT_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/dataselect``,
    ``~`` expanded (an env file or a systemd unit passes it as written). Read from the
    environment on every call, so tests and jobs can point it elsewhere. A relative
    ``XDG_CACHE_HOME`` is ignored, as the XDG spec says; a relative ``DATASELECT_CACHE``
    is returned as it is, and the cache is then not used (it would land wherever the
    command is run, in a data folder perhaps)."""
    if root := os.environ.get("DATASELECT_CACHE"):
        return Path(os.path.expanduser(root))
    return Path(xdg_cache_home()) / "dataselect"


def model_cache_root() -> Path:
    """Where converted models live (``models.importer`` converts into it): ``~`` expanded;
    read from the environment on every call. Here, in the core, so that an output folder's
    check (:mod:`dataselect.outdir`) can name it without importing the model package. A
    relative ``DATASELECT_MODEL_CACHE`` is refused by ``models.importer.check_model_cache``."""
    if root := os.environ.get("DATASELECT_MODEL_CACHE"):
        return Path(os.path.expanduser(root))
    return Path(xdg_cache_home()) / "dataselect" / "models"


def unknown_home_user(root: str | os.PathLike) -> str | None:
    """The user named by a ``~user`` that ``os.path.expanduser`` left as it was (no such
    user here), else None. Why: ``DATASELECT_MODEL_CACHE='~nosuchuser/mc'`` was refused
    as "a relative path", which sends the user looking for the wrong mistake (pass 15,
    c46)."""
    first = os.fspath(root).split(os.sep, 1)[0]
    return first[1:] if first.startswith("~") and len(first) > 1 else None


def xdg_cache_home() -> str:
    """``$XDG_CACHE_HOME`` (``~`` expanded) when absolute, else ``~/.cache``."""
    xdg = os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "")
    return xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")


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


def _entry_name(key: CacheKey) -> str:
    return hashlib.sha256(json.dumps(key).encode()).hexdigest() + ENTRY_SUFFIX


# what opening a folder of the cache takes: no link followed at its own name
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# an entry is a few hundred bytes; a bigger file there is no entry of ours
_ENTRY_MAX = 4096


def fd_real_path(fd: int, path: str) -> str | None:
    """The real path of the folder open as ``fd``, as the kernel knows it now (Linux:
    ``/proc/self/fd``); elsewhere ``path`` resolved, when it still names that folder."""
    with contextlib.suppress(OSError):
        real = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isabs(real) and not real.endswith(" (deleted)"):
            return real
    real = os.path.realpath(path)
    try:
        here, there = os.fstat(fd), os.stat(real)
    except OSError:
        return None
    return real if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino) else None


@contextlib.contextmanager
def _entries_folder(make: bool) -> Iterator[int | None]:
    """The cache's ``fingerprints`` folder, open (None: the cache is not to be used now),
    judged where it is when it is used, not only when first judged usable.

    Why: :func:`_cache_usable` is remembered for the process, and entries were then
    written with ``mkstemp(dir=...)`` and ``os.replace`` through whatever the path named
    at that moment: a ``fingerprints`` replaced by a link to a pool folder after the first
    check got entries in the pool (pass 15, g02), and a read through such a link could
    return a planted digest. So the cache folder is opened, its real path (the kernel's,
    of the open folder) judged against the paths the command reads and writes, and
    ``fingerprints`` opened below it with ``O_NOFOLLOW``; every entry is then read and
    written relative to that open folder, which a link planted later cannot redirect. A
    folder missing (``make``) is made one name at a time below the open folder it is
    made in, which is judged first. Anything odd (a link, no folder, no permission): the
    cache is skipped, as it only saves time."""
    fds: list[int] = []
    folder = None
    try:
        root = _open_cache_root(make, fds)
        if root is not None:
            if make:
                _make_marker(root)
                with contextlib.suppress(FileExistsError):
                    os.mkdir("fingerprints", 0o777, dir_fd=root)
            fds.append(os.open("fingerprints", _FOLDER_FLAGS, dir_fd=root))
            folder = fds[-1]
    except OSError:
        folder = None
    try:
        yield folder
    finally:
        for fd in fds:
            os.close(fd)


def _open_cache_root(make: bool, fds: list[int]) -> int | None:
    """The cache folder open (its descriptors appended to ``fds``, to be closed by the
    caller), made if absent and ``make``; None when it is absent (not ``make``) or lies in
    or holds a path the command reads or writes."""
    if not _cache_usable():
        return None
    root = str(cache_root())
    missing: list[str] = []
    existing = root
    while not os.path.lexists(existing):
        if os.path.dirname(existing) == existing:
            return None
        missing.append(os.path.basename(existing))
        existing = os.path.dirname(existing)
    if missing and not make:
        return None
    # the folders up to the first that exists may be links (the user's): its real path is
    # judged; the folders made below it, and fingerprints/, are opened without following one
    fds.append(os.open(existing, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    real = fd_real_path(fds[-1], existing)
    if real is None:
        return None
    target = os.path.join(real, *reversed(missing))
    made_in = os.path.join(real, missing[-1]) if missing else None
    if (_kept_reaching(target, made_in) is not None
            or _kept_reaching(os.path.join(target, "fingerprints"), made_in) is not None):
        return None
    for name in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=fds[-1])
        fds.append(os.open(name, _FOLDER_FLAGS, dir_fd=fds[-1]))
    return fds[-1]


def _read_entry(key: CacheKey) -> str | None:
    """The cached digest, or None when there is none or it is unreadable, damaged or for
    another key (it is then rewritten after hashing). Opened below the judged cache folder
    (:func:`_entries_folder`) with ``O_NOFOLLOW`` and ``O_NONBLOCK`` (a FIFO planted there
    would block), and read only when it is a plain file."""
    with _entries_folder(make=False) as folder:
        if folder is None:
            return None
        try:
            fd = os.open(_entry_name(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, dir_fd=folder)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            entry = parse_json(os.read(fd, _ENTRY_MAX + 1))
            digest = entry["xxh3_128"]
            valid = entry["key"] == list(key) and HEX_DIGEST.fullmatch(digest) is not None
        except (OSError, UnreadableJSON, KeyError, TypeError):
            return None
        finally:
            os.close(fd)
    return digest if valid else None


def _write_entry(key: CacheKey, digest: str) -> None:
    """Temp file and rename, both relative to the open ``fingerprints`` folder
    (:func:`_entries_folder`), so a reader never sees half an entry and a link planted
    meanwhile is never written through; any OS error (read-only or full cache folder) is
    ignored: the cache saves time, it is never needed."""
    with _entries_folder(make=True) as folder:
        if folder is None:
            return
        temp = f".{os.getpid()}-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=folder)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"key": list(key), "xxh3_128": digest}, f)
            os.replace(temp, _entry_name(key), src_dir_fd=folder, dst_dir_fd=folder)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder)
