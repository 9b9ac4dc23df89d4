"""Where a path lives: the local disk, read and written with ``os`` calls as always, or an
object store named by an fsspec URL (``s3://``, ``gs://``, ``hf://``, ``memory://``).

One seam, so the rest of the code asks "is this remote?" in one place and never builds a
local folder out of a URL (``--out s3://bucket/out`` once became ``./s3:/bucket/out``).
``file://`` URLs are local paths with a prefix: they are turned into plain paths, so they
behave exactly as the paths they name (``file:///abs``, ``file://localhost/abs`` and the
one-slash ``file:/abs`` of RFC 8089, ``%XX`` escapes decoded; a ``file://`` URL naming
another host is refused).

pyarrow parses a path string as a URI when it does not exist locally (``v1:pool.parquet``
is "scheme v1", ``file:/abs`` is ``/abs``): a relative local name with a ``:`` was refused
as corrupt, or worse, read from another folder than the one written. Every local path
handed to pyarrow goes through :func:`arrow_path`, an absolute path, which it never parses.

Object stores differ from a disk in three ways that shape what is done here:

- reads are HTTP requests, so a piece of a file is fetched with one range request
  (:func:`read_range`, and :func:`source` for pyarrow, which asks for the byte ranges of
  the row groups it reads), never by downloading the whole object;
- there is no rename, so a file is written whole to a local temporary and uploaded with
  one request (:func:`upload`): an object is either absent or complete;
- listings may be cached by the client (s3fs keeps them), so every existence check and
  listing here drops the cached one first: another process (a worker, the killed job
  before a rerun) may have written since.

The filesystem packages are optional extras (``pip install 'dataselect[s3]'``, ``[gcs]``);
a URL whose package is missing is a one-line error naming what to install.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import os
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import IO, TYPE_CHECKING, Any

from dataselect.errors import InputError, network_cause, network_line

if TYPE_CHECKING:  # pyarrow is imported where a file is opened: checks imports this module
    import pyarrow as pa

# a URL, or an fsspec chain of them (``simplecache::s3://b/k``: named by its first layer)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)(?:://|::.*://)")
# scheme -> (package, dataselect's extra that installs it)
_EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"),
           "gcs": ("gcsfs", "gcs")}
# object metadata that changes with an object's content, in the spellings of s3fs,
# gcsfs and huggingface_hub (what a fingerprint of a remote file is made of)
_VERSION_KEYS = ("ETag", "etag", "VersionId", "version_id", "generation", "md5Hash",
                 "blob_id", "lfs", "LastModified", "last_modified", "updated", "mtime")


# fsspec filesystems that read only: archives, web servers, git hosts, reference sets
READ_ONLY_SCHEMES = frozenset({"zip", "tar", "libarchive", "http", "https", "github", "git",
                               "reference", "data"})
# fsspec filesystems that live in one process (memory://) or are views through it (the
# caching wrappers keep their copy in a temporary folder of that process): an output
# written there is gone when dataselect exits, after "wrote ..." and exit status 0
PROCESS_LOCAL_SCHEMES = frozenset({"memory", "cached", "simplecache", "filecache",
                                   "blockcache", "dask"})
# the schemes that name this machine's disk
LOCAL_SCHEMES = ("file", "local")
_FILE_URL = re.compile(r"^(?P<scheme>file|local):(//(?P<host>[^/]*))?(?P<path>/.*)?$",
                       re.IGNORECASE)
# what a decoded file: URL path cannot hold: a NUL ends a name, and a "/" inside a name
# (%2F) would cut it in two
_UNNAMEABLE = re.compile(r"%(?:00|2F)", re.IGNORECASE)


# a store's own words for "not found" (s3fs: "The specified bucket does not exist")
_SAYS_MISSING = re.compile(r"not exist|not found|no such", re.IGNORECASE)


def check_writable(url: str) -> None:
    """Refuse an output URL on a filesystem fsspec can only read, or one that dies with
    this process, before anything is written: the write would fail half-way with the
    store's own error, land beside the archive, or vanish when the command exits."""
    if scheme(url) in READ_ONLY_SCHEMES:
        raise InputError(f"{scheme(url)}:// can only be read; write to a local folder or an "
                         "object store (s3://, gs://, hf://)", where=url, field="out")
    if scheme(url) in PROCESS_LOCAL_SCHEMES:
        raise InputError(f"{scheme(url)}:// lives only as long as this process, so the "
                         "output would be gone when dataselect exits; write to a local "
                         "folder or an object store (s3://, gs://, hf://)",
                         where=url, field="out")


