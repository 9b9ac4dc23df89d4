"""The fast tokenizer's token hash written out one token at a time, from its definition in
:mod:`dataselect.token_hash`, as the naive answer the vectorised code is checked against."""

from __future__ import annotations

import numpy as np
import pandas as pd

_MASK64 = 2**64 - 1


def splitmix_finalizer(value: int) -> int:
    value ^= value >> 30
    value = value * 0xBF58476D1CE4E5B9 & _MASK64
    value ^= value >> 27
    value = value * 0x94D049BB133111EB & _MASK64
    return value ^ value >> 31


def naive_token_hash(token: str) -> int:
    return naive_bytes_hash(token.encode("utf-8"))


def naive_bytes_hash(data: bytes) -> int:
    if len(data) > 12:
        return int(pd.util.hash_array(np.array([data], dtype=object), categorize=False)[0])
    padded = data.ljust(12, b"\0")
    w0 = len(data) | int.from_bytes(padded[:4], "little") << 32
    w1 = int.from_bytes(padded[4:], "little")
    return splitmix_finalizer((w0 * 0x9E3779B97F4A7C15 & _MASK64) ^ w1)
