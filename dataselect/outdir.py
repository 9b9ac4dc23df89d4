"""Output folders: which ones dataselect may write into, and what it may delete there.

A user's data must never be overwritten or deleted by a job pointed at the wrong folder. So
a folder is dataselect's only when it is new, empty, or carries dataselect's marker
(``.dataselect.json``); anything else is refused before any work is done. The marker is
written first, before the job computes anything, and holds:

- ``identity``: the settings and input fingerprints that determine the folder's bytes. A
  rerun with the same identity resumes (finished parts are reused); another identity is
  refused unless the caller passes ``overwrite``.
- ``files``: every name (relative to the folder) the job *will* write, recorded before the
  stage that writes them starts. ``overwrite`` deletes exactly those (and their ``.tmp-``
  temporaries), never a file it did not list, so a note a user dropped into an output
  folder survives.

An output may not be, contain or lie inside any input: writing into the pool folder would
overwrite it, and an output inside a folder that is read recursively would be read back as
input by the next run. A kernel lock on ``.dataselect.lock`` keeps two jobs from writing
one folder at once; it dies with its process, so a killed job never blocks its rerun.

An output URL in an object store (``s3://bucket/out``) is claimed the same way, by its
marker object, and ``overwrite`` deletes exactly the listed objects; it has no lock (no
object-store lock dies with its holder), so two jobs into one URL are not prevented.

Both names start with ``.``, like every bookkeeping name of dataselect's
(:mod:`dataselect.layout`), so dataset readers skip them. A folder holding bookkeeping under
the names older versions used (``_manifest.json``, ``_scores/``, ...) is refused: a resumed
job would otherwise mix two layouts in one folder.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import glob
import json
import os
import posixpath
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataselect import checks, fingerprint, storage
from dataselect.errors import (
    InputError,
    OutputConflictError,
    first_names,
    one_line,
    os_error_line,
)
from dataselect.json_text import UnreadableJSON, read_json_file
from dataselect.layout import SCORES_DIR, TASKS_DIR, UNION_DIR, legacy_entries, own_place
from dataselect.output import (
    jsonable,
    read_json,
    remove_stale_temporaries,
    same_json,
    temporary_of,
    write_json,
)

MARKER = ".dataselect.json"
LOCK = ".dataselect.lock"
_OWN_NAMES = (MARKER, LOCK)
# the kinds of folder whose bookkeeping names changed (datasets, and the recipe root)
_RENAMED_KINDS = ("job", "selection", "union", "recipe")
# kinds whose folder every reader takes whole as one dataset: nothing visible beside the
# listed files may lie in it (:func:`refuse_foreign_data`)
READ_AS_DATA = ("job", "selection", "union")


@dataclass
class OutputFolder:
    """A claimed output folder. Build with :func:`claim_output` (or :meth:`claim`)."""

    path: str
    kind: str
    identity: Any
    files: list[str] = field(default_factory=list)
    resumed: bool = False
    # the identity of the output this claim replaced (``overwrite``), else None: what the
    # previous job made, so that only that is removed (a recipe's dropped tasks)
    replaced: Any = None

    @classmethod
    def claim(cls, path: str | os.PathLike, kind: str, identity: Any, *,
              inputs: Iterable[str] = (), overwrite: bool | None = False,
              before_replacing: Callable[[], None] | None = None) -> OutputFolder:
        """Claim ``path`` without holding a lock (the caller holds one, or writes alone).

        ``identity=None`` claims ownership only: the folder holds something derived that
        the same kind of job may always replace (an index rebuilt with other settings), or
        a job that records no identity of its own (``dataselect score`` writes only the
        score store, which checks its own); the next job with an identity adopts it.
        ``overwrite=None``: the caller offers no way to replace another job's output, so
        the refusal does not suggest one. ``before_replacing`` runs the caller's own checks
        after the folder's and before ``overwrite`` deletes anything (a recipe's task
        folders), so that a refused job leaves the old output whole.
        """
        path = normalize(path)
        refuse_overlap(path, inputs)
        if storage.is_remote(path):  # no links, no folders to make: objects only
            storage.check_writable(path)
            _refuse_local_only(path, kind)
            _refuse_foreign_remote(path)
            return _claim_marked(path, kind, jsonable(identity), overwrite,
                                 before_replacing)
        _refuse_foreign(path)
        refuse_links(path)
        if kind in _RENAMED_KINDS:
            refuse_legacy(path)  # before nesting: an old layout's _scores/ is visible
        refuse_nesting(path, kind)
        make_output_folder(path)
        return _claim_marked(path, kind, jsonable(identity), overwrite, before_replacing)

    @classmethod
    def reopen(cls, path: str | os.PathLike, kinds: Iterable[str]) -> OutputFolder:
        """A finished output folder of one of ``kinds``, as its marker records it, to add
        files to (derived ones: the ``save_to_disk`` copy); the caller holds its lock."""
        path = normalize(path)
        marker = os.path.join(path, MARKER)
        if not storage.exists(marker):
            raise InputError("is not an output folder of dataselect (no .dataselect.json)",
                             where=path)
        data = _read_marker(marker)
        kinds = tuple(kinds)
        if data.get("kind") not in kinds:
            raise InputError(f"holds dataselect output of kind {data.get('kind')!r}, not "
                             f"{' or '.join(kinds)}", where=path)
        refuse_legacy(path)
        refuse_links(path)
        files = [str(f) for f in data.get("files", [])]
        _refuse_special_listed(path, files)
        return cls(path, str(data["kind"]), data.get("identity"),
                   files, resumed=True)

    def join(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    def expect(self, names: Iterable[str]) -> None:
        """Record that the folder is about to get ``names`` (relative paths), so that a
        later ``overwrite`` deletes them even if this job is killed halfway.

        A name not listed yet must be free: a file already there was not written by
        dataselect (everything it writes is listed first), so it is the user's, and is
        refused rather than replaced (a ``part-00001.parquet`` of their own beside a
        one-part selection, a ``.hf/dataset_info.json``, an ``eval/results.json``)."""
        known = set(self.files)  # once: a set per name made this O(P^2) at P partitions
        new = [n for n in dict.fromkeys(names) if n not in known]
        if not new:
            return
        for name in new:
            _check_relative(name)
        self._refuse_present(new)
        self.files = [*self.files, *new]
        self._save()

    def remove_temporaries(self, subfolder: str = "") -> int:
        """Delete the temporaries a killed job left in ``subfolder`` (relative; the folder
        itself by default) of the files this folder's marker lists there, and of the
        marker; returns how many. A user's own ``.tmp-*`` file is not one of them."""
        names = {os.path.basename(n) for n in self.files if os.path.dirname(n) == subfolder}
        if not subfolder:
            names.update(_OWN_NAMES)
        return remove_stale_temporaries(self.join(subfolder), names.__contains__)

    def _refuse_present(self, names: list[str]) -> None:
        if storage.is_remote(self.path):
            present = set(storage.names_below(self.path))
            taken = [n for n in names if n in present]
        else:
            taken = [n for n in names if os.path.lexists(self.join(n))]
        if taken:
            raise InputError("exists and was not written by dataselect (the folder's "
                             f"{MARKER} does not list it); move it away: dataselect writes "
                             "only files it lists, and deletes nothing else",
                             where=self.join(taken[0]))

    def _save(self) -> None:
        write_json({"tool": "dataselect", "kind": self.kind, "identity": self.identity,
                    "files": self.files}, os.path.join(self.path, MARKER))