def scheme(path: str | os.PathLike) -> str | None:
    match = _SCHEME.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_remote(path: str | os.PathLike) -> bool:
    """A URL of another filesystem than the local one (``file://`` is local)."""
    return scheme(path) not in (None, *LOCAL_SCHEMES)


def refuse_nul(path: str, setting: str | None = None) -> None:
    """Refuse a path holding a NUL character in one line: no file name can hold one, and
    the system call that met it raised a bare ``ValueError: embedded null byte`` as a
    traceback, from whichever of dozens of calls came first (pass 20, g06)."""
    if isinstance(path, str) and "\0" in path:
        raise InputError("the path holds a NUL character (\\0), which no file name can "
                         "hold: give the path without it", where=path.replace("\0", "\\0"),
                         field=setting)


def local_form(path: str | os.PathLike) -> str:
    """``path`` with a ``file:`` URL turned into the local path it names (``file:///a``,
    ``file://localhost/a`` and ``file:/a`` are ``/a``); anything else unchanged. A
    ``file://`` URL naming another host is refused: it is no path on this machine, and
    stripping the prefix made ``file://host/a`` the relative folder ``host/a``. A host is
    matched without regard to case (``file://LOCALHOST/a`` is ``/a``), as RFC 3986 reads
    host names, so a URL another tool wrote is not refused. Every
    path a user gives (pool, target, out, report, eval, a recipe's) passes here."""
    text = os.fspath(path)
    refuse_nul(text)
    match = _FILE_URL.match(text)
    if match is None or (match.group(2) is None and match.group("path") is None):
        return text  # not a file URL (a name like "file:notes" is a relative file)
    host = match.group("host")  # RFC 8089: "localhost", in any case, is this machine
    if (host or "localhost").lower() != "localhost" or match.group("path") is None:
        raise InputError("a file: URL names a path on this machine: write file:///abs/path, "
                         "file://localhost/abs/path or the path itself", where=text)
    if match.group("scheme").lower() != "file":
        return match.group("path")  # fsspec's local:// takes its path as written
    return _decoded(match.group("path"), text)


def _decoded(path: str, url: str) -> str:
    """A ``file:`` URL's path with its ``%XX`` escapes decoded, as RFC 8089 (and every
    browser, curl and Python's ``url2pathname``) reads them: ``sp%20ace.parquet`` names
    ``sp ace.parquet``, ``pc%41.parquet`` names ``pcA.parquet``. Escaped bytes that are not
    UTF-8 name the file whose name holds those bytes; an escaped NUL or ``/`` names no
    file and is refused."""
    if _UNNAMEABLE.search(path):
        raise InputError("a file: URL escapes a NUL (%00) or a '/' (%2F), which no file "
                         "name holds; write the path itself", where=url)
    return os.fsdecode(urllib.parse.unquote_to_bytes(path))


