"""How a record becomes the one string every scorer sees.

Pools come as plain text columns, chat transcripts (``messages``) or ``prompt`` +
``completion`` pairs. Rendering them in one place guarantees that DSIR, ZIP-FIT, LESS and the
rest score exactly the same string for the same record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.errors import InputError

ROLE_SEPARATOR = "\n\n"

# Character offsets [start, end) of the response parts of one rendered text.
SPANS_TYPE = pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32())]))
RESPONSE_ROLE = "assistant"
# The conversation of a chat-like record, carried in a scoring view beside the rendered text
# so a model with its own chat template can render the record in the format it was tuned on.
CHAT_COLUMN = "messages"
CHAT_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PROMPT_ROLE = "user"

TextKind = Literal["column", "messages", "prompt_completion"]
# Maps a row index inside a batch to a printable place such as ``pool/a.jsonl:18``.
WhereFn = Callable[[int], str]


@dataclass(frozen=True)
class TextSpec:
    """Where the text of a record lives.

    Build one with :meth:`parse`: ``"text"`` (any column name) for a plain column,
    ``"messages"`` for chat records (a list of ``{role, content}``), and
    ``"prompt+completion"`` for instruction pairs (any two column names joined by ``+``).

    A column whose whole name is the spec wins over the pair: ``"a+b"`` on a table with a
    column named ``a+b`` reads that column, as a name without ``+`` would, instead of
    joining the columns ``a`` and ``b`` and ignoring the one the user named
    (:meth:`for_table`). With several ``+``, the one split whose halves are both columns
    is read (``a+b+c`` on columns ``a+b`` and ``c``); two such splits are refused.
    """

    kind: TextKind
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str | TextSpec) -> TextSpec:
        if isinstance(spec, TextSpec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise InputError(f"text spec must be a non-empty string, got {spec!r}")
        if spec == "messages":
            return cls("messages", ("messages",))
        if "+" in spec:
            prompt, _, completion = spec.partition("+")
            if not prompt or not completion:
                raise InputError(f"text spec {spec!r} must look like 'prompt+completion'")
            return cls("prompt_completion", (prompt, completion))
        return cls("column", (spec,))

    def __str__(self) -> str:
        return "+".join(self.fields) if self.kind == "prompt_completion" else self.fields[0]

    def for_table(self, table: pa.Table) -> TextSpec:
        """This spec as it reads ``table``: a ``prompt+completion`` spec whose whole text
        is a column of ``table`` is that plain column. The spec is parsed before any file
        is read, so only the table can tell whether ``+`` was part of a column's name."""
        whole = str(self)
        if self.kind != "prompt_completion":
            return self
        names = set(table.column_names)
        if whole in names:
            return TextSpec("column", (whole,))
        # with several "+", each split whose halves are both columns is a reading
        readings = [(whole[:at], whole[at + 1:]) for at, char in enumerate(whole)
                    if char == "+" and whole[:at] in names and whole[at + 1:] in names]
        if len(readings) > 1:
            shown = ", ".join(f"{p!r} with {c!r}" for p, c in readings)
            raise InputError(f"text spec {whole!r} reads this table {len(readings)} ways "
                             f"({shown}): rename a column so that one reading is left",
                             field="text")
        if readings and readings[0] != self.fields:
            return TextSpec("prompt_completion", readings[0])
        return self

    def render(self, table: pa.Table, where: WhereFn) -> pa.Array:
        """Return the text of every row as a string array, or raise naming the bad row."""
        spec = self.for_table(table)
        if spec is not self:
            return spec.render(table, where)
        if table.num_rows == 0:
            return pa.array([], pa.string())
        for name in self.fields:
            if name not in table.column_names:
                raise InputError("missing text field", where=where(0), field=name)
        if self.kind == "column":
            return _string_column(table, self.fields[0], where)
        if self.kind == "prompt_completion":
            prompt = _string_column(table, self.fields[0], where)
            completion = _string_column(table, self.fields[1], where)
            return pc.binary_join_element_wise(prompt, completion, ROLE_SEPARATOR)
        return pa.array(
            [_render_messages(m, where(i)) for i, m in enumerate(table["messages"].to_pylist())],
            pa.string(),
        )

    def chat(self, table: pa.Table, where: WhereFn) -> pa.Array | None:
        """The record as a conversation (``[{role, content}, ...]`` per row), or None for a
        plain text column, which is not a conversation.

        Chat records give their ``messages`` as they are; a prompt + completion pair is a
        user turn followed by an assistant turn, the form instruction pairs take when an
        instruction model is trained on them. Model-based scorers render this with the
        model's own chat template when it has one (:mod:`models.lm`).
        """
        spec = self.for_table(table)
        if spec is not self:
            return spec.chat(table, where)
        if self.kind == "column":
            return None
        if self.kind == "messages":  # checked row by row by :meth:`render`
            return _role_content_only(table[CHAT_COLUMN].combine_chunks())
        prompt = _string_column(table, self.fields[0], where)
        completion = _string_column(table, self.fields[1], where)
        rows = table.num_rows
        roles = pa.array([PROMPT_ROLE, RESPONSE_ROLE] * rows, pa.string())
        interleaved = np.stack([np.arange(rows), np.arange(rows) + rows], axis=1).ravel()
        contents = pa.concat_arrays([prompt, completion]).take(pa.array(interleaved))
        turns = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
        offsets = pa.array(range(0, 2 * rows + 1, 2), pa.int32())
        return pa.ListArray.from_arrays(offsets, turns, type=CHAT_TYPE)

    def response_spans(self, table: pa.Table, where: WhereFn) -> pa.Array:
        """Character spans of the rendered text that a model is trained to produce.

        Gradient and loss based scorers (LESS, BADS) count only these tokens, as
        instruction tuning does: the assistant turns of chat records, the completion of
        prompt + completion pairs, and the whole text of a plain column. Offsets index the
        string :meth:`render` returns, so both always agree.
        """
        spec = self.for_table(table)
        if spec is not self:
            return spec.response_spans(table, where)
        if self.kind == "column":
            lengths = pc.utf8_length(self.render(table, where)).to_pylist()
            spans = [[(0, n)] for n in lengths]
        elif self.kind == "prompt_completion":
            prompts = _string_column(table, self.fields[0], where).to_pylist()
            completions = _string_column(table, self.fields[1], where).to_pylist()
            spans = []
            for prompt, completion in zip(prompts, completions):
                start = len(prompt) + len(ROLE_SEPARATOR)
                spans.append([(start, start + len(completion))])
        else:
            spans = [_message_spans(m) for m in table["messages"].to_pylist()]
        return pa.array(
            [[{"start": a, "end": b} for a, b in row] for row in spans], SPANS_TYPE
        )