# the setting a claim's refusals name: --out, unless the folder is another setting's (a
# scorer's feature store, -p features), which the same code claims
_SETTING: contextvars.ContextVar[str] = contextvars.ContextVar("dataselect_output_setting",
                                                              default="--out")
# the field an error names for it, where not the setting's last word (``output.path`` for
# ``output.path (r.yaml)``)
_FIELD: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dataselect_output_field", default=None)


@contextlib.contextmanager
def naming_setting(setting: str, field: str | None = None) -> Iterator[None]:
    """Name ``setting`` (``-p features``, a recipe's ``output.path (r.yaml)``) instead of
    ``--out`` in the refusals of the claims and checks made inside, with ``field`` (else
    the setting's last word) as their field: a feature store's folder is claimed by the
    code that claims an output folder, and its line said "choose another --out", which
    sent a user to change a setting that was fine (or one they never gave)."""
    token = _SETTING.set(setting)
    field_token = _FIELD.set(field)
    try:
        yield
    finally:
        _FIELD.reset(field_token)
        _SETTING.reset(token)


def _setting() -> str:
    return _SETTING.get()


def _field() -> str:
    """The setting as an error's field (``out``, ``features``)."""
    return _FIELD.get() or _SETTING.get().split()[-1].lstrip("-")


def check_claimable(path: str | os.PathLike, kind: str, inputs: Iterable[str] = ()) -> None:
    """The checks :meth:`OutputFolder.claim` makes of ``path`` before it writes anything,
    made up front and writing nothing: for a folder a job claims only after hours of work
    (a scorer's feature store, claimed after the model ran), so that a folder it cannot
    take is refused with the job's other paths."""
    path = normalize(path)
    refuse_overlap(path, inputs)
    if storage.is_remote(path):
        _refuse_local_only(path, kind)
        _refuse_foreign_remote(path)
    else:
        _refuse_foreign(path)
        refuse_links(path)
        refuse_nesting(path, kind)
    marker = os.path.join(path, MARKER)
    if storage.exists(marker):
        previous = _read_marker(marker)
        found = previous.get("kind")
        if found != kind:
            raise OutputConflictError(
                f"{path} holds dataselect output of another kind ({found}, not {kind}); "
                f"choose another {_setting()}")
        _refuse_foreign_data_of(kind, path, [str(f) for f in previous.get("files", [])])