def arrow_path(path: str | os.PathLike) -> str:
    """A local path as pyarrow must get it: absolute, so that it is never parsed as a URI
    (pyarrow takes a relative ``a:b`` that does not exist yet for scheme ``a``), with a
    ``..`` after a symbolic link resolved as the system resolves it (:func:`through_links`):
    ``abspath`` drops ``L/..`` as text, and read another file than the one listed."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        working_folder()  # one line, where a deleted folder made abspath raise
    return os.path.abspath(through_links(text))


def working_folder() -> str:
    """``os.getcwd()``, or one line when the folder the command runs in no longer exists
    (a cleaned temporary or CI folder): relative paths mean nothing there, and
    ``abspath`` raised ``FileNotFoundError`` as a traceback."""
    try:
        here = os.getcwd()
    except OSError as exc:
        raise InputError(f"the folder this command runs in is gone ({exc.strerror or exc}), "
                         "so a relative path names nothing: cd into a folder that exists, or "
                         "give absolute paths") from None
    try:
        here.encode("utf-8")
    except UnicodeEncodeError:
        # every path a job records is UTF-8 text: a relative path was refused as a name
        # to "rename", pointing at the file rather than the folder it was run from
        raise InputError("the folder this command runs in has a name that is not valid "
                         "UTF-8, and paths relative to it would be recorded under it: cd into "
                         "a folder with a UTF-8 name, or give absolute paths",
                         where=os.fsencode(here).decode("utf-8", "backslashreplace")) from None
    return here


def absolute(path: str | os.PathLike) -> str:
    """A path a job sends anywhere, made absolute here, on the client, as the system reads
    it (a ``..`` after a link resolved: :func:`through_links`); a ``file:`` URL as the
    path it names, any other URL as given, an empty path as given (refused where used).

    Why: a relative path means the folder the process that opens it runs in. A cluster's
    workers (``--scheduler``, a recipe's ``cluster.scheduler``) run in folders of their
    own, so a relative ``--pool p --out o`` read the workers' ``p/`` and wrote the job's
    ``.parsed/``, ``.scores/`` and ``.stats/`` into the workers' ``o/``, a folder never
    claimed, outside ``--out``; and a pool found only here was refused as a missing file.
    Every path is made absolute before planning, with a scheduler or not, so the
    in-process runs read and write the very paths a cluster would."""
    text = home_expanded(local_form(path))
    if not text or is_remote(text):
        return text
    if os.path.isabs(text):
        return os.path.abspath(through_links(text))
    working_folder()
    return os.path.abspath(through_links(text))


def glob_once(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, but ``**`` enters each real folder once:
    glob follows symbolic links to folders, and two links to a parent folder make it list
    paths for ever (2 ** 40 of them before the OS refuses a longer path). What a glob
    matches as the readers list it; the caches keep out of the same matches."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return _glob.glob(pattern)
    at = parts.index("**")
    bases = _glob.glob(os.sep.join(parts[:at]) or os.sep) if at else [os.curdir]
    rest = os.sep.join(parts[at + 1:])
    found = []
    for base in bases:
        for folder in _folders_once(base):
            if not at:  # a pattern from the current folder: names relative to it, as glob's
                folder = os.path.relpath(folder)
                if folder == os.curdir:
                    found.extend(glob_once(rest) if rest else [folder])
                    continue
            found.extend(glob_once(os.path.join(_glob.escape(folder), rest)) if rest
                         else [folder])
    return found


def _folders_once(base: str) -> Iterator[str]:
    """``base`` and the folders below it, links followed, each real folder once (hidden
    ones skipped, as ``glob`` skips them)."""
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, _ in os.walk(base, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        yield folder


def home_expanded(path: str) -> str:
    """A leading ``~`` or ``~user`` read as that home folder, as a shell reads it typed
    bare; a ``~user`` naming no user here is refused in one line.

    Why: a path reaches dataselect with its ``~`` unread wherever no shell read it first:
    quoted on the command line (``--out '~/sel'``, as globs are quoted), in a recipe, in
    a program. Read literally, ``--out '~/sel'`` made a folder named ``~`` in the working
    folder (pass 19, g05), one a later ``rm -rf ~`` typed to clean it up would take the
    home folder with it. A folder really named ``~`` is given as ``./~``."""
    if not path.startswith("~"):
        return path
    refuse_nul(path)
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        user = expanded.split(os.sep, 1)[0][1:]
        raise InputError(f"{path!r} starts with ~{user}, but this system knows no user "
                         f"{user!r} whose home folder that would be: give the folder "
                         "itself, or ./ before a name that starts with ~", where=path)
    return expanded


def absolute_spec(spec: str | os.PathLike) -> str:
    """An input spec (a path, a folder or a glob, as ``--pool`` takes it) made absolute as
    :func:`absolute` makes a path, with the working folder's own name kept literal: a
    relative glob is joined to the escaped working folder, and a relative path that does
    not exist is escaped whole, so that expanding the result reads what the spec read
    where it was typed (:func:`unescaped` gives the path back for a message).

    Why: run from ``run[1]`` (or ``a*``), ``p/*.parquet`` made absolute read ``run1/p``
    (or the siblings' ``p/`` too), and a missing ``t9.jsonl`` matched ``run1/t9.jsonl``:
    the working folder's name had become part of the pattern. Whether a spec is a glob is
    decided on the text as typed, as before: an existing path is that path, even when its
    name holds wildcard characters."""
    text = home_expanded(local_form(spec))
    if not text or is_remote(text) or os.path.isabs(text) or os.path.lexists(text):
        return absolute(text)
    here = _glob.escape(working_folder())
    text = through_links(text)
    if os.path.isabs(text):  # a ".." after a link, resolved
        return text
    pattern = text if _glob.has_magic(text) else _glob.escape(text)
    return os.path.join(here, os.path.normpath(pattern))


def unescaped(pattern: str) -> str:
    """``pattern`` with :func:`glob.escape`'s brackets removed (``[*]`` is ``*``)."""
    return re.sub(r"\[([*?\[])\]", r"\1", pattern)


def through_links(path: str) -> str:
    """A local path whose ``..`` the system and the text read alike: ``path`` itself when
    dropping each ``..`` with the name before it (as ``os.path.normpath``, ``abspath`` and
    pyarrow do) reaches the same file, else the path with its part up to the last ``..``
    resolved (``os.path.realpath``).

    Why: with ``L -> pool/deep``, the system reads ``L/..`` as ``pool``, and the text as
    ``.``: a folder ``L/..`` was listed by the system (``pool/pool.parquet``), then each
    file was opened as ``L/../pool.parquet``, which pyarrow read as ``./pool.parquet``,
    another file, with exit 0 (pass 13, g09). Every local input, glob match and output
    folder passes here, so listing, reading, the identity and the output-inside-input
    checks all follow the system. A path with no ``..``, or none after a link, keeps the
    spelling the user gave."""
    parts = path.split(os.sep)
    if ".." not in parts or "\0" in path:  # a NUL is refused where the path is used
        return path
    if os.path.realpath(path) == os.path.realpath(os.path.normpath(path)):
        return path
    last = len(parts) - 1 - parts[::-1].index("..")
    head = os.path.realpath(os.sep.join(parts[:last + 1]) or os.sep)
    return os.path.join(head, *parts[last + 1:])


def resolved(spec: str | os.PathLike) -> str:
    """One spelling of an input path, folder or glob, for a job's identity: a local one as
    its resolved absolute path (``p``, ``./p``, ``/abs/p`` and ``file:///abs/p`` are one
    input), a URL as given. Why: the identity recorded the spelling, so the same pool
    given once relative and once absolute made another job, and the rerun that should
    resume was refused."""
    text = local_form(spec)
    return text if is_remote(text) else os.path.realpath(text)


def normalize_url(url: str) -> str:
    """One spelling per remote folder: no trailing ``/``, no ``//`` or ``.`` inside."""
    prefix = _SCHEME.match(url).group(0)
    rest = posixpath.normpath(url[len(prefix):])
    return prefix + rest.lstrip("/") if rest != "." else prefix


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path it takes there."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package, extra = _EXTRAS.get(scheme(url) or "", (exc.name or "its fsspec package",
                                                          None))
        also = f" (or 'dataselect[{extra}]')" if extra else ""
        raise InputError(f"{scheme(url)}:// URLs need {package}: pip install {package}{also}",
                         where=url) from None
    except ValueError as exc:
        raise InputError(f"not a URL fsspec knows ({exc})", where=url) from None


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a store's refusal (no credentials, access denied, no such bucket) or the
    network's failure (no such host, nothing listening, a timeout) into one line naming
    the URL and what to check, not a botocore or httpx trace."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        # the network's failure, whichever client wraps it (httpx's ConnectError under
        # hf:// is no OSError): found by class along its causes
        if network_cause(exc) is not None:
            raise InputError(str(network_line(exc)), where=url) from None
        # a store's refusal: an OSError, or one of a client that raises its own
        # (botocore's missing credentials)
        if not isinstance(exc, OSError) and not type(exc).__module__.startswith(
                ("botocore", "aiobotocore", "google", "huggingface_hub", "aiohttp")):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and not _SAYS_MISSING.search(reason):
            # gcsfs names only the API path it asked (``b/nobucket/o``: no such bucket)
            reason = f"no such bucket or object: {reason}"
        raise InputError(f"cannot reach the object ({reason}); check the URL and the "
                         "store's credentials (AWS_* variables or ~/.aws for s3://, "
                         "GOOGLE_APPLICATION_CREDENTIALS for gs://, HF_TOKEN for hf://)",
                         where=url) from None


def _fresh(url: str) -> tuple[Any, str]:
    """The filesystem with no cached listing of ``url`` (another process may have written)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return fs, path


def as_url(fs: Any, path: str) -> str:
    """A path fsspec returned (``bucket/key``) as a URL again."""
    return fs.unstrip_protocol(path)


def exists(url: str) -> bool:
    return _ask(url, os.path.exists, "exists")


def isfile(url: str) -> bool:
    return _ask(url, os.path.isfile, "isfile")


def isdir(url: str) -> bool:
    return _ask(url, os.path.isdir, "isdir")


def _ask(url: str, local: Callable[[str], bool], method: str) -> bool:
    """``local(url)`` for a path; for a URL what the store's metadata of it says, asked
    afresh (another process may have written since) and with the store's refusals as one
    line. Only "not found" is an answer of no: fsspec's ``isfile`` (and gcsfs's
    ``isdir``) answer False to any error, so a store that could not be reached, or that
    refused (403), read as a missing file: ``--pool gs://b/pool`` with the server down was
    "no such file or folder", after a minute of gcsfs's retries for each question."""
    if not is_remote(url):
        return local(url)
    with reaching(url):  # a filesystem may ask the store already (hf:// resolves the repo)
        fs, path = _fresh(url)
        try:
            kind = fs.info(path).get("type")
        except FileNotFoundError:
            return False
        return {"exists": True, "isfile": kind == "file", "isdir": kind == "directory"}[method]


def size(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    fs, inner = filesystem(path)
    return int(fs.size(inner))


def names_below(url: str) -> list[str]:
    """Every object below the folder ``url``, as names relative to it (``a/b.parquet``),
    sorted; empty when there is none (an object store has no empty folders). The folder's
    own placeholder key (``o/``, the empty object the AWS console or ``rclone mkdir``
    writes to show a folder) is no name below it: it made a new output folder "not empty
    (holds )", and refusals in a finished one named ``s3://b/o/`` instead of the user's
    object. A placeholder further down (``o/sub/``) is named as that folder."""
    with reaching(url):
        fs, path = _fresh(url)
        base = path.rstrip("/") + "/"
        return sorted(name for name in (p[len(base):] for p in fs.find(path)
                                        if p.startswith(base)) if name)


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def glob(pattern: str) -> list[str]:
    with reaching(pattern):
        fs, path = _fresh(pattern)
        return sorted(as_url(fs, p) for p in fs.glob(path) if fs.isfile(p))


def matches(spec: str) -> bool:
    """Whether a path, folder or glob names anything now (a recipe's paths are checked
    before its run starts)."""
    spec = local_form(spec)
    if not is_remote(spec):
        # as expand_paths reads it (glob_once): "p/**/*.parquet" matches p/a.parquet (a
        # recipe's pool was refused as matching nothing where --pool read it), and two
        # links to a parent folder are not walked for ever
        return os.path.exists(spec) or bool(glob_once(spec))
    return exists(spec) or (_glob.has_magic(spec) and bool(glob(spec)))


def open_binary(path: str) -> IO[bytes]:
    """A file to read from start to end (a compressed file, a planning scan)."""
    if not is_remote(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    return fs.open(inner, "rb")


def read_range(path: str, start: int, stop: int | None) -> bytes:
    """Bytes ``[start, stop)`` of a file: one range request for an object."""
    if not is_remote(path):
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(None if stop is None else stop - start)
    fs, inner = filesystem(path)
    return fs.cat_file(inner, start=start, end=stop)


def read_bytes(path: str) -> bytes:
    return read_range(path, 0, None)


def source(path: str) -> str | pa.NativeFile:
    """What pyarrow reads ``path`` from: the path itself when local, else a random-access
    file whose reads are range requests (pyarrow asks only for the footer and the row
    groups or record batches it reads)."""
    if not is_remote(path):
        return arrow_path(path)
    fs, inner = filesystem(path)
    # no read-ahead: s3fs's default fetches 50 MiB past each read, the whole object for
    # most files (pyarrow's FSSpecHandler opens files so), where one row group was wanted
    import pyarrow as pa

    return pa.PythonFile(fs.open(inner, "rb", cache_type="none"), mode="r")


def mapped(path: str) -> pa.NativeFile:
    """An Arrow IPC file to read: memory-mapped when local, range requests when remote."""
    import pyarrow as pa

    return pa.memory_map(path) if not is_remote(path) else source(path)


def upload(local: str, url: str) -> None:
    """Copy a finished local file to ``url`` in one upload (a multipart upload for a large
    file, which the store also makes visible only when it completes)."""
    fs, path = filesystem(url)
    fs.put_file(local, path)


def remove(urls: list[str]) -> None:
    """Delete exactly the objects ``urls`` (keys as written, never patterns).

    Why: fsspec's ``rm`` expands each path it is given as a glob (``_expand_path``), so
    the keys of an output named with ``[``, ``*`` or ``?`` (``--out s3://b/o[1]``) were
    read as patterns that matched nothing: a FileNotFoundError traceback, with the
    objects left behind. Keys without those characters still go in one bulk request
    (s3fs deletes a thousand a request); the others are deleted one by one through
    ``rm_file``, which takes its path as written."""
    if not urls:
        return
    fs, _ = filesystem(urls[0])
    paths = [filesystem(u)[1] for u in urls]
    literal = [p for p in paths if not _glob.has_magic(p)]
    if literal:
        fs.rm(literal)
    for path in paths:
        if _glob.has_magic(path):
            fs.rm_file(path)


def object_fingerprint(url: str) -> dict[str, Any]:
    """``{"path", "bytes", ...}`` of an object from its metadata (one request, no bytes
    read): the store's ETag, version or generation and modification time change with any
    write, which is what a fingerprint must catch."""
    with reaching(url):
        fs, path = _fresh(url)
        info = fs.info(path)
    found = {key: str(info[key]) for key in _VERSION_KEYS if info.get(key) not in (None, "")}
    return {"path": url, "bytes": int(info.get("size") or 0), "object": found}


def walk_local(root: str, enter: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Every path below the local folder ``root`` (files and folders, ``root/...``), in
    sorted order, symbolic links to folders entered, each real folder once; a subfolder
    named ``name`` is listed but entered only when ``enter(name)``.

    Why: ``Path.rglob("*")`` (before Python 3.13) lists a linked folder without entering
    it, while a ``**`` glob enters it, so ``--pool p`` read fewer rows than
    ``--pool 'p/**/*.parquet'`` and skipped the linked folder without a word. Every
    folder input is listed through here (pool and target folders, folder fingerprints,
    the output-inside-input check), so each reads what a recursive glob reads. A folder
    reached twice (two links to it, a link to a folder above it) is entered the first
    time only, by sorted path, as ``formats._glob`` does, so a loop of links ends and the
    name a file is read under does not depend on the order the system lists names."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders.sort()
        try:
            info = os.stat(folder)
        except OSError:  # went away while listed
            subfolders.clear()
            continue
        if (info.st_dev, info.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        found.extend(os.path.join(folder, name) for name in [*subfolders, *files])
        subfolders[:] = [name for name in subfolders if enter(name)]
    return sorted(found, key=lambda path: PurePath(path).parts)


def linked_folders(root: str) -> list[str]:
    """The real paths of the folders that symbolic links below the local folder ``root``
    lead to (entered by :func:`walk_local`, so read as part of ``root``)."""
    return [os.path.realpath(path) for path in walk_local(root)
            if os.path.islink(path) and os.path.isdir(path)]
