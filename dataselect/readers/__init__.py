"""One reader per input format, looked up by kind (:attr:`base.Piece.fmt`) or by a file's
name (:func:`base.detect_format`).

Importing this package registers every built-in reader: each module below holds one
format and registers its :class:`base.Reader` subclasses with :func:`base.register`;
:mod:`dataselect.formats` finds and plans files through the registry alone.
"""

from dataselect.readers import arrow, hf_disk, jsonl, parquet
from dataselect.readers.arrow import ARROW_SUFFIXES
from dataselect.readers.compression import COMPRESSED_SUFFIXES
from dataselect.readers.jsonl import JSONL_SUFFIXES
from dataselect.readers.parquet import PARQUET_SUFFIXES

# the modules whose import registers the built-in readers (hf_disk's folders are asked
# first, whatever the order here: base.kinds)
BUILTIN = (jsonl, parquet, arrow, hf_disk)
# every name ending a data file may have; compression first: ``a.jsonl.gz`` loses ``.gz``,
# then ``.jsonl`` (they are stripped in this order when ids are derived from file names)
DATA_SUFFIXES = COMPRESSED_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + ARROW_SUFFIXES