def make_output_folder(path: str) -> None:
    """Create the output folder. Where the system makes none (``/proc/x``, a path through
    a file) the error is one line naming ``--out``; the errors a user fixes in place (no
    permission, a full disk) keep their own line (:func:`dataselect.errors.os_error_line`)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        if os_error_line(exc, path) is not None:
            raise
        raise InputError(f"cannot create the output folder here ({exc.strerror or exc}): "
                         f"choose another {_setting()}", where=path, field=_field()) from None


def normalize(path: str | os.PathLike) -> str:
    """One spelling per folder (``out`` and ``out/`` are the same output), absolute: the
    folder's files are written where tasks run, and a cluster's workers run in folders of
    their own (``--scheduler``: a relative ``--out o`` had them write ``.scores/`` and
    ``.stats/`` into their own ``o/``, never claimed; :func:`storage.absolute`)."""
    text = storage.local_form(os.fspath(path))
    if not text:
        raise InputError("output path is empty", field=_field())
    if storage.is_remote(text):  # never a local folder named "s3:"
        return storage.normalize_url(text)
    # a ".." after a link as the system reads it (storage.through_links): "L/../sel" with
    # L -> pool/deep is pool/sel, as the inputs' checks read it, not ./sel
    return storage.absolute(text)


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, kind: str, identity: Any, *,
                 inputs: Iterable[str] = (), overwrite: bool | None = False,
                 before_replacing: Callable[[], None] | None = None
                 ) -> Iterator[OutputFolder]:
    """Claim ``path`` for a job and hold its lock while the job runs."""
    inputs = list(inputs)
    refuse_overlap(normalize(path), inputs)
    with locked_output(path) as locked:
        yield OutputFolder.claim(locked, kind, identity, inputs=inputs, overwrite=overwrite,
                                 before_replacing=before_replacing)


@contextlib.contextmanager
def locked_output(path: str | os.PathLike) -> Iterator[str]:
    """Hold the lock of an output folder (created if new) while a job writes it; for jobs
    whose writer claims the folder itself. The foreign-folder check runs before the lock
    file is created, so a folder that is not ours never receives even a lock file, and a
    folder created here is removed again if the job fails before writing anything.

    An object store offers no lock that dies with its holder, so a URL is not locked: two
    jobs writing one URL at once are not prevented (each part is still whole, and the
    marker's identity still refuses a job with other settings when it starts)."""
    path = normalize(path)
    if storage.is_remote(path):
        yield path
        return
    # no walk for links here: the lock file is opened without following one
    # (_open_lock_file), and every writer claims or reopens the folder, which walks it,
    # before it writes anything else
    _refuse_foreign(path)
    created = not os.path.exists(path)
    make_output_folder(path)
    try:
        with hold_lock(path):
            yield path
    except BaseException:
        if created:
            _remove_if_bare(path)
        raise


def _claim_marked(path: str, kind: str, identity: Any, overwrite: bool | None,
                  before_replacing: Callable[[], None] | None = None) -> OutputFolder:
    marker = os.path.join(path, MARKER)
    if not storage.exists(marker):
        folder = OutputFolder(path, kind, identity)
        folder._save()
        return folder
    previous = _read_marker(marker)
    files = [str(f) for f in previous.get("files", [])]
    if previous.get("kind") != kind:
        raise OutputConflictError(
            f"{path} holds dataselect output of another kind ({previous.get('kind')}, not "
            f"{kind}); choose another folder")
    if identity is None or same_json(previous.get("identity"), identity):
        _refuse_special_listed(path, files)
        _refuse_foreign_data_of(kind, path, files)
        return OutputFolder(path, kind, identity, files, resumed=identity is not None)
    if previous.get("identity") is None:
        # claimed for ownership only (``dataselect score`` before ``select``): adopt
        _refuse_special_listed(path, files)
        _refuse_foreign_data_of(kind, path, files)
        folder = OutputFolder(path, kind, identity, files)
        folder._save()
        return folder
    if not overwrite:
        changed = _differences(previous.get("identity"), identity)
        remedy = ("pass --overwrite (overwrite=True) to replace it, or choose another folder"
                  if overwrite is not None else "choose another folder, or delete this one")
        raise OutputConflictError(
            f"{path} holds the output of a job with other settings or inputs (differs in: "
            f"{changed}); rerun with the same settings to resume, {remedy}")
    _refuse_foreign_data_of(kind, path, files)
    if before_replacing is not None:
        before_replacing()
    remove_listed(path, files)
    folder = OutputFolder(path, kind, identity, replaced=previous.get("identity"))
    folder._save()
    return folder


def _visible_names(folder: str) -> Iterable[str]:
    """Every entry below ``folder`` that a reader of it takes (relative names): each file,
    and each folder (an empty one too), not in or under a hidden (``.``) name. Readers
    differ on ``_`` (pyarrow skips it, datasets does not), so such a name counts as
    visible. A folder comes before what it holds."""
    if storage.is_remote(folder):
        for name in storage.names_below(folder):
            if not any(part.startswith(".") for part in name.split("/") if part):
                yield name.rstrip("/")
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = os.path.relpath(root, folder)
        for name in [*dirs, *sorted(files)]:
            if not name.startswith("."):
                yield os.path.normpath(os.path.join(relative, name))


def _with_parents(names: Iterable[str]) -> set[str]:
    """``names`` (normalized relative paths) and every folder above them."""
    found: set[str] = set()
    for name in names:
        name = os.path.normpath(name)
        while name not in ("", ".") and name not in found:
            found.add(name)
            name = os.path.dirname(name)
    return found


def refuse_foreign_data(folder: str, listed: Iterable[str]) -> None:
    """Refuse a selection or union folder that holds anything visible its marker and
    manifest do not list (``listed``): a ``zz.parquet`` copied in, a ``save_to_disk``
    folder of the user's, a README.

    Why every name, not only data-like ones: pyarrow's discovery (and pandas through it)
    reads every file not under a ``.`` or ``_`` name, whatever its extension, and
    ``datasets``' ``data_dir`` every file not under a ``.`` name; so a part copied in as
    ``x.pq``, ``x``, ``x.txt`` or ``sub/x.pq`` was read with the parts (10 rows of a 5-row
    selection) while the rerun, ``report`` and ``load_hf`` took the folder as finished.
    A folder dataselect writes holds nothing visible but its parts, so nothing of its own
    is refused. The line names the entry, or the top folder that holds it."""
    listed = {os.path.normpath(name) for name in listed}
    known = _with_parents(listed)
    remote = storage.is_remote(folder)
    for name in _visible_names(folder):
        if os.path.normpath(name) in listed and not remote:
            # a folder at a part's name: that, not what it holds, is what to name
            checks.refuse_folder_output(os.path.join(folder, name))
        if os.path.normpath(name) in known:
            continue
        top = name.replace(os.sep, "/").split("/")[0]
        raise InputError("is not part of this selection (its folder's marker does not "
                         "list it), yet every reader of the folder would read it as the "
                         "selection's (pandas and pyarrow read every file not under a "
                         "'.' or '_' name, datasets every file not under a '.' name): "
                         "move it away, or rename it to start with '.'",
                         where=storage.join(folder, top) if remote
                         else os.path.join(folder, top))


def _refuse_foreign_data_of(kind: str, path: str, files: list[str]) -> None:
    """:func:`refuse_foreign_data` for a folder read whole as data, when it is claimed:
    before ``--overwrite`` deletes anything (it removed the old selection, then the writer
    refused a user's file beside it, and the user had neither selection), and before a
    resumed job's work."""
    if kind in READ_AS_DATA:
        refuse_foreign_data(path, files)


def _refuse_special_listed(path: str, files: list[str]) -> None:
    """Refuse, when a job resumes or adds to a folder (a report rewriting its page), a
    FIFO, device or socket at a name its marker lists (``.manifest.json``, a ``.stats``
    file, a part, ``.report/index.html``): dataselect wrote a regular file there, so
    something else replaced it. Refused at once, before any work, rather than replaced or
    deleted when the job reaches that name; nothing is opened (``lstat``). Only
    ``--overwrite``, which deletes every listed name by request, removes it."""
    if storage.is_remote(path):
        return
    for name in files:
        checks.refuse_special_output(os.path.join(path, name))


def _read_marker(marker: str) -> dict[str, Any]:
    try:
        data = read_json(marker)
    except (OSError, ValueError) as exc:
        raise OutputConflictError(
            f"{marker} is unreadable ({exc}); the folder's ownership is unknown: choose "
            "another folder, or delete the folder if you are sure it holds only dataselect "
            "output") from None
    if not isinstance(data, dict) or data.get("tool") != "dataselect":
        raise OutputConflictError(f"{marker} is not dataselect's marker; choose another folder")
    files = data.get("files", [])
    if (not isinstance(data.get("kind"), str) or not isinstance(files, list)
            or not all(isinstance(name, str) and _is_relative(name) for name in files)):
        # its list decides what --overwrite deletes: a string would be deleted letter by
        # letter, a "../x" outside the folder
        raise OutputConflictError(
            f"{marker} is not a valid marker (its kind must be a string and its files a list "
            "of names inside the folder); it was not written by dataselect: choose another "
            "folder, or delete this one if you are sure it holds only dataselect output")
    return data


def recorded_identity(path: str) -> Any:
    """The identity the marker of the output folder ``path`` records: what the footers of
    the parts written there name (:mod:`dataselect.footer`)."""
    marker = os.path.join(path, MARKER)
    if not storage.exists(marker):
        raise InputError(f"is not an output folder of dataselect (no {MARKER}); its parts' "
                         "origin cannot be checked: rerun the job that made it", where=path)
    return _read_marker(marker).get("identity")


def recorded_files(path: str) -> list[str]:
    """The files the marker of the output folder ``path`` lists (relative names): those
    dataselect wrote there or was about to."""
    return [str(name) for name in _read_marker(os.path.join(path, MARKER)).get("files", [])]


def recorded_kind(path: str) -> str | None:
    """The kind of output (``job``, ``selection``, ``union``...) the marker of the folder
    ``path`` records, or None where it has no marker: for the readers that take only
    some kinds, to name the right folder instead of misreading this one."""
    marker = os.path.join(path, MARKER)
    if not storage.exists(marker):
        return None
    return str(_read_marker(marker)["kind"])


# what each kind of output folder is, in a user's words (the kinds claims record)
KIND_WORDS = {
    "job": "the selection of a `dataselect select` job",
    "selection": "a selection",
    "union": "a recipe run's union of its tasks' selections",
    "recipe": "the output of a recipe run (`dataselect run`), one selection per task",
    "scores": "a score store (one scorer's scores of a pool)",
    "features": "a feature store (a model's vectors of a pool or target)",
    "index": "an attribution index",
    "attributions": "an attribution output",
    "model": "a model folder dataselect built",
    "warmup": "a LESS warm-up run",
}


def refuse_kind(path: str, kinds: Iterable[str], wanted: str, instead: str) -> None:
    """Refuse the folder ``path`` when its marker records an output kind not in ``kinds``,
    in one line saying what it is and what to give: ``instead`` (a score store inside a
    selection's ``.scores/``: that selection; a recipe run: its task folders or union).

    Why: readers that take some kinds only (``load_hf``, ``report``) read such a folder
    as a damaged or old one of theirs, and said to delete it."""
    kind = recorded_kind(path)
    if kind is None or kind in kinds:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if kind == "scores" and os.path.basename(parent) == SCORES_DIR:
        instead = f"the selection folder that holds it ({os.path.dirname(parent)})"
    elif kind == "recipe":
        instead = (f"one of its selections ({os.path.join(path, TASKS_DIR, '<task>')} or "
                   f"{os.path.join(path, UNION_DIR)})")
    words = KIND_WORDS.get(kind, f"dataselect output of kind {kind!r}")
    raise InputError(f"is {words}, not {wanted}: give {instead}", where=path)


def _differences(old: Any, new: Any) -> str:
    """The top-level keys whose values differ (``key.sub`` where both values are
    mappings), for the refusal message."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "settings"
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if same_json(before, after):  # not ==: True and 1 are two settings (same_json)
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            parts += [f"{key}.{sub}" for sub in sorted(set(before) | set(after))
                      if sub not in before or sub not in after
                      or not same_json(before[sub], after[sub])]
        else:
            parts.append(key)
    return ", ".join(parts) or "settings"


def remove_listed(path: str, files: Iterable[str]) -> int:
    """Delete the listed files (and their temporaries) below ``path``, then the folders
    they leave empty; return how many files went. Nothing unlisted is touched.

    Every folder is opened relative to its parent with ``O_NOFOLLOW`` and every file is
    removed relative to its folder's descriptor, so a symbolic link planted anywhere below
    ``path`` (``.stats`` pointing at another folder) is refused, never followed: there is
    no moment between a check and a deletion for a link to be swapped in. In an object
    store, the listed objects that exist are deleted (it has no links or temporaries)."""
    if storage.is_remote(path):
        return _remove_listed_remote(path, files)
    by_folder: dict[str, set[str]] = {}
    for name in files:
        _check_relative(name)
        folder, base = os.path.split(name)
        by_folder.setdefault(folder, set()).add(base)
    removed = 0
    root = _open_folder(path)
    try:
        for folder, names in by_folder.items():
            fd = _open_below(root, folder, path)
            if fd is None:
                continue
            try:
                removed += _remove_names(fd, names)
            finally:
                os.close(fd)
        parents = {p for folder in by_folder for p in _folder_and_parents(folder)}
        for folder in sorted(parents, key=len, reverse=True):
            parent, base = os.path.split(folder)
            fd = _open_below(root, parent, path)
            if fd is None:
                continue
            with contextlib.suppress(OSError):
                os.rmdir(base, dir_fd=fd)  # only if empty; a link is no folder: refused
            os.close(fd)
    finally:
        os.close(root)
    return removed


def remove_outputs(path: str, folder: str, names: Iterable[str]) -> None:
    """Delete the dataselect outputs ``path/folder/<name>/`` for each of ``names`` (what
    each one's marker lists, with the marker and lock file, then the folders left empty).
    A recipe rerun with ``--overwrite`` and fewer tasks calls this with the tasks the
    replaced run had and the new one lacks: the dropped task's selection would otherwise
    stay behind as a loadable dataset next to the new run, as if the new recipe had chosen
    it.

    Only the named folders are touched: another output a user moved beside them
    (``tasks/mine``, a separate ``select``) is not the recipe's, whatever its marker says.
    The outputs under hidden names inside a named one (its score stores) go with it; a
    visible output nested in it is someone else's and is kept, as is any file its marker
    does not list. Folders are walked without following links (the claim already refused
    any link below ``path``), and :func:`remove_listed` deletes through ``O_NOFOLLOW``
    descriptors."""
    base = os.path.join(path, folder)
    if storage.is_remote(path) or not os.path.isdir(base) or os.path.islink(base):
        return
    listed: list[str] = []
    for name in sorted(set(names)):
        top = os.path.join(base, name)
        if not _is_relative(name) or os.path.islink(top) or not os.path.isdir(top):
            continue
        for here, folders, files in os.walk(top, followlinks=False):
            if here == top:  # a visible folder in it holds someone else's output
                folders[:] = [f for f in folders if f.startswith(".")]
            if MARKER not in files:
                continue
            inner = os.path.relpath(here, path)
            owned = _read_marker(os.path.join(here, MARKER)).get("files", [])
            listed += [os.path.join(inner, f) for f in (*owned, *_OWN_NAMES)]
    if listed:
        remove_listed(path, listed)


def _remove_listed_remote(url: str, files: Iterable[str]) -> int:
    listed = list(dict.fromkeys(files))
    for name in listed:
        _check_relative(name)
    present = set(storage.names_below(url))
    doomed = [storage.join(url, name) for name in listed if name in present]
    storage.remove(doomed)
    return len(doomed)


def _remove_names(fd: int, names: set[str]) -> int:
    """Remove ``names`` (files or links, never what a link points at) and the ``.tmp-``
    temporaries of them from the open folder ``fd``."""
    removed = 0
    for entry in os.listdir(fd):  # once per folder, not once per listed file
        if entry not in names and temporary_of(entry) not in names:
            continue
        try:
            mode = os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            continue  # a listed name is a file; a folder in its place is not ours to delete
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry, dir_fd=fd)
        removed += entry in names
    return removed


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_folder(path: str) -> int:
    """Open an output folder itself (the user named it: a link to it is followed)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))


