"""A corpus of rows already read: one partition per Arrow table, held in memory.

Why: a scorer is fitted on a :class:`~dataselect.corpus.Corpus`, and validating one on a
part of the target (``--scorer auto``'s folds) or on a pool sample needs a corpus of just
those rows. Writing them to temporary files would leave the client's disk, which a remote
cluster's workers cannot read; the tables are small (a target, a bounded sample), so they
travel with the corpus instead. Rows keep the ``id``, ``_file`` and ``_row`` columns they
were read with, so rendering and error messages still name the original file and line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from dataselect.corpus import FILE_COLUMN, ID_COLUMN, ROW_COLUMN, Corpus


@dataclass
class TableCorpus(Corpus):
    """Rows in memory, as a corpus; build with :func:`table_corpus`."""

    tables: list[pa.Table] = field(default_factory=list)

    def __post_init__(self) -> None:
        # one (empty) piece list per table: nothing is planned from the files
        self.partitions = [[] for _ in self.tables]

    def read_partition(self, index: int) -> pa.Table:
        return self.tables[index]

    def replanned(self, partition_bytes: int) -> Corpus:
        return self

    def _partition_schema(self, index: int, parse: bool) -> pa.Schema | None:
        return self.tables[index].schema

    def partition_place(self, index: int) -> str:
        table = self.tables[index]
        return self.where(table[FILE_COLUMN][0].as_py(), table[ROW_COLUMN][0].as_py())

    def estimated_bytes(self) -> int:
        return sum(table.nbytes for table in self.tables)

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for table in self.tables:
            for value in table[ID_COLUMN].to_pylist():
                digest.update(value.encode() + b"\0")
        return {"text": str(self.text), "id_field": self.id_field,
                "rows": sum(t.num_rows for t in self.tables), "ids": digest.hexdigest()[:16]}

    def current_fingerprint(self) -> dict[str, Any]:
        return self.fingerprint()  # rows held in memory do not change


def table_corpus(like: Corpus, tables: list[pa.Table]) -> TableCorpus:
    """``tables`` (rows read from ``like``) as a corpus with ``like``'s text spec and ids."""
    return TableCorpus(list(like.files), like.text, like.id_field, like.partition_bytes,
                       labels=dict(like.labels), tables=[t for t in tables if t.num_rows])
