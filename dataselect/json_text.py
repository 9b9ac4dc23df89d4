"""Parsing the JSON dataselect reads back, with every way it can fail as one exception.

Why: Python's parser recurses once per nesting level, so a file of 100,000 ``[`` raises
``RecursionError``, not the ``JSONDecodeError`` a reader expects, and bytes that are not
UTF-8 raise ``UnicodeDecodeError``. Each reader used to list the exceptions it caught, and
a reader that missed one turned a damaged file into a traceback. Readers call
:func:`parse_json` or :func:`read_json_file` and catch :class:`UnreadableJSON` alone.
"""

from __future__ import annotations

import json
import os
from typing import Any


class UnreadableJSON(ValueError):
    """JSON that cannot be parsed; ``str()`` says why, in words a message can quote
    after a file's name ("it is nested too deeply to read")."""


def parse_json(text: str | bytes | bytearray) -> Any:
    """The value of ``text`` (bytes are UTF-8), or :class:`UnreadableJSON`."""
    try:
        if isinstance(text, bytes | bytearray):
            text = text.decode("utf-8")
        return json.loads(text)
    except RecursionError:
        raise UnreadableJSON("it is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnreadableJSON(f"it is not valid JSON ({exc})") from None


def read_json_file(path: str | os.PathLike) -> Any:
    """The value of the local file ``path``; ``OSError`` when it cannot be read,
    :class:`UnreadableJSON` when it is not JSON."""
    with open(path, "rb") as f:
        return parse_json(f.read())