def _open_below(root: int, relative: str, shown: str) -> int | None:
    """A descriptor of the folder ``relative`` below the open folder ``root``, each part
    opened without following links; None where a part does not exist or is a file. A part
    that is a symbolic link is refused (``shown`` is the root's path, for the message)."""
    fd = os.dup(root)
    walked = shown
    for part in Path(relative).parts if relative else ():
        walked = os.path.join(walked, part)
        try:
            child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
        except OSError as exc:
            # O_NOFOLLOW with O_DIRECTORY answers a link with ENOTDIR (Linux) or ELOOP
            is_link = exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(part, fd)
            os.close(fd)
            if is_link:
                raise _link_error(walked, shown) from None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        os.close(fd)
        fd = child
    return fd


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _folder_and_parents(folder: str) -> list[str]:
    parents = []
    while folder:
        parents.append(folder)
        folder = os.path.dirname(folder)
    return parents


def _check_relative(name: str) -> None:
    if not _is_relative(name):
        raise ValueError(f"not a name inside an output folder: {name!r}")


def _is_relative(name: str) -> bool:
    return bool(name) and not (os.path.isabs(name) or ".." in Path(name).parts
                               or name in _OWN_NAMES or "\0" in name)


def _refuse_foreign(path: str) -> None:
    """A folder is ours when new, empty or marked; a file is never an output folder."""
    _refuse_in_a_cache(path)
    if not os.path.exists(path):
        if os.path.islink(path):
            raise InputError("is a broken symbolic link; choose another output folder",
                             where=path, field=_field())
        return
    if not os.path.isdir(path):
        raise InputError("is a file, not a folder; give a folder for the output",
                         where=path, field=_field())
    if os.path.exists(os.path.join(path, MARKER)):
        return
    foreign = sorted(name for name in os.listdir(path)
                     if not _holds_only_ours(os.path.join(path, name)))
    caches = [name for name in foreign if _is_a_cache(os.path.join(path, name))]
    if caches:  # a program that fitted before it wrote, with a cache set below its output
        raise OutputConflictError(
            f"{path} holds {first_names(caches)}, dataselect's own cache folder "
            "(DATASELECT_CACHE, DATASELECT_MODEL_CACHE or XDG_CACHE_HOME names it), made "
            f"there before the output was written: point the cache outside {path}, or "
            f"choose another {_setting()}")
    if foreign:
        shown = first_names(foreign)
        raise OutputConflictError(
            f"{path} is not empty and was not written by dataselect (holds {shown}); "
            "dataselect writes only into new, empty or its own folders: choose another "
            f"{_setting()}")


