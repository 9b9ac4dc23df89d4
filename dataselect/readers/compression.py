"""Compressed files read whole, as runs of independently ended units (zstd frames, gzip
members, bz2 streams): a file that ends inside a unit is an error, never a short read, and
checksums are verified wherever the file carries them."""

from __future__ import annotations

import bz2
import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import zstandard

from dataselect import storage
from dataselect.errors import InputError

COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2")
SCAN_BLOCK = 1 << 20


class _Decompressor(Protocol):
    """What zlib's, bz2's and zstandard's incremental decompressors have in common."""

    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """A compressed format as a run of independently ended units (zstd frames, gzip
    members, bz2 streams), the way ``zstd``, ``pigz`` and ``pbzip2`` concatenate them."""

    name: str
    unit: str
    new_decompressor: Callable[[], _Decompressor]
    magics: tuple[bytes, ...]
    errors: tuple[type[Exception], ...]
    zero_padding: bool = False  # gzip tools accept (and tape tools add) NULs after members


ZSTD_MAGICS = (b"\x28\xb5\x2f\xfd", *(bytes([0x50 + i]) + b"\x2a\x4d\x18" for i in range(16)))
# by the name ending that marks each
CODECS = {
    ".gz": Codec("gzip", "member", lambda: zlib.decompressobj(wbits=31), (b"\x1f\x8b",),
                 (zlib.error,), zero_padding=True),
    ".bz2": Codec("bz2", "stream", bz2.BZ2Decompressor, (b"BZh",), (OSError, EOFError)),
    # a window up to 2 GiB, so files from ``zstd --long=31`` are read, not called corrupt
    ".zst": Codec("zstd", "frame",
                  lambda: zstandard.ZstdDecompressor(max_window_size=1 << 31)
                  .decompressobj(), ZSTD_MAGICS, (zstandard.ZstdError,)),
}


def decompress(path: str, codec: Codec) -> bytes:
    """The whole decompressed file. Library readers end quietly at a unit boundary, or
    return what a cut unit held; here a file that ends inside a unit is an error, never a
    short read, and checksums are verified wherever the file carries them."""
    out: list[bytes] = []
    unit: _Decompressor | None = None
    with storage.open_binary(path) as f:
        head = f.read(SCAN_BLOCK)
        _check_magic(path, codec, head)
        for chunk in itertools.chain([head], iter(lambda: f.read(SCAN_BLOCK), b"")):
            while chunk:
                if unit is None:
                    # the magic check keeps this from eating the first unit's header
                    chunk = chunk.lstrip(b"\x00") if codec.zero_padding else chunk
                    if not chunk:
                        break
                    unit = codec.new_decompressor()
                out.append(_feed(path, codec, unit, chunk))
                chunk, unit = (unit.unused_data, None) if unit.eof else (b"", unit)
    if unit is not None:
        raise InputError(
            f"compressed stream is truncated (ends inside a {codec.name} {codec.unit}); the "
            "file is incomplete: re-download or re-compress it", where=path,
        )
    return b"".join(out)


def _check_magic(path: str, codec: Codec, head: bytes) -> None:
    if not head:
        raise InputError(f"is empty (0 bytes), not a {codec.name} file; the file is "
                         "incomplete: re-download or re-compress it", where=path)
    if not head.startswith(codec.magics):
        raise InputError(
            f"not a valid {codec.name} file (it does not start with {codec.name}'s magic "
            "bytes); re-download it, or name it after its real format", where=path,
        )


def _feed(path: str, codec: Codec, unit: _Decompressor, chunk: bytes) -> bytes:
    try:
        return unit.decompress(chunk)
    except codec.errors as exc:
        raise InputError(f"compressed stream is corrupt ({_corruption(exc)}); re-download or "
                         "re-compress it", where=path) from exc


def _corruption(exc: Exception) -> str:
    """A decompressor's complaint without its library prefix; checksum failures in words."""
    text = str(exc)
    if "incorrect data check" in text or "incorrect length check" in text:
        return "CRC mismatch"
    if "checksum" in text.lower():
        return "checksum mismatch"
    return text.rsplit(": ", 1)[-1]

