"""A corpus: input files cut into partitions, read lazily, validated as they are read.

The corpus never holds its rows. It holds a *plan*: the list of partitions, each a list of
file pieces of about ``partition_bytes`` of data, so memory per task is bounded whatever the
pool size, tiny files are packed together and huge files are split. Every row read gets a
string ``id`` (kept from the input or derived as ``<file>:<row>``), ``_file`` and ``_row``
(its provenance) and is checked against the text spec, so any stage that reads a partition
fails on bad input with the file, line and field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dataselect import checks, storage
from dataselect.defaults import DEFAULT_PARTITION_BYTES
from dataselect.errors import DuplicateIdError, EmptyCorpusError, InputError, first_names
from dataselect.fingerprint import file_identity, keep_cache_out_of
from dataselect.formats import (
    expand_paths,
    parses_text,
    piece_schema,
    plan_pieces,
    read_piece,
    read_piece_column,
    reads_parts,
    subpieces,
)
from dataselect.outdir import MARKER, input_roots
from dataselect.output import atomic_write, jsonable, read_schema, read_table
from dataselect.readers import DATA_SUFFIXES
from dataselect.readers.base import Piece, detect_format
from dataselect.readers.hf_disk import is_hf_dataset_dir
from dataselect.schemas import concat, unify
from dataselect.textspec import CHAT_COLUMN, TextSpec, as_array, plain_strings

# Pools that a model scores are cut finer (compute_partition_bytes): into this many
# partitions, each within these bounds.
COMPUTE_PARTITIONS = 16
MIN_COMPUTE_PARTITION_BYTES = 16 << 10
MAX_COMPUTE_PARTITION_BYTES = 128 << 10
FILE_COLUMN, ROW_COLUMN, ID_COLUMN = "_file", "_row", "id"
RESPONSE_SPANS = "response_spans"


@dataclass
class Corpus:
    """Files planned into partitions. Build with :func:`read_corpus`."""

    files: list[str]
    text: TextSpec
    id_field: str = ID_COLUMN
    partition_bytes: int = DEFAULT_PARTITION_BYTES
    partitions: list[list[Piece]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    # where parsed partitions are kept, as Arrow files, for the next pass (cached_in)
    cache_dir: str | None = field(default=None, compare=False)
    # where the job keeps each partition's hashed n-grams (with_ngram_store)
    ngram_dir: str | None = field(default=None, compare=False)
    # what the paths given to read_corpus read (a folder is read recursively): an output
    # written through the API may not lie inside them (outdir.refuse_overlap), as on the
    # command line
    roots: list[str] = field(default_factory=list, compare=False)
    # each file's identity (file_identity), taken once, before the files were planned:
    # every record of this input (a job's marker, a score store, a manifest) and the
    # final check that it did not change are this one value (fingerprint)
    identities: list[dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for path in self.files:  # before planning: load_from_disk reads what state names
            if is_hf_dataset_dir(path):
                checks.check_hf_data_files(path)
        if self.identities is None:
            # before the plan: a file replaced after this moment, even while it is being
            # planned, differs from it when the job ends (check_unchanged), so the job
            # refuses rather than finish on rows its identity does not describe
            self.identities = [file_identity(f) for f in self.files]
        if not self.partitions:
            self.partitions = _pack(
                [p for f in self.files for p in plan_pieces(f, self.partition_bytes)],
                self.partition_bytes,
            )
        if not self.labels:
            self.labels = _file_labels(self.files)

    @property
    def npartitions(self) -> int:
        return len(self.partitions)

    def replanned(self, partition_bytes: int) -> Corpus:
        """The same files and settings, planned into partitions of ``partition_bytes``."""
        partition_bytes = checks.check_count(partition_bytes, "partition_bytes",
                                             maximum=checks.MAX_PARTITION_MB * 2**20)
        if partition_bytes == self.partition_bytes:
            return self
        return Corpus(self.files, self.text, self.id_field, partition_bytes, labels=self.labels,
                      roots=self.roots, identities=self.identities)

    def estimated_bytes(self) -> int:
        """Approximate uncompressed size of the corpus, from file metadata only."""
        return sum(piece.size_bytes for partition in self.partitions for piece in partition)

    def parses_text(self) -> bool:
        """Whether reading a partition means parsing JSON lines (every input is JSONL,
        plain or compressed): about 100 MB/s of one core, against almost nothing for an
        Arrow file mapped from disk."""
        return bool(self.partitions) and all(
            parses_text(piece) for partition in self.partitions for piece in partition)

    def rereads_cost(self) -> bool:
        """Whether reading a partition again costs more than mapping a copy of it: JSON
        lines are parsed (:meth:`parses_text`), and a piece cut inside a Parquet row group
        decodes the group's rows before it as well (:func:`~dataselect.readers.
        parquet._read_row_range`), up to the whole group again for its last piece."""
        return self.parses_text() or any(
            piece.in_group for partition in self.partitions for piece in partition)

    def cached_in(self, folder: str) -> Corpus:
        """The same corpus, keeping each partition it reads under ``folder`` as an Arrow
        file that later reads map instead of parsing the input again.

        Why: a DSIR job reads the pool three times (fit, score, write); parsing a 141 MB
        JSONL pool costs 1.4 s of CPU each time, writing the Arrow copy 0.08 s and mapping
        it back 0.014 s. Memory stays per partition (the files are mapped, not held); the
        caller owns ``folder`` and deletes it when its passes are done.
        """
        return replace(self, cache_dir=storage.absolute(checks.check_path(folder, "folder")))

    def with_ngram_store(self, folder: str) -> Corpus:
        """The same corpus, with ``folder`` to keep each partition's hashed n-grams in
        (:mod:`dataselect.ngram_store`): the pass that first hashes a partition saves its
        features there and later passes load them. The caller owns ``folder``; a replanned
        corpus does not carry it, since its partitions are other rows."""
        return replace(self, ngram_dir=storage.absolute(checks.check_path(folder, "folder")))

    def read_partition(self, index: int) -> pa.Table:
        """Rows of partition ``index`` with ``id``, ``_file`` and ``_row``; ids checked unique."""
        checks.check_int(index, "index", minimum=0, maximum=self.npartitions - 1)
        if self.cache_dir is None:
            return self._parse_partition(index)
        path = os.path.join(self.cache_dir, cached_name(index))
        if os.path.exists(path):
            return read_table(path)
        table = self._parse_partition(index)
        os.makedirs(self.cache_dir, exist_ok=True)
        with atomic_write(path) as tmp, pa.OSFile(tmp, "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return table

    def _parse_partition(self, index: int) -> pa.Table:
        pieces = self.partitions[index]
        try:
            tables = [self._read(piece) for piece in pieces]
        except InputError:
            # a file replaced since it was planned is read with the old plan's byte ranges,
            # and a valid file failed as "malformed JSON": say that it changed instead
            self._check_read_unchanged(pieces)
            raise
        notes = _id_notes([t.schema for t in tables], self.id_field)
        table = _noted(concat(tables, [_place(p) for p in pieces]), notes)
        _check_unique_within(table, self.where)
        return table

    def _check_read_unchanged(self, pieces: list[Piece]) -> None:
        """Refuse, as :meth:`check_unchanged` does, when a file of ``pieces`` differs from
        the identity taken when it was planned."""
        planned = dict(zip(self.files, self.identities or []))
        for path in dict.fromkeys(piece.path for piece in pieces):
            if path in planned and jsonable(file_identity(path)) != jsonable(planned[path]):
                self.check_unchanged(what="input")

    def _read(self, piece: Piece) -> pa.Table:
        return self._with_places(piece, read_piece(piece))

    def _with_places(self, piece: Piece, table: pa.Table) -> pa.Table:
        """A piece's rows (with ``_row``) plus ``_file`` and the ``id`` every row has."""
        table = _own_columns_checked(piece, table)
        table = table.append_column(
            FILE_COLUMN, pa.repeat(pa.scalar(piece.path, pa.string()), table.num_rows))
        where = self.where_in(table) if table.num_rows else lambda i: piece.path
        ids = _ids(table, self.id_field, self.labels[piece.path], where)
        _check_id_column(piece, table, self.id_field)
        # a piece without records (blank lines only) neither reads ids nor derives them
        note = {piece.path: "given" if self.id_field in table.column_names else "derived"
                } if table.num_rows else {}
        if ID_COLUMN in table.column_names:
            table = table.set_column(table.column_names.index(ID_COLUMN), ID_COLUMN, ids)
        else:
            table = table.add_column(0, ID_COLUMN, ids)
        return _noted(table, note)

    def unified_schema(self, parse: bool = True,
                       schemas: list[tuple[str, pa.Schema]] | None = None) -> pa.Schema:
        """The one schema every partition's rows are written with (:mod:`dataselect.schemas`),
        or an error naming the two files whose columns disagree. ``schemas`` are this
        corpus's :meth:`schemas` where the caller has them already."""
        schemas = self.schemas(parse) if schemas is None else schemas
        try:
            return unify(schemas)
        except InputError as exc:  # a parsed partition answers as a whole: find its file
            return unify(self._pieces_of(schemas, exc.where))

    def _pieces_of(self, schemas: list[tuple[str, pa.Schema]], place: str | None
                   ) -> list[tuple[str, pa.Schema]]:
        """``schemas`` with the JSONL partition starting at ``place`` given piece by piece
        (each parsed again: this runs only when the files disagree)."""
        out = []
        for where, schema in schemas:
            index = self._jsonl_partition_at(where) if where == place else None
            if index is None:
                out.append((where, schema))
            else:
                out.extend((_place(p), self._read(p).schema) for p in self.partitions[index])
        return out

    def _jsonl_partition_at(self, place: str) -> int | None:
        for index, pieces in enumerate(self.partitions):
            if len(pieces) > 1 and self.partition_place(index) == place and \
                    any(map(parses_text, pieces)):
                return index
        return None

    def schemas(self, parse: bool = True) -> list[tuple[str, pa.Schema]]:
        """``(place, schema)`` of the rows of each Parquet, Arrow or HF file piece (from
        metadata) and of each JSONL partition (from its cached copy, or parsed now; left
        out when ``parse`` is false, for a check before work)."""
        schemas = []
        for index in range(self.npartitions):
            schemas.extend(self._partition_schemas(index, parse))
        _id_notes([schema for _, schema in schemas], self.id_field)
        return schemas

    def _partition_schemas(self, index: int, parse: bool) -> list[tuple[str, pa.Schema]]:
        pieces = self.partitions[index]
        place = self.partition_place(index)
        if self.cache_dir is not None:
            path = os.path.join(self.cache_dir, cached_name(index))
            if os.path.exists(path):
                return [(place, read_schema(path))]
        if any(map(parses_text, pieces)):
            return [(place, self.read_partition(index).schema)] if parse else []
        return [(_place(p), self._with_places(p, _empty(p)).schema) for p in pieces]

    def read_rows(self, index: int, positions: np.ndarray) -> pa.Table:
        """``read_partition(index).take(positions)``, reading only the Parquet row groups
        that hold those rows where the partition is Parquet alone and not kept parsed
        (a kept copy is mapped, which costs nothing). Why: at a small k most partitions
        that hold a selected row hold one or two, and the write pass needs only those."""
        pieces = self.partitions[index]
        if not len(positions) and (empty := self.empty_partition(index)) is not None:
            return empty
        if not self._planned(index, reads_parts):
            return self.read_partition(index).take(positions)
        wanted = np.unique(np.asarray(positions, np.int64))
        tables, offset = [], 0
        for piece in pieces:
            mine = wanted[(wanted >= offset) & (wanted < offset + piece.num_rows)]
            parts = subpieces(piece, mine - offset + piece.first_row)
            read = [self._with_places(p, read_piece(p)) for p in parts]
            table = concat(read, [_place(p) for p in parts]) if read else None
            if table is None:
                table = self._with_places(piece, _empty(piece))
            else:  # the rows read, back to the piece's positions: keep the wanted ones
                rows = table[ROW_COLUMN].to_numpy() - piece.first_row
                table = table.take(np.flatnonzero(np.isin(rows, mine - offset)))
            tables.append(table)
            offset += piece.num_rows
        table = concat(tables, [_place(p) for p in pieces])
        return _noted(table, {}).take(np.searchsorted(wanted, positions))

    def read_ids(self, index: int) -> pa.ChunkedArray:
        """The ``id`` column of partition ``index``, as :meth:`read_partition` gives it,
        reading only what ids need where the partition is Parquet, not kept parsed: the
        id column (``--id-field``), or nothing when ids are derived from row numbers.
        Why: a sample by id (:func:`~dataselect.sampling.sample_rows`) needs every row's
        id but the text of its sampled rows only."""
        if "." in self.id_field or not self._planned(index, reads_parts):
            return self.read_partition(index)[ID_COLUMN]
        return pa.chunked_array([self._piece_ids(p) for p in self.partitions[index]],
                                pa.string())

    def _piece_ids(self, piece: Piece) -> pa.Array:
        rows = pa.array(np.arange(piece.first_row, piece.first_row + piece.num_rows,
                                  dtype=np.int64))
        # one value repeated, built in Arrow: a list of the path per row cost 6 ms a
        # 65,536-row partition, a third of reading its ids
        table = pa.table({ROW_COLUMN: rows,
                          FILE_COLUMN: pa.repeat(pa.scalar(piece.path, pa.string()), len(rows))})
        if self.id_field in piece_schema(piece).names:
            table = table.append_column(self.id_field, read_piece_column(piece, self.id_field))
        where = self.where_in(table) if table.num_rows else lambda i: piece.path
        ids = _ids(table, self.id_field, self.labels[piece.path], where)
        return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids

    def _planned(self, index: int, readable: Callable[[Piece], bool]) -> bool:
        """Whether partition ``index`` is read from its pieces, each ``readable`` (by parts),
        and not mapped whole from a parsed copy (:meth:`cached_in`), which costs less than
        any part read from the input; a corpus of rows in memory has no pieces."""
        pieces = self.partitions[index]
        cached = self.cache_dir is not None and os.path.exists(
            os.path.join(self.cache_dir, cached_name(index)))
        return bool(pieces) and not cached and all(readable(p) for p in pieces)

    def empty_partition(self, index: int) -> pa.Table | None:
        """Partition ``index`` without its rows: the table :meth:`read_partition` returns,
        its columns and metadata as they are, sliced to no row; read from metadata (Parquet,
        Arrow, HF) or the parsed copy, or None where only parsing would tell (JSONL). What
        a pass that needs a partition's columns but none of its rows reads instead."""
        if self.cache_dir is not None:
            path = os.path.join(self.cache_dir, cached_name(index))
            if os.path.exists(path):
                return read_schema(path).empty_table()
        pieces = self.partitions[index]
        if not pieces or any(map(parses_text, pieces)):
            return None
        tables = [self._with_places(p, _empty(p)) for p in pieces]
        return _noted(concat(tables, [_place(p) for p in pieces]), {})

    def partition_place(self, index: int) -> str:
        """Where partition ``index`` starts: its first file (and line or row)."""
        pieces = self.partitions[index]
        return _place(pieces[0]) if pieces else f"partition {index}"

    def place(self, index: int, position: int) -> tuple[str, str]:
        """``(id, "file:line")`` of the row at ``position`` in partition ``index``."""
        table = self.read_partition(index)
        checks.check_int(position, "position", minimum=0, maximum=table.num_rows - 1)
        file, row = table[FILE_COLUMN][position].as_py(), table[ROW_COLUMN][position].as_py()
        return table[ID_COLUMN][position].as_py(), self.where(file, row)

    def texts(self, table: pa.Table) -> pa.Array:
        """The rendered text of every row (the one string all scorers see)."""
        _check_table(table)
        return self.text.render(table, self.where_in(table))

    def scoring_view(self, table: pa.Table, response_spans: bool = False) -> pa.Table:
        """``id`` + rendered ``text``: what :meth:`Scorer.score_batch` receives; with
        ``response_spans``, also the character spans a model is trained to produce. Chat
        records and prompt + completion pairs also carry their turns (``messages``), so a
        model with a chat template renders them its own way (zero-copy for chat records)."""
        _check_table(table)
        where = self.where_in(table)
        view = pa.table({ID_COLUMN: table[ID_COLUMN], "text": self.texts(table)})
        if response_spans:
            view = view.append_column(RESPONSE_SPANS, self.text.response_spans(table, where))
        chat = self.text.chat(table, where)
        if chat is not None:
            view = view.append_column(CHAT_COLUMN, chat)
        return view

    def where_in(self, table: pa.Table) -> Callable[[int], str]:
        files, rows = table[FILE_COLUMN], table[ROW_COLUMN]
        return lambda i: self.where(files[i].as_py(), rows[i].as_py())

    @staticmethod
    def where(file: str, row: int) -> str:
        fmt = detect_format(file)
        return Piece(file, fmt or "").where(row)

    def iter_tables(self) -> Iterator[pa.Table]:
        for i in range(self.npartitions):
            yield self.read_partition(i)

    def to_table(self, what: str = "corpus") -> pa.Table:
        """All rows in memory (for small corpora such as a target); raises if empty."""
        tables = list(self.iter_tables())
        _id_notes([t.schema for t in tables], self.id_field)
        table = concat(tables, [self.partition_place(i) for i in range(self.npartitions)])
        if table.num_rows == 0:
            raise EmptyCorpusError(f"{what} holds no records", where=", ".join(self.files))
        _check_unique_within(table, self.where)
        return table

    def map_partitions(self, fn: Callable[[pa.Table, int], pd.DataFrame], meta: Any,
                       label: str = "map") -> Any:
        """A Dask DataFrame with one partition per corpus partition: ``fn(table, index)``.

        This is the one place where work is handed to Dask; the function receives the
        validated Arrow table, so stages never re-implement reading or validation.
        """
        import dask.dataframe as dd  # imported here: it costs a second at start-up

        return dd.from_map(
            _PartitionTask(self, fn), range(self.npartitions), meta=meta,
            enforce_metadata=False, label=label,
        )

    def to_dask(self) -> Any:
        """The corpus as a Dask DataFrame of Arrow-backed (``pd.ArrowDtype``) partitions."""
        meta = self.read_partition(0).slice(0, 0).to_pandas(types_mapper=pd.ArrowDtype)
        return self.map_partitions(_to_pandas, meta=meta, label="read")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input: text spec, id field, partition size, and each file's
        identity: its size, inode, mtime, ctime and sampled blocks
        (:func:`~dataselect.fingerprint.file_identity`), read in milliseconds, never the
        whole file.

        The files' identities are those taken when the corpus was planned, not now: a job
        records its pool in its marker, its score store and its manifest, and the three
        were taken at three moments, so a file replaced between the first and the second
        was recorded as the old file in the marker and as the new one in the store, which
        the final check compared with, and the job ended with exit 0 on rows its identity
        did not describe. :meth:`current_fingerprint` is the files as they are now."""
        return self._described(self.identities)

    def current_fingerprint(self) -> dict[str, Any]:
        """:meth:`fingerprint` with each file's identity taken now."""
        return self._described([file_identity(f) for f in self.files])

    def _described(self, identities: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {
            "text": str(self.text),
            "id_field": self.id_field,
            "partition_bytes": self.partition_bytes,
            "files": list(identities or []),
        }

    def changed_since(self, recorded: dict[str, Any] | None = None) -> list[str]:
        """The files whose content differs from a ``fingerprint()`` taken earlier (all of
        them when the settings or the file list differ); empty when nothing changed.
        ``recorded`` defaults to this corpus's own :meth:`fingerprint`: what changed since
        it was planned."""
        recorded = jsonable(self.fingerprint() if recorded is None else recorded)
        now = jsonable(self.current_fingerprint())
        if now == recorded:
            return []
        before = {f.get("path"): f for f in recorded.get("files", [])}
        changed = [f["path"] for f in now["files"] if before.get(f["path"]) != f]
        return changed or list(self.files)

    def check_unique_ids(self, id_hashes: list[np.ndarray]) -> None:
        """Refuse ids repeated across partitions (a partition checks its own when read).

        ``id_hashes`` holds each partition's 8-byte id hashes (:func:`~dataselect.sampling.
        id_hashes`), which every command that reads a pool has or gets cheaply (selection
        and ``score`` from the scores' summaries, ``features`` from its store), so they all
        refuse the same pools. On a hash match the two rows are looked up, so the error
        names both places, and a mere hash collision is not reported."""
        ordered = np.concatenate([np.asarray(h, np.uint64) for h in id_hashes]
                                 or [np.zeros(0, np.uint64)])
        ordered.sort()
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        for value in repeated:
            self.refuse_repeated([(index, int(position))
                                  for index, hashes in enumerate(id_hashes)
                                  for position in np.flatnonzero(np.asarray(hashes) == value)][:2])

    def refuse_repeated(self, places: list[tuple[int, int]]) -> None:
        """Refuse the rows at two places, (partition, position) in pool order, whose id
        hashes match, when their ids do (a mere hash collision passes)."""
        (first, where), (second, there) = (self.place(i, p) for i, p in places[:2])
        if first == second:
            raise DuplicateIdError(f"duplicate id {first!r} (also at {where})", where=there,
                                   field="id")

    def check_unchanged(self, recorded: dict[str, Any] | None = None, what: str = "pool"
                        ) -> None:
        """Refuse to finish a job whose input changed while it ran: its parts would mix
        rows read before and after the edit, under scores of the old text. ``recorded``
        defaults to the corpus's own :meth:`fingerprint`, taken before it was planned, so
        a change at any moment of the job is caught."""
        changed = self.changed_since(recorded)
        if changed:
            shown = first_names(changed)
            raise InputError(f"changed while the job ran ({what}: {shown}); the output is "
                             "incomplete: rerun with --overwrite once the input stays put",
                             where=changed[0])


def _check_table(table: Any) -> None:
    """A table of this corpus's rows, as ``read_partition`` returns them."""
    if not isinstance(table, pa.Table) or FILE_COLUMN not in table.column_names:
        raise checks.wrong_type("a table of the corpus's rows (read_partition(i))", table,
                                "table")


def cached_name(index: int) -> str:
    """The file name of partition ``index`` in a corpus's cache folder (cached_in)."""
    return f"part-{index:05d}.arrow"


@dataclass(frozen=True)
class _PartitionTask:
    corpus: Corpus
    fn: Callable[[pa.Table, int], pd.DataFrame]

    def __call__(self, index: int) -> pd.DataFrame:
        return self.fn(self.corpus.read_partition(index), index)


def _to_pandas(table: pa.Table, index: int) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def read_corpus(
    paths: str | os.PathLike | list,
    text: str | TextSpec = "text",
    id_field: str = ID_COLUMN,
    partition_bytes: int = DEFAULT_PARTITION_BYTES,
) -> Corpus:
    """Plan a corpus from files, folders or globs (JSONL[.gz|.zst], Parquet, Arrow, HF dirs).

    Nothing is read but file metadata and each file's identity (a few sampled blocks,
    :meth:`Corpus.fingerprint`, taken here, before planning, so every record of the input
    and the check that it did not change compare with one value); rows are read and
    validated when a stage needs them.
    Every argument is checked as the command line checks its flags (``partition_bytes``
    as ``--partition-mb``: ``nan`` or ``True`` are no sizes).
    """
    files = checks.check_paths(paths, "paths")
    if not isinstance(text, TextSpec):
        checks.check_name(text, "text")
    checks.check_name(id_field, "id_field")
    partition_bytes = checks.check_count(partition_bytes, "partition_bytes",
                                         maximum=checks.MAX_PARTITION_MB * 2**20)
    # a program's corpus is kept out of the caches as a command's --pool is: no cache
    # folder is made in (or through a link from) a folder it reads
    keep_cache_out_of([os.fspath(f) for f in files])
    return Corpus(expand_paths(files), TextSpec.parse(text), id_field, partition_bytes,
                  roots=input_roots(files))


def as_corpus(value: Any, name: str, optional: bool = False) -> Corpus | None:
    """``value`` as a Corpus: itself, or read with :func:`read_corpus`'s defaults when it
    is a path (or a list of paths), which is what an API user passes where a corpus goes
    (``DSIR().fit("target.jsonl", "pool/")``); None when ``optional`` allows it. Anything
    else is a TypeError naming the argument, not an AttributeError deep inside a scorer."""
    if isinstance(value, Corpus) or (value is None and optional):
        return value
    if isinstance(value, str | os.PathLike | list | tuple):
        return read_corpus(checks.check_paths(value, name))
    raise checks.wrong_type("a Corpus (dataselect.read_corpus(...)) or a path", value, name)


def compute_partition_bytes(pool_bytes: int, limit: int = DEFAULT_PARTITION_BYTES) -> int:
    """Partition size for a pool whose every row costs a model pass (a scorer whose
    ``compute_bound()`` is true): ``pool_bytes / 16``, kept within 16 KiB to 128 KiB and
    never above ``limit`` (the job's partition size).

    Why: a model's work on a row grows with its tokens, and tokens with bytes (about four
    bytes a token in English), so bytes stay the measure and planning stays the cheap
    metadata pass it is; only the 4 MiB default is far too coarse for a model: 1,000 chat
    records (450 KB) made one partition, one task, and one busy core of two. Sixteen
    partitions give up to 4 workers four tasks each, so the last task to finish holds up
    at most a quarter of a worker's share; at least 16 KiB (~4k tokens, ~35 chat records:
    a couple of full batches) keeps a task's fixed costs small; at most 128 KiB (~32k
    tokens, ~300 chat records) bounds what a killed job loses and lets large pools spread
    over large clusters. The plan depends on the data only, never on the number of
    workers, so ``--workers`` changes neither the partitions nor the bytes written.
    """
    share = -(-pool_bytes // COMPUTE_PARTITIONS)
    wanted = max(MIN_COMPUTE_PARTITION_BYTES, min(MAX_COMPUTE_PARTITION_BYTES, share))
    return max(1, min(limit, wanted))


# Columns dataselect adds to every row it reads; a user's own column of one of these names
# would be replaced without a word, so it is refused.
OWN_COLUMNS = (FILE_COLUMN, ROW_COLUMN)


def _own_columns_checked(piece: Piece, table: pa.Table) -> pa.Table:
    """Refuse input columns that the columns dataselect adds would replace: ``_file`` and
    ``_row`` (every row's provenance; the reader appends the last ``_row`` itself). The one
    exception is a
    part of a dataselect output read back (a recipe's attribution reads its tasks' rows):
    its ``_file``/``_row`` are dataselect's own, and give way to this read's."""
    names = table.column_names[:-1]  # the last is the reader's own _row
    clashes = [n for n in OWN_COLUMNS if n in names]
    if clashes and _inside_output(piece.path):
        return _drop_inherited_places(table)
    if clashes:
        raise InputError(
            f"has a column named {clashes[0]!r}, a name dataselect gives its own provenance "
            "column (the file and row each record was read from); rename or drop yours",
            where=piece.path, field=clashes[0])
    return table


def _check_id_column(piece: Piece, table: pa.Table, id_field: str) -> None:
    """Ids taken from another column (``--id-field``) are written as ``id``: a column of
    that name would be replaced by them."""
    if id_field != ID_COLUMN and ID_COLUMN in table.column_names:
        raise InputError(
            f"has a column named 'id' but the ids are taken from {id_field!r}, and dataselect "
            "writes them as 'id'; rename your 'id' column, or leave --id-field out to use it",
            where=piece.path, field=ID_COLUMN)


def _inside_output(path: str) -> bool:
    """Whether ``path`` lies in a folder dataselect wrote (it or a parent holds the marker)."""
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        if os.path.isfile(os.path.join(folder, MARKER)):
            return True
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent


def _drop_inherited_places(table: pa.Table) -> pa.Table:
    """The ``_file``/``_row`` a dataselect output carries from the pool it was chosen from;
    the last ``_row`` is this read's."""
    names = table.column_names
    inherited = [i for i, n in enumerate(names) if n == FILE_COLUMN]
    inherited += [i for i, n in enumerate(names[:-1]) if n == ROW_COLUMN]
    for i in sorted(inherited, reverse=True):
        table = table.remove_column(i)
    return table


# Schema metadata of a partition's rows: which files' ids it derived and which it read.
# Pieces of one large JSONL file are read apart, and a piece whose rows all lack an id
# would derive ids while the others read theirs; the notes meet where partitions do.
IDS_NOTE = b"dataselect.ids"


def _noted(table: pa.Table, notes: dict[str, str]) -> pa.Table:
    metadata = {**(table.schema.metadata or {}), IDS_NOTE: json.dumps(notes).encode()}
    return table.replace_schema_metadata(metadata)


def without_notes(table: pa.Table) -> pa.Table:
    """``table`` without the id notes: they are bookkeeping, not part of any output."""
    metadata = dict(table.schema.metadata or {})
    if metadata.pop(IDS_NOTE, None) is None:
        return table
    return table.replace_schema_metadata(metadata or None)


def _id_notes(schemas: list[pa.Schema], id_field: str) -> dict[str, str]:
    """The notes of ``schemas`` merged; a file with derived ids in one and read ids in
    another is refused: a derived id would stand in for a record's missing one."""
    notes: dict[str, str] = {}
    for schema in schemas:
        for path, how in json.loads((schema.metadata or {}).get(IDS_NOTE, b"{}")).items():
            if notes.setdefault(path, how) != how:
                raise InputError(
                    "id is missing from some records of the file but not from all; give every "
                    "record an id, or none to have them all derived",
                    where=path, field=id_field)
    return notes


def _place(piece: Piece) -> str:
    """A piece's file, with its first line or row when it starts inside the file."""
    return piece.path if piece.first_row == 0 else piece.where(piece.first_row)


def _empty(piece: Piece) -> pa.Table:
    """The columns a read of a Parquet, Arrow or HF piece returns, without its rows."""
    return piece_schema(piece).empty_table().append_column(ROW_COLUMN, pa.array([], pa.int64()))


def _pack(pieces: list[Piece], target_bytes: int) -> list[list[Piece]]:
    """Greedy packing in input order, so partitions and output names follow the files."""
    partitions: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for piece in pieces:
        if current and size + piece.size_bytes > target_bytes:
            partitions.append(current)
            current, size = [], 0
        current.append(piece)
        size += piece.size_bytes
    if current:
        partitions.append(current)
    return partitions


def _file_labels(files: list[str]) -> dict[str, str]:
    """Short, unique names for derived ids: the path below the inputs' common folder,
    without data suffixes (``pool/a.jsonl.gz`` -> ``a``)."""
    absolute = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute]) if absolute else ""
    labels = {}
    for file, path in zip(files, absolute):
        relative = Path(os.path.relpath(path, root)).as_posix()
        for suffix in DATA_SUFFIXES:
            relative = relative.removesuffix(suffix)
        labels[file] = relative
    return labels


def _ids(table: pa.Table, id_field: str, label: str, where: Callable[[int], str]) -> pa.Array:
    if id_field not in table.column_names:
        if id_field != ID_COLUMN:
            # an id column the user named must exist: deriving ids instead would silently
            # replace the ids they meant (and any ``id`` column the rows already have)
            columns = [c for c in table.column_names if c not in (ROW_COLUMN, FILE_COLUMN)]
            raise InputError(f"has no id column {id_field!r} (columns: {', '.join(columns)}); "
                             "give the right --id-field, or leave it out to derive ids",
                             where=where(0) if table.num_rows else None, field=id_field)
        rows = as_array(table[ROW_COLUMN])
        return pc.binary_join_element_wise(label, rows.cast(pa.string()), ":")
    column = plain_strings(as_array(table[id_field]))
    if pa.types.is_integer(column.type):
        column = column.cast(pa.string())
    elif pa.types.is_floating(column.type):
        raise InputError(f"id must be a string or integer, got a number with a decimal point "
                         f"({column.type}): write every id as an integer or a string",
                         where=where(_first_float_id(table, column, id_field)), field=id_field)
    elif not pa.types.is_string(column.type):
        raise InputError(f"id must be a string or integer, got {column.type}",
                         where=where(0), field=id_field)
    if column.null_count:
        bad = column.is_null().to_pylist().index(True)
        raise InputError("id is missing (null)", where=where(bad), field=id_field)
    return column


def _first_float_id(table: pa.Table, column: pa.Array, id_field: str) -> int:
    """The row of the first id written as a float, for the refusal to name.

    Why: Arrow's JSON reader reads a whole column as floats when one value is written
    ``5.0`` among integers, so every id is a float by then and the refusal named the first
    row, an integer (pass 21, g01). A value that is not a whole number is the row; among
    whole numbers, a plain local JSON lines file is read again, line by line, for the
    first id written as a float (only on the way to the refusal)."""
    values = column.to_numpy(zero_copy_only=False)
    fractional = np.flatnonzero(~(np.isfinite(values) & (values == np.floor(values))))
    if len(fractional):
        return int(fractional[0])
    if FILE_COLUMN not in table.column_names or ROW_COLUMN not in table.column_names:
        return 0
    path = table[FILE_COLUMN][0].as_py()
    if storage.is_remote(path) or not path.endswith((".jsonl", ".json", ".ndjson")):
        return 0
    places = {int(line): place for place, line in enumerate(table[ROW_COLUMN].to_pylist())}
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f):
                if number in places and line.strip():
                    record = json.loads(line)
                    if isinstance(record, dict) and isinstance(record.get(id_field), float):
                        return places[number]
    except (OSError, ValueError):
        pass
    return 0


def _check_unique_within(table: pa.Table, where: Callable[[str, int], str]) -> None:
    ids = table[ID_COLUMN]
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return
    counts = pc.value_counts(ids)
    duplicated = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
    rows = pc.indices_nonzero(pc.equal(ids, duplicated)).to_pylist()[:2]
    places = [where(table[FILE_COLUMN][r].as_py(), table[ROW_COLUMN][r].as_py()) for r in rows]
    raise DuplicateIdError(
        f"duplicate id {duplicated!r} (also at {places[0]})", where=places[1], field=ID_COLUMN
    )