# the outputs that may be written to an object store: a selection, its job and its scores
REMOTE_KINDS = ("job", "selection", "scores")


def _refuse_local_only(url: str, kind: str) -> None:
    """Models, indexes, feature stores, unions and recipes are written with local file
    calls (memory maps, renames); a URL would become a local folder named ``s3:``."""
    if kind not in REMOTE_KINDS:
        raise InputError(f"a {kind} output is written to a local folder; object-store URLs "
                         "are for selections and score stores: give a local folder, then "
                         "copy it", where=url, field=_field())


def _refuse_foreign_remote(url: str) -> None:
    """:func:`_refuse_foreign` for a URL: the folder is the objects below it."""
    if storage.isfile(url):
        raise InputError("is an object, not a folder; give a folder for the output",
                         where=url, field=_field())
    names = storage.names_below(url)
    marked = [posixpath.dirname(n) for n in names if posixpath.basename(n) == MARKER]
    if "" in marked:
        return
    foreign = sorted({n.split("/")[0] for n in names
                      if posixpath.basename(n) not in _OWN_NAMES
                      and not any(n.startswith(m + "/") for m in marked)})
    if foreign:
        raise OutputConflictError(
            f"{url} is not empty and was not written by dataselect (holds "
            f"{first_names(foreign)}); dataselect writes only into new, empty or its own "
            f"folders: choose another {_setting()}")


_CACHE_SETTINGS = {"fingerprint": "DATASELECT_CACHE or XDG_CACHE_HOME",
                   "model": "DATASELECT_MODEL_CACHE or XDG_CACHE_HOME"}


def _refuse_in_a_cache(path: str) -> None:
    """Refuse an output folder that is one of dataselect's cache folders or lies inside
    one, whether it exists yet or not: a cache holds only its own entries, so the output
    written there made every later use of the cache refused (the model cache "holds sel,
    which dataselect did not write there") or silently skipped (the fingerprint cache).
    A relative cache setting is not used, so it refuses nothing. The innermost cache is
    named (the default model cache lies in the fingerprint cache's folder)."""
    real = os.path.realpath(path)
    roots = {"fingerprint": fingerprint.cache_root(), "model": fingerprint.model_cache_root()}
    holding = [(which, cache) for which, cache in
               ((which, os.path.realpath(root)) for which, root in roots.items()
                if root.is_absolute())
               if real == cache or real.startswith(cache.rstrip(os.sep) + os.sep)]
    if holding:
        which, cache = max(holding, key=lambda found: len(found[1]))
        raise OutputConflictError(
            f"{path} {'is' if real == cache else 'lies in'} dataselect's {which} cache "
            f"{cache} ({_CACHE_SETTINGS[which]} names it), which holds only the cache's "
            f"own entries: choose another {_setting()}, or point the cache elsewhere")


def _is_a_cache(path: str) -> bool:
    """Whether ``path`` is the fingerprint or model cache folder, or holds one."""
    real = os.path.realpath(path)
    return any(os.path.realpath(cache) == real
               or os.path.realpath(cache).startswith(real + os.sep)
               for cache in (fingerprint.cache_root(), fingerprint.model_cache_root()))


def _holds_only_ours(path: str) -> bool:
    """Our marker or lock, or a folder holding only dataselect output (a score store
    written through the API into ``out/.scores/dsir`` before the selection into ``out``)."""
    if os.path.basename(path) in _OWN_NAMES:
        return True
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    if os.path.exists(os.path.join(path, MARKER)):
        return True
    return all(_holds_only_ours(os.path.join(path, name)) for name in os.listdir(path))


