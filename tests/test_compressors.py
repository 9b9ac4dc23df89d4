"""Compressed lengths against the compressors' own one-shot APIs, and refused settings."""

from __future__ import annotations

import gzip
import pickle
import zlib

import lz4.block
import numpy as np
import pytest
import zstandard

from dataselect.errors import InputError
from scorers.zipfit.compressors import Codec


@pytest.fixture
def texts(pool_table) -> list[bytes]:
    """Real documents of several lengths and domains, plus an empty one."""
    rows = pool_table.slice(0, 3960).take(list(range(0, 3960, 330)))["text"].to_pylist()
    return [t.encode() for t in rows] + [b""]


def naive_length(compressor: str, level: int, data: bytes) -> int:
    if compressor == "deflate":
        return len(zlib.compress(data, level, wbits=-15))
    if compressor == "zlib":
        return len(zlib.compress(data, level))
    if compressor == "gzip":
        return len(gzip.compress(data, level, mtime=0))
    if compressor == "zstd":
        return len(zstandard.ZstdCompressor(level=level, write_checksum=False,
                                            write_content_size=False).compress(data))
    if level >= 2:
        return len(lz4.block.compress(data, mode="high_compression", compression=level,
                                      store_size=False))
    return len(lz4.block.compress(data, acceleration=max(1, -level), store_size=False))


CODECS = [("deflate", 1), ("deflate", 9), ("zlib", 1), ("zlib", 6), ("gzip", 1), ("zstd", 1),
          ("zstd", -3), ("zstd", 19), ("lz4", 1), ("lz4", -4), ("lz4", 9)]


@pytest.mark.parametrize(("compressor", "level"), CODECS)
def test_joint_lengths_equal_compressing_each_concatenation(texts, compressor, level):
    codec = Codec(compressor, level)
    x, targets = texts[0], texts[1:]
    expected = [naive_length(compressor, level, x + t) for t in targets]
    assert codec.joint_lengths(x, targets).tolist() == expected
    assert codec.length(x) == naive_length(compressor, level, x)


@pytest.mark.parametrize("container", ["zlib", "gzip"])
def test_containers_are_raw_deflate_plus_a_constant(texts, container):
    raw, wrapped = Codec("deflate", 1), Codec(container, 1)
    offsets = {wrapped.length(t) - raw.length(t) for t in texts}
    assert offsets == {6 if container == "zlib" else 18}


def test_conditional_lengths_compress_the_target_with_x_as_dictionary(texts):
    x, targets = texts[1], texts[2:6]
    codec = Codec("zstd", -3)
    dictionary = zstandard.ZstdCompressionDict(x, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    with_x = zstandard.ZstdCompressor(level=-3, dict_data=dictionary, write_checksum=False,
                                      write_content_size=False, write_dict_id=False)
    empty = naive_length("zstd", -3, b"")
    expected = [codec.length(x) + len(with_x.compress(t)) - empty for t in targets]
    assert codec.conditional_lengths(x, targets, codec.length(x)).tolist() == expected

    deflate = Codec("deflate", 1)
    expected = []
    for t in targets:
        c = zlib.compressobj(1, wbits=-15, zdict=x)
        expected.append(deflate.length(x) + len(c.compress(t) + c.flush()) - deflate.length(b""))
    assert deflate.conditional_lengths(x, targets, deflate.length(x)).tolist() == expected


def test_conditional_lengths_track_joint_lengths(texts):
    """The fast approximation stays close to the exact joint length on real text."""
    codec = Codec("zstd", 1)
    x, targets = texts[3], texts[:3] + texts[4:-1]
    joint = codec.joint_lengths(x, targets)
    approx = codec.conditional_lengths(x, targets, codec.length(x))
    assert np.corrcoef(joint, approx)[0, 1] > 0.95
    assert np.all(np.abs(approx - joint) < 0.15 * joint)


def test_codec_pickles_and_works_after(texts):
    codec = Codec("zstd", 3)
    codec.length(texts[0])  # builds a thread-local compressor, which must not be pickled
    clone = pickle.loads(pickle.dumps(codec))
    assert clone == codec and clone.length(texts[0]) == codec.length(texts[0])


@pytest.mark.parametrize("compressor", ["deflate", "zlib", "gzip", "zstd", "lz4"])
def test_level_zero_is_refused_with_the_reason(compressor):
    with pytest.raises(InputError, match="level 0 is refused") as info:
        Codec(compressor, 0)
    assert info.value.field == "level"


@pytest.mark.parametrize(("compressor", "level", "message"), [
    ("gzip", 10, "levels are 1..9"), ("zlib", -1, "levels are 1..9"),
    ("zstd", 23, "zstd levels"), ("lz4", 13, "lz4 levels"), ("brotli", 1, "unknown compressor"),
    ("zstd", 1.5, "must be an integer"), ("zstd", True, "must be an integer"),
])
def test_bad_settings_are_refused(compressor, level, message):
    with pytest.raises(InputError, match=message):
        Codec(compressor, level)
