"""How a record becomes the one string every scorer sees.

Pools come as plain text columns, chat transcripts (``messages``) or ``prompt`` +
``completion`` pairs. Rendering them in one place guarantees that DSIR, ZIP-FIT, LESS and the
rest score exactly the same string for the same record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from dataselect.errors import InputError

ROLE_SEPARATOR = "\n\n"

# Character offsets [start, end) of the response parts of one rendered text.
SPANS_TYPE = pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32())]))
RESPONSE_ROLE = "assistant"

TextKind = Literal["column", "messages", "prompt_completion"]
# Maps a row index inside a batch to a printable place such as ``pool/a.jsonl:18``.
WhereFn = Callable[[int], str]


@dataclass(frozen=True)
class TextSpec:
    """Where the text of a record lives.

    Build one with :meth:`parse`: ``"text"`` (any column name) for a plain column,
    ``"messages"`` for chat records (a list of ``{role, content}``), and
    ``"prompt+completion"`` for instruction pairs (any two column names joined by ``+``).
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

    def render(self, table: pa.Table, where: WhereFn) -> pa.Array:
        """Return the text of every row as a string array, or raise naming the bad row."""
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

    def response_spans(self, table: pa.Table, where: WhereFn) -> pa.Array:
        """Character spans of the rendered text that a model is trained to produce.

        Gradient and loss based scorers (LESS, BADS) count only these tokens, as
        instruction tuning does: the assistant turns of chat records, the completion of
        prompt + completion pairs, and the whole text of a plain column. Offsets index the
        string :meth:`render` returns, so both always agree.
        """
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


def _string_column(table: pa.Table, name: str, where: WhereFn) -> pa.Array:
    column = table[name].combine_chunks()
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
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
