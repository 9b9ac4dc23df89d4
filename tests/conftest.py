"""Shared fixtures: paths to the shipped real sample data and small file writers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
POOL_GLOB = str(DATA / "pool" / "*.parquet")
TARGETS = DATA / "targets"


def write_jsonl(path: Path, records: list, compress: str | None = None) -> Path:
    """Write records (dicts, or raw strings written as-is) one per line."""
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    data = lines.encode()
    if compress == "gz":
        data = gzip.compress(data, mtime=0)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def pool_table() -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((DATA / "pool").glob("*.parquet")))


@pytest.fixture
def small_records(pool_table: pa.Table) -> list[dict]:
    """60 real documents from the shipped pool, several domains."""
    return pool_table.slice(0, 60).select(["id", "text", "domain"]).to_pylist()
