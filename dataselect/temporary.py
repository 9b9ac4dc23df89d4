"""The temporary folder, checked against what the command reads and writes.

Temporary files go to ``TMPDIR`` (or ``TEMP``, ``TMP``, the system's default): the local
Dask cluster's scratch space, a fastText model in training, an object-store part on its
way up, a report check's browser profile. Set to the pool folder, they were written into
an input; set to ``--out``, the job refused its own temporary folder as something it had
not written. Every writer of temporary files takes its folder from
:func:`checked_temporary_folder`, so the Python API is held to what the command line
checks once per command (pass 19, g03: ``FastText().fit`` trained in the pool folder).
"""

from __future__ import annotations

import os
import tempfile

from dataselect.errors import InputError
from dataselect.fingerprint import kept_path_holding

TEMPORARY_VARIABLES = ("TMPDIR", "TEMP", "TMP")  # the order tempfile reads them in
# the name a temporary folder is judged by: one no folder input skips (a hidden name
# would pass a folder input's read rule, yet still add an entry to the input folder)
JUDGED_NAME = "dataselect-temporary"


def temporary_setting() -> str:
    """What chose :func:`tempfile.gettempdir`: the first of TMPDIR, TEMP, TMP that names
    it, else the system's default."""
    chosen = os.path.realpath(tempfile.gettempdir())
    for name in TEMPORARY_VARIABLES:
        value = os.environ.get(name)
        if value and os.path.realpath(os.path.expanduser(value)) == chosen:
            return name
    return "the system's default, TMPDIR unset"


def refuse_temporary_in_kept(folder: str, setting: str) -> None:
    """Refuse, in one line naming ``setting``, a temporary ``folder`` in which a new
    folder would lie in what this command reads or writes
    (:func:`dataselect.fingerprint.kept_path_holding`). A glob's starting folder is
    refused only where the glob could read the new folder: ``--pool '/tmp/x_*.parquet'``
    leaves ``/tmp`` usable for temporary files."""
    if "\0" in folder:
        raise InputError(f"the temporary folder ({setting}) holds a NUL character, which no "
                         "folder name can hold: set it to a folder's path",
                         where=folder.replace("\0", "\\0"))
    kept = kept_path_holding(os.path.join(folder, JUDGED_NAME), glob_start_kept=False)
    if kept is not None:
        raise InputError(
            f"the temporary folder ({setting}) lies in {kept}, which this command reads "
            "or writes, and dataselect's temporary files would be written there: set it "
            "to a folder outside the inputs and --out", where=folder)


def checked_temporary_folder() -> str:
    """:func:`tempfile.gettempdir`, refused (:func:`refuse_temporary_in_kept`) where a
    temporary file made there would lie in an input or the output."""
    folder = tempfile.gettempdir()
    refuse_temporary_in_kept(folder, temporary_setting())
    return folder