def refuse_links(path: str) -> None:
    """Refuse an output folder that holds a symbolic link anywhere below it.

    dataselect never makes links in its output, so one found there was planted, and every
    path dataselect writes, deletes or lists below ``--out`` could be redirected through it
    into a folder it does not own (``.stats`` pointing at another folder, then
    ``--overwrite``, would delete and rewrite files there). The folder is walked without
    following links once, when a job, report, evaluation or index claims it, before
    anything is written; deletions are also link-proof on their own
    (:func:`remove_listed`)."""
    if not os.path.isdir(path):
        return
    pending = [path]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_symlink():
                raise _link_error(entry.path, path)
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)


def _link_error(link: str, out: str) -> OutputConflictError:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return OutputConflictError(
        f"{link} is a symbolic link (to {target}) inside the output folder {out}; "
        "dataselect never writes, deletes or lists through a link there, since it could "
        f"lead outside the folder: remove the link, or choose another {_setting()}")


# the one kind of output that holds other outputs at visible paths (tasks/<task>/, union/)
_HOLDS_OUTPUTS = ("recipe",)


def refuse_nesting(path: str, kind: str) -> None:
    """Refuse an output inside another output of dataselect's, or an output that would
    contain another one, at a visible path (either order).

    Readers of a dataset folder (``datasets``, pyarrow, a glob with ``**``) read every
    visible file below it, so ``out/`` holding another job's ``out/b/`` reads as the union of
    both; a feature store, index, model or warmup folder is read by the next command, which
    should find only what made it. Folders under a hidden name (``.scores/dsir``, ``.hf``)
    are a job's own bookkeeping, and a recipe's folder holds its tasks' selections, union
    and attribution files by design."""
    refuse_inside_outputs(path)
    real = os.path.realpath(path)
    if kind == "features":
        _refuse_in_own_places(path, real)
    if kind not in _HOLDS_OUTPUTS and os.path.isdir(real):
        inner = _marked_descendant(real)
        if inner is not None:
            raise OutputConflictError(
                f"{path} holds {inner}, the output of another dataselect job: readers of "
                f"{path} would read both as one; choose another {_setting()}, or move "
                f"{inner} out of it")


def refuse_inside_outputs(path: str) -> None:
    """Refuse an output (a folder, or a file such as attribution rows) at a visible path
    inside another output of dataselect's other than a recipe's folder."""
    real = os.path.realpath(path)
    for outer, outer_kind in _marked_ancestors(real):
        if outer_kind not in _HOLDS_OUTPUTS and _visible(os.path.relpath(real, outer)):
            raise OutputConflictError(
                f"{path} lies inside {outer}, the output of another dataselect job "
                f"({outer_kind}): give {_setting()} a folder outside it")


def _refuse_in_own_places(path: str, real: str) -> None:
    """Refuse a feature store in a folder that a dataselect output's job writes, hidden
    ones included (a selection's ``.scores`` or ``.hf``, a recipe's ``tasks/<task>`` or
    ``.models``): the store is given by a setting (``-p features``,
    ``scorers.<name>.features``, ``dataselect features --out``) that may name another
    job's output, and the rerun of that job would write into the store, or refuse it
    as a stranger. A hidden folder of the user's there (``OUT/.features``) is fine."""
    for outer, outer_kind in _marked_ancestors(real):
        if outer_kind not in _RENAMED_KINDS:
            continue
        place = own_place(Path(os.path.relpath(real, outer)).parts, outer_kind == "recipe")
        if place is not None:
            raise InputError(f"lies in {outer} (dataselect output), {place}: give "
                             f"{_setting()} a folder outside it, or a hidden one of yours in "
                             "it (OUT/.features)", where=path, field=_field())


def _visible(relative: str) -> bool:
    return not any(part.startswith(".") for part in Path(relative).parts)


def _marked_ancestors(real: str) -> Iterator[tuple[str, str]]:
    """Every folder above ``real`` that carries dataselect's marker, with its kind."""
    folder = os.path.dirname(real)
    while True:
        marker = os.path.join(folder, MARKER)
        if os.path.isfile(marker):
            with contextlib.suppress(OSError, ValueError):
                data = read_json(marker)
                if isinstance(data, dict) and data.get("tool") == "dataselect":
                    yield folder, str(data.get("kind"))
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def _marked_descendant(real: str) -> str | None:
    """A folder at a visible path below ``real`` that carries dataselect's marker."""
    pending = [real]
    while pending:
        folder = pending.pop()
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                if os.path.isfile(os.path.join(entry.path, MARKER)):
                    return entry.path
                pending.append(entry.path)
    return None


def refuse_legacy(path: str) -> None:
    """Refuse a folder holding bookkeeping under the names of older versions: Hugging Face
    ``datasets`` reads those as data, and a job resumed there would mix both layouts.

    A folder whose marker records a kind that never used those names (a score store or a
    feature store keeps its ``_manifest.json`` today) is current, not old: the caller's
    check of the kind names it (:func:`refuse_kind`). Calling a score store old told a
    user to delete a good one. The same holds for such a store in a subfolder (a feature
    store a refused run wrote into a recipe's ``tasks/<task>``): the claim of that folder
    names it, and calling the recipe old sent the user to delete the whole run."""
    old = [name for name in legacy_entries(path)
           if not _current_store(path, os.path.dirname(name))]
    if old:
        if _current_store(path, ""):
            return
        shown = first_names(old)
        raise OutputConflictError(
            f"{path} holds output of an older dataselect ({shown}: bookkeeping named with "
            "'_', which Hugging Face datasets reads as data; it is now named with '.'); "
            "write into a new folder, or delete this one and rerun")


def _current_store(path: str, subfolder: str) -> bool:
    """Whether the folder ``subfolder`` of ``path`` is marked as output of a kind that
    keeps its ``_``-names today (a score or feature store)."""
    with contextlib.suppress(OutputConflictError, OSError):
        kind = recorded_kind(os.path.join(path, subfolder))
        return kind is not None and kind not in _RENAMED_KINDS
    return False


def _remove_if_bare(path: str) -> None:
    """Undo creating ``path`` when the claim failed before anything was written."""
    with contextlib.suppress(OSError):
        if set(os.listdir(path)) <= {MARKER}:
            for name in os.listdir(path):
                os.remove(os.path.join(path, name))
            os.rmdir(path)


FILE_OWNER_KEY = b"dataselect"


