"""Cut the small committed sample under data/ from the full real-text corpus.

Why this exists: tests, examples and quick benchmarks need real multi-domain text with
known ground truth, but the full corpus (about 94k documents, 64 MB) is too big to commit
and depends on which Debian packages a machine has installed. This script draws, once
and deterministically, a small pool of documents from every domain plus held-out target
samples for a few domains, so a data-selection method can be scored by how many pool
documents of the target's domain it picks.

Outputs (relative to --out, default: the folder holding this script):

* ``pool/part-00000.parquet`` .. ``pool/part-0000{N-1}.parquet``: the pool, rows shuffled
  across files, columns exactly as in the corpus (id, text, domain, lang, source).
* ``targets/<domain>.jsonl``: held-out documents of each target domain, none of them in
  the pool; one JSON object per line with keys domain, id, text.

Rerun (from the repository root), on a corpus Parquet file that a corpus builder outside
this repository made from the text these Debian packages install (see data/README.md)::

    sudo apt-get install -y python3.11-doc manpages manpages-dev wordnet-base fortunes
    python3 data/make_sample.py --corpus CORPUS.parquet --seed 0

Rows are sorted by id before any sampling and every draw uses a seeded
``random.Random``, so the output depends only on the corpus contents and the seed, not on
row order. Needs only the standard library and pyarrow.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ["id", "text", "domain", "lang", "source"]
TARGET_DOMAINS = ["python_docs", "fortunes", "licenses"]
DEFAULT_PER_DOMAIN = 440
DEFAULT_TARGET_SIZE = 100
DEFAULT_NUM_FILES = 4


def load_corpus(path: Path) -> pa.Table:
    """Read the corpus columns and sort rows by id so sampling ignores file order."""
    table = pq.read_table(path, columns=COLUMNS)
    return table.sort_by("id")


def rows_by_domain(table: pa.Table) -> dict[str, list[int]]:
    """Map each domain to the row indices (ascending, i.e. in id order) of its documents."""
    groups: dict[str, list[int]] = {}
    for i, domain in enumerate(table.column("domain").to_pylist()):
        groups.setdefault(domain, []).append(i)
    return groups


def split_domain(
    rows: list[int], domain: str, seed: int, pool_size: int, target_size: int
) -> tuple[list[int], list[int]]:
    """Draw disjoint (pool, target) row lists for one domain with its own seeded RNG."""
    need = pool_size + target_size
    if len(rows) < need:
        raise SystemExit(f"{domain}: only {len(rows)} documents, need {need}")
    picked = random.Random(f"{seed}:{domain}").sample(rows, need)
    return picked[target_size:], sorted(picked[:target_size])


def check_disjoint(table: pa.Table, pool: list[int], targets: dict[str, list[int]]) -> None:
    """Fail if any held-out text also occurs in the pool (ids differ across domains)."""
    texts = table.column("text").to_pylist()
    pool_texts = {texts[i] for i in pool}
    for domain, rows in targets.items():
        leaked = sum(texts[i] in pool_texts for i in rows)
        if leaked:
            raise SystemExit(f"{domain}: {leaked} target texts also occur in the pool")


def split_even(items: list[int], parts: int) -> list[list[int]]:
    """Split items into `parts` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        chunks.append(items[start:end])
        start = end
    return chunks


def write_pool(table: pa.Table, pool: list[int], out_dir: Path, seed: int, files: int) -> None:
    """Shuffle the pool rows (seeded) and write them as `files` zstd Parquet parts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("part-*.parquet"):
        stale.unlink()
    rows = sorted(pool)
    random.Random(f"{seed}:shuffle").shuffle(rows)
    for k, chunk in enumerate(split_even(rows, files)):
        part = table.take(pa.array(chunk, type=pa.int64()))
        pq.write_table(part, out_dir / f"part-{k:05d}.parquet", compression="zstd")


def write_targets(table: pa.Table, targets: dict[str, list[int]], out_dir: Path) -> None:
    """Write each target domain's held-out rows as JSON lines (id, text, domain)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    for domain, rows in targets.items():
        with open(out_dir / f"{domain}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for i in rows:
                record = {"id": ids[i], "text": texts[i], "domain": domain}
                f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", type=Path, required=True, help="corpus .parquet to sample")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="output folder"
    )
    ap.add_argument("--per-domain", type=int, default=DEFAULT_PER_DOMAIN, help="pool docs/domain")
    ap.add_argument("--target-size", type=int, default=DEFAULT_TARGET_SIZE, help="held-out docs")
    ap.add_argument("--files", type=int, default=DEFAULT_NUM_FILES, help="pool Parquet parts")
    ap.add_argument(
        "--targets", default=",".join(TARGET_DOMAINS), help="comma-separated target domains"
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    table = load_corpus(args.corpus)
    target_domains = [d for d in args.targets.split(",") if d]
    pool: list[int] = []
    targets: dict[str, list[int]] = {}
    for domain, rows in sorted(rows_by_domain(table).items()):
        held = args.target_size if domain in target_domains else 0
        domain_pool, domain_targets = split_domain(rows, domain, args.seed, args.per_domain, held)
        pool.extend(domain_pool)
        if held:
            targets[domain] = domain_targets
        print(f"{domain}: pool {len(domain_pool)}, target {len(domain_targets)}", file=sys.stderr)
    missing = sorted(set(target_domains) - set(targets))
    if missing:
        raise SystemExit(f"target domains not in corpus: {', '.join(missing)}")
    check_disjoint(table, pool, targets)
    write_pool(table, pool, args.out / "pool", args.seed, args.files)
    write_targets(table, targets, args.out / "targets")
    print(f"wrote {len(pool)} pool rows in {args.files} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
