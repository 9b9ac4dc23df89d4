"""ZIP-FIT: embedding-free selection by compression-based alignment with the target.

A candidate x is scored by its alignment with the target set T,

    score(x) = 1 − mean over t ∈ T of NCD(x, t),
    NCD(x, t) = (C(x ⊕ t) − min(C(x), C(t))) / max(C(x), C(t)),

with C the compressed length in bytes and ⊕ concatenation, x first (the paper's order:
priming with the target first measured lower precision). Higher = closer to the target;
selection takes the top k.

Two modes, both streaming candidates partition by partition with the target sample held
once per worker (it is part of the fitted state), never a list of (x, t) pairs:

* ``exact`` compresses every concatenation x ⊕ t, so it equals the formula for the chosen
  compressor and level (tested against a naive implementation). C(x) and every C(t) are
  computed once. Cost: |pool| × |target sample| compressions of both texts.
* ``fast`` replaces C(x ⊕ t) by C(x) + C(t | x) − C(∅): t compressed alone with x as a
  preset dictionary (``Codec.conditional_lengths``), with zstd at a fast level. Each pair
  then compresses only the target's bytes, in one native call per candidate. It is an
  approximation of exact mode, and its precision is reported next to exact mode's in
  ``benchmarks/RESULTS.md``.

Cost grows with the target size, so the target is cut to a seeded sample of
``target_sample`` documents (by id, independent of file order); the fit records how many
target documents there were and how many were kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from dataselect import checks
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import Runner, default_runner
from dataselect.sampling import bottom_k
from dataselect.scoring import Scorer
from scorers.zipfit.compressors import Codec, slower_levels

Mode = Literal["exact", "fast"]
MODES = ("exact", "fast")
# chosen by measurement on the benchmark tasks (README, "ZIP-FIT settings")
DEFAULT_CODECS: dict[str, tuple[str, int]] = {"exact": ("deflate", 1), "fast": ("zstd", -15)}
DEFAULT_LEVELS = {"deflate": 1, "zlib": 1, "gzip": 1, "zstd": 1, "lz4": 1}


@dataclass
class ZipFit(Scorer):
    """Compression alignment with the target. Score = 1 − mean NCD (higher = closer)."""

    name: ClassVar[str] = "zipfit"

    # fast by default: 4-8x faster than exact on a newcomer's pool, with precision within
    # 0.03 of it on the benchmark tasks; exact (the reference's formula) is -p mode=exact
    mode: Mode = "fast"
    compressor: str | None = None
    level: int | None = None
    target_sample: int | None = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}", field="mode")
        checks.optional(checks.check_count, self.target_sample, "target_sample")
        # levels reach zlib, zstd and lz4 as C ints (lz4 overflowed past -2**31 when scoring);
        # Codec checks each compressor's own range
        checks.optional(checks.check_int, self.level, "level", minimum=-checks.C_INT_MAX,
                        maximum=checks.C_INT_MAX)
        checks.check_seed(self.seed)
        self.codec = Codec(*self.resolved_codec())
        self.targets_: list[bytes] | None = None
        self.target_lengths_: np.ndarray | None = None
        self.fit_stats_: dict[str, Any] = {}

    def resolved_codec(self) -> tuple[str, int]:
        """(compressor, level) after filling in the mode's defaults."""
        if self.compressor is None:
            compressor, level = DEFAULT_CODECS[self.mode]
            return compressor, level if self.level is None else self.level
        level = DEFAULT_LEVELS.get(self.compressor, 1) if self.level is None else self.level
        return self.compressor, level

    @property
    def local_workers(self) -> str:
        # zlib, zstd and lz4 release the GIL while they compress; the Python loop around
        # them is a few percent of the time, so threads scale and share the target once
        return "threads"

    def config(self) -> dict[str, Any]:
        # the codec scored with: after fit, fast mode's fallback level when it took one
        return {**asdict(self), "compressor": self.codec.compressor, "level": self.codec.level}

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> ZipFit:
        """Draw the target sample and compress each of its documents once."""
        cap = self.target_sample
        chosen, total = None, 0
        for table in target.iter_tables():
            view = target.scoring_view(table)
            total += view.num_rows
            if chosen is not None:
                view = pa.concat_tables([chosen, view])
            # folded table by table, so a large target is never held whole
            chosen = bottom_k(view, cap, self.seed) if cap is not None else view
        where = ", ".join(target.files)
        if chosen is None or chosen.num_rows == 0:
            raise EmptyCorpusError("target holds no records", where=where)
        texts = [text.encode("utf-8") for text in chosen["text"].to_pylist()]
        if not any(texts):
            raise EmptyCorpusError("every target text is empty", where=where)
        raw_bytes = sum(len(t) for t in texts)
        self.codec, lengths, notes = self._compressing_codec(texts, raw_bytes, where)
        self.targets_, self.target_lengths_ = texts, lengths
        digest = hashlib.sha256(repr(self.config()).encode())
        for text in texts:
            digest.update(len(text).to_bytes(8, "little"))
            digest.update(text)
        self.fingerprint_ = digest.hexdigest()[:16]
        self.fit_stats_ = {
            "target_rows": int(total), "target_rows_used": len(texts),
            "target_sample_cap": cap, "target_sample_seed": self.seed,
            "compressor": self.codec.compressor, "level": self.codec.level,
            "target_bytes": raw_bytes, "target_compressed_bytes": int(lengths.sum()),
            **({"notes": notes} if notes else {}),
        }
        return self

    def _compressing_codec(self, texts: list[bytes], raw_bytes: int, where: str
                           ) -> tuple[Codec, np.ndarray, list[str]]:
        """The codec to score with, the target's compressed lengths, and notes.

        NCD on lengths that do not shrink only ranks by length, so a target the codec
        cannot compress is refused, except in fast mode with no level given: fast mode is
        an approximation whose level was chosen for speed, so it moves to the fastest
        slower level that compresses (short chat records do not shrink at zstd −15) and
        says so. Exact mode, or a level the user set, is what they asked for: refused."""
        compressor, first = self.resolved_codec()
        may_fall_back = self.mode == "fast" and self.level is None
        tried = slower_levels(compressor, first) if may_fall_back else [first]
        sizes: list[int] = []
        for level in tried:
            codec = Codec(compressor, level)
            lengths = codec.lengths(texts)
            sizes.append(int(lengths.sum()))
            if sizes[-1] < raw_bytes:
                notes = [] if level == first else [
                    f"ZIP-FIT fast: {compressor} level {first} does not compress the target "
                    f"({raw_bytes} bytes -> {sizes[0]}); scoring with level {level}, the "
                    "fastest level that does"]
                return codec, lengths, notes
        if len(tried) == 1:
            hint = ("; leave level unset and fast mode picks the fastest level that "
                    "compresses" if self.mode == "fast" else "")
            what = f"level {first} does not compress the target ({raw_bytes} bytes -> {sizes[0]})"
        else:
            hint = ""
            tries = ", ".join(f"{lv}: {n}" for lv, n in zip(tried, sizes))
            what = (f"levels {tried[0]} to {tried[-1]} do not compress the target ({raw_bytes} "
                    f"bytes -> {tries})")
        raise InputError(f"{compressor} {what}; NCD on uncompressed lengths only ranks by "
                         f"length. Choose another compressor or level{hint}",
                         where=where, field="level")

    def score_batch(self, batch: pa.Table) -> pa.Table:
        if self.targets_ is None or self.target_lengths_ is None:
            raise RuntimeError("ZipFit.score_batch called before fit")
        targets, target_lengths = self.targets_, self.target_lengths_
        exact = self.mode == "exact"
        joint = np.empty((batch.num_rows, len(targets)), np.int64)
        own_lengths = np.empty(batch.num_rows, np.int64)
        for row, text in enumerate(batch["text"].to_pylist()):
            x = text.encode("utf-8")
            own_lengths[row] = x_length = self.codec.length(x)
            joint[row] = (self.codec.joint_lengths(x, targets) if exact
                          else self.codec.conditional_lengths(x, targets, x_length))
        # one vectorised pass for the whole batch keeps the per-document Python work small
        scores = 1.0 - ncd(own_lengths[:, None], target_lengths[None, :], joint).mean(axis=1)
        return pa.table({"id": batch["id"], "score": scores, "compressed_bytes": own_lengths})


def ncd(x_lengths: Any, target_lengths: np.ndarray, joint_lengths: np.ndarray) -> np.ndarray:
    """Normalized compression distance; arguments broadcast (candidates × targets)."""
    smaller = np.minimum(x_lengths, target_lengths)
    larger = np.maximum(np.maximum(x_lengths, target_lengths), 1)
    return (joint_lengths - smaller) / larger