def check_output_file(path: str | os.PathLike, kind: str, inputs: Iterable[str] = ()) -> str:
    """An output that is one Parquet file (attribution rows) may replace only a file of
    the same kind that dataselect wrote (its schema metadata says so), never an input.

    It is refused, as an output folder is, inside either cache folder: a file written
    there made the model cache refuse every later use ("holds a.parquet, which dataselect
    did not write there") and the fingerprint cache silently unused. It is refused at a
    symbolic link too (to dataselect's own file or not): the file is written beside the
    name and renamed over it, so the link was replaced by a file while the user expected
    the file it leads to to change; dataselect writes an output only at a name of its own,
    as it refuses a link inside an output folder."""
    path = normalize(path)
    refuse_overlap(path, inputs)
    if storage.is_remote(path):
        _refuse_local_only(path, kind)
    else:
        _refuse_in_a_cache(path)
    refuse_inside_outputs(path)
    if os.path.isdir(path):
        raise InputError("is a folder; give a file name for this output (e.g. out.parquet)",
                         where=path, field=_field())
    kind_found = checks.special_at(path, follow=True)
    if kind_found is not None:  # never opened: reading a FIFO's schema waits forever
        raise InputError(f"is not a regular file ({kind_found}); dataselect replaces only "
                         f"its own output files: choose another {_setting()}", where=path,
                         field=_field())
    if os.path.islink(path):
        raise _file_link_error(path)
    if os.path.lexists(path) and _file_owner(path) != kind:
        raise OutputConflictError(
            f"{path} exists and is not {_article(kind)} {kind} file written by dataselect; "
            f"choose another {_setting()} (dataselect replaces only its own output files)")
    return path


def _file_link_error(path: str) -> OutputConflictError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return OutputConflictError(
        f"{path} is a symbolic link (to {target}); dataselect writes an output file only "
        "at a name of its own, never through a link (it would replace the link with a "
        f"file): remove the link, or choose another {_setting()}")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def owned_metadata(kind: str) -> dict[bytes, bytes]:
    """Schema metadata that marks a single-file output as dataselect's."""
    return {FILE_OWNER_KEY: kind.encode()}


def _file_owner(path: str) -> str | None:
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(storage.arrow_path(path)).metadata or {}
    except Exception:  # not Parquet, unreadable: not ours either way
        return None
    owner = metadata.get(FILE_OWNER_KEY)
    return owner.decode(errors="replace") if owner else None


def refuse_overlap(out: str, inputs: Iterable[str]) -> None:
    """Refuse an output that is, contains or lies inside an input file or folder."""
    out_real = _real(out)
    for source in inputs:
        if isinstance(source, GlobInput):
            if _glob_reaches(source.pattern, out_real):
                raise InputError(f"the input glob {source.pattern} can match it, a folder "
                                 "above it or its parts, so the next run would read the "
                                 "output as input: choose a folder the glob cannot match",
                                 where=out, field=_field())
            continue
        source_real = _real(source)
        if out_real == source_real:
            raise InputError(f"is also an input ({source}); writing there would overwrite "
                             f"it: choose another {_setting()}", where=out,
                             field=_field())
        if _inside(source_real, out_real):
            raise InputError(f"contains the input {source}; writing there could overwrite "
                             "it: choose a folder outside the inputs", where=out, field=_field())
        if _inside(out_real, source_real):
            raise InputError(f"lies inside the input {source}; the next run would read the "
                             "output as input: choose a folder outside the inputs",
                             where=out, field=_field())
        if not storage.is_remote(source_real) and os.path.isdir(source_real):
            _refuse_linked_overlap(out, out_real, source)


def _refuse_linked_overlap(out: str, out_real: str, source: str) -> None:
    """Refuse an output that is, contains or lies inside a folder the input folder
    ``source`` reaches through a symbolic link: a folder input is read with its linked
    folders (:func:`dataselect.storage.walk_local`), so the next run would read the
    output as input, or the job write over its input, as with a plain subfolder."""
    for linked in storage.linked_folders(source):
        if out_real == linked or _inside(out_real, linked) or _inside(linked, out_real):
            raise InputError(f"is, holds or lies inside {linked}, which the input folder "
                             f"{source} reads through a symbolic link; the next run would "
                             "read the output as input: choose a folder outside the inputs",
                             where=out, field=_field())


def _real(path: str) -> str:
    """One spelling of a path or URL, to compare outputs with inputs."""
    path = storage.local_form(path)
    return storage.normalize_url(path) if storage.is_remote(path) else os.path.realpath(path)


def _inside(child: str, parent: str) -> bool:
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


class GlobInput(str):
    """A local glob among the inputs (``pool/*``): what it reads is every path it could
    match, not only those it matches now, so :func:`refuse_overlap` compares an output
    with the pattern itself. A ``str`` (the pattern), so that the places that list inputs
    as strings keep working."""

    @property
    def pattern(self) -> str:
        return str(self)


def _glob_reaches(pattern: str, out_real: str) -> bool:
    """Whether the glob ``pattern`` could match ``out_real`` (an absolute, resolved path),
    a folder above it (read recursively), or a file below it of the kinds dataselect
    writes (a ``part-00000.parquet``).

    Why: ``pool/*`` matches folders too, and a matched folder is read whole, so an
    ``--out pool/sel`` was read back as pool by the rerun of the same command, which then
    failed instead of resuming; only the files a glob matched when the job started were
    compared with the output before. Each wildcard segment is matched as :mod:`glob`
    matches it (a ``.`` name only by a segment that starts with ``.``)."""
    parts = pattern.rstrip(os.sep).split(os.sep)
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = os.path.realpath(os.sep.join(parts[:first]) or ("." if not first else os.sep))
    rest = parts[first:]
    if out_real == base or _inside(base, out_real):
        return True  # the output holds everything the glob can match
    if not _inside(out_real, base):
        return False
    if "**" in rest or ".." in rest or "." in rest:
        return True  # any depth, or back up: anything below the base may be matched
    names = os.path.relpath(out_real, base).split(os.sep)
    if not all(_segment_matches(name, part) for name, part in zip(names, rest, strict=False)):
        return False
    # it matches the output or a folder above it, or, when longer, may match the files the
    # output will hold: then its last segment decides (a folder below may have any name)
    return len(rest) <= len(names) or _may_match_written(rest[-1])


# visible files dataselect writes in its outputs (parts, evaluation results), by the name
# a glob's last segment is matched against; ``pool/*/*.jsonl`` matches none of them
_WRITTEN_NAMES = ("part-00000.parquet", "part-00000.arrow", "results.json")
_WRITTEN_SUFFIXES = (".parquet", ".arrow", ".json")


def _may_match_written(part: str) -> bool:
    if not glob.has_magic(part):
        return part.endswith(_WRITTEN_SUFFIXES)
    return any(_segment_matches(name, part) for name in _WRITTEN_NAMES)


def _segment_matches(name: str, part: str) -> bool:
    import fnmatch

    if not glob.has_magic(part):
        return name == part
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)