def _role_content_only(messages: pa.Array) -> pa.Array:
    """``messages`` as :data:`CHAT_TYPE` (other per-turn fields dropped, large types
    narrowed), so views of different files concatenate; no per-row Python."""
    if messages.type == CHAT_TYPE:
        return messages
    if messages.null_count:  # render() refuses these first; kept for direct callers
        raise InputError("messages is missing or null", field=CHAT_COLUMN)
    turns = messages.flatten()
    fields = [turns.field(name).cast(pa.string()) for name in ("role", "content")]
    struct = pa.StructArray.from_arrays(fields, names=["role", "content"])
    offsets = messages.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]  # a sliced array's offsets are absolute; flatten() is not
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, type=CHAT_TYPE)


def as_array(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array, without a copy when it is one chunk already (every JSONL
    partition's is): ``combine_chunks`` copies even a single chunk, which for a pool's
    text was 0.3-0.5 s of CPU per pass over 141 MB, and every stage makes such a pass."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def plain_strings(column: pa.Array) -> pa.Array:
    """``column`` as ``string`` where it holds strings another way: ``large_string``,
    ``string_view``, or dictionary-encoded (pandas' categorical, Parquet's dictionary pages
    read back as such), so every way of storing the same text reads the same."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
    return column


def _string_column(table: pa.Table, name: str, where: WhereFn) -> pa.Array:
    column = plain_strings(as_array(table[name]))
    if not pa.types.is_string(column.type):
        bad = _first_non_string_row(column)
        raise InputError(
            f"text must be a string, got {column.type}", where=where(bad), field=name
        )
    if column.null_count:
        bad = column.is_null().to_pylist().index(True)
        raise InputError("text is missing or null", where=where(bad), field=name)
    return column


def _first_non_string_row(column: pa.Array) -> int:
    if pa.types.is_null(column.type):
        return 0
    for i, value in enumerate(column.to_pylist()):
        if not isinstance(value, str):
            return i
    return 0


def _message_spans(messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Spans of the assistant contents inside the string :func:`_render_messages` builds
    (only called on records that rendered, so the shape is already checked)."""
    spans, offset = [], 0
    for turn in messages:
        header = f"<|{turn['role']}|>\n"
        start = offset + len(header)
        end = start + len(turn["content"])
        if turn["role"] == RESPONSE_ROLE:
            spans.append((start, end))
        offset = end + len(ROLE_SEPARATOR)
    return spans


def _render_messages(messages: object, where: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list", where=where, field="messages")
    parts = []
    for turn in messages:
        if not isinstance(turn, dict):
            raise InputError(
                "each message must be an object with role and content", where=where,
                field="messages",
            )
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InputError(
                "each message needs string 'role' and 'content'", where=where, field="messages"
            )
        parts.append(f"<|{role}|>\n{content}")
    return ROLE_SEPARATOR.join(parts)