def input_roots(specs: Iterable[str | os.PathLike]) -> list[str]:
    """What an input spec reads: a file, a folder (read recursively), or for a glob the
    files it matches now and, when it recurses (``**``), the folder it starts from; a
    local glob also stays itself (:class:`GlobInput`), since it reads whatever it matches
    when the job runs again. A URL that names an object or a folder is that object or
    folder, even with ``[1]`` in its name, as :func:`dataselect.formats.expand_paths`
    reads it: ``--pool s3://b/p[1]/`` was taken for a glob starting at the bucket, and an
    ``--out s3://b/x`` beside it refused as lying inside the input ``s3://b``."""
    roots = []
    for spec in specs:
        spec = storage.absolute_spec(os.fspath(spec))  # as expand_paths lists the files
        if not any(ch in spec for ch in "*?[") or os.path.lexists(spec):
            roots.append(spec)
            continue
        if storage.is_remote(spec) and storage.exists(spec):
            roots.append(spec)
            continue
        if storage.is_remote(spec):  # the folder the pattern starts from
            first = min(i for i in (spec.find(ch) for ch in "*?[") if i >= 0)
            roots.append(spec[:first].rsplit("/", 1)[0])
            continue
        if "**" in spec:
            # the folder it starts from holds every file it can match: no need to list them
            # (and a recursive glob through a link to a parent folder never ends)
            static = spec.split("**", 1)[0]
            roots.append(static.rstrip(os.sep) or os.sep if static else ".")
        else:
            roots.extend(glob.glob(spec))
            if not os.path.lexists(spec):  # a path that exists is that path, not a glob
                roots.append(GlobInput(spec))
    return roots


# --- the lock --------------------------------------------------------------------------

# locks this process holds (folder -> open lock file): a claim nested in a job's claim of
# the same folder, in the same thread, does not lock it twice
_HELD: dict[str, int] = {}
# the thread holding each of those locks and since when, for the line a waiter gets
_HOLDER: dict[str, str] = {}
# one re-entrant lock a folder, so that threads of this process take turns with it. Kept
# for the process's life (one small object a folder): one dropped while a thread waits on
# it would let a third thread make a new one and hold the folder together with the second
_TURNS: dict[str, threading.RLock] = {}
_TURNS_GUARD = threading.Lock()
# how long a thread waits for another thread of this process to release a folder
THREAD_WAIT_S = 300.0


@contextlib.contextmanager
def hold_lock(path: str) -> Iterator[None]:
    """Hold ``path``'s lock while the block runs; refuse when another live job holds it.

    The lock is a kernel lock (``flock``) on ``.dataselect.lock``, so it is released when
    its process dies however it dies: a job killed with ``kill -9`` never blocks its rerun,
    and no pid has to be guessed alive or dead. The file's text (pid, host, start) only
    names the owner in the refusal message.

    Threads of one process take turns (a per-folder ``RLock``): the kernel lock belongs to
    the process, so it cannot keep them apart, and a second thread used to walk into a
    folder the first held (deleting its work files, or its lock file on the way out) or was
    refused as "another dataselect job" with its own pid. A second thread now waits for
    the first to finish, saying so on stderr, for up to :data:`THREAD_WAIT_S` seconds,
    then is refused in one line naming the folder and the thread that holds it. A claim
    nested in the same thread's claim of the folder goes straight in, as before.
    """
    key = os.path.realpath(path)
    with _TURNS_GUARD:
        turn = _TURNS.setdefault(key, threading.RLock())
    _wait_for_turn(turn, path, key)
    try:
        if key in _HELD:  # only this thread can be here: its own claim, around this one
            yield
            return
        lock = os.path.join(path, LOCK)
        _HOLDER[key] = (f"thread {threading.current_thread().name!r} since "
                        f"{time.strftime('%H:%M:%S')}")  # first: a waiter may name it now
        try:
            fd = _acquire(lock)
        except BaseException:
            del _HOLDER[key]
            raise
        _HELD[key] = fd
        try:
            yield
        finally:
            del _HELD[key], _HOLDER[key]
            with contextlib.suppress(OSError):
                os.remove(lock)  # while still locked, so nobody locks a file about to vanish
            os.close(fd)
    finally:
        turn.release()


def _wait_for_turn(turn: threading.RLock, path: str, key: str) -> None:
    """Take ``turn``; while another thread of this process holds it, wait (bounded), then
    refuse in one line."""
    if turn.acquire(blocking=False):
        return
    holder = _HOLDER.get(key, "another thread")
    print(one_line(f"dataselect: note: {path} is in use by another thread of this process "
                   f"({holder}); waiting for it to finish (at most {THREAD_WAIT_S:g} s)"),
          file=sys.stderr)
    if not turn.acquire(timeout=THREAD_WAIT_S):
        raise OutputConflictError(
            f"{path} is in use by another thread of this process "
            f"({_HOLDER.get(key, holder)}), still after {THREAD_WAIT_S:g} s; let one thread "
            "finish with this folder before another uses it, or give each thread its own "
            "folder")


def _acquire(lock: str) -> int:
    for _ in range(10):
        fd = _open_lock_file(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_lock(lock)
            os.close(fd)
            raise OutputConflictError(
                f"{os.path.dirname(lock)} is in use by another dataselect job (pid "
                f"{owner.get('pid', '?')} on {owner.get('host', '?')} since "
                f"{owner.get('since', '?')}); wait for it to finish, or choose another "
                f"{_setting()}") from None
        if _same_file(fd, lock):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                                    ).encode())
            return fd
        os.close(fd)  # its holder removed the file as we locked it: lock the new one
    raise OutputConflictError(f"could not take the lock {lock}; retry")


def _open_lock_file(lock: str) -> int:
    """Open (or create) the lock file, refusing anything but dataselect's own: the lock's
    text is written into the file it opens, so a hard link planted at its name (to a
    user's notes) would be overwritten, a link followed, and a FIFO or device written to.
    ``O_NOFOLLOW`` refuses a link, ``O_NONBLOCK`` keeps a FIFO from blocking the open, and
    the opened file must be a regular file with no other name."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise _link_error(lock, os.path.dirname(lock)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = ("has other names (a hard link)" if stat.S_ISREG(st.st_mode)
                else "is not a regular file")
        raise OutputConflictError(
            f"{lock} {what}; dataselect writes its lock only into a file of its own: remove "
            f"{lock}, or choose another {_setting()}")
    os.set_blocking(fd, True)
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_lock(lock: str) -> dict[str, Any]:
    try:
        data = read_json_file(lock)
    except (OSError, UnreadableJSON):
        return {}
    return data if isinstance(data, dict) else {}
