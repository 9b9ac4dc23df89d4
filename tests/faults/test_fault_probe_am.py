"""Hostile pass 17: z-score moments at any scale (g17); fastText model headers (g21).

g17: a z-score combine does not depend on the scores' scale, yet a scorer whose distinct
scores were ~1e-200 was silently left out (its squared deviations underflowed to 0, the
spread read 0 and was replaced by 1, every z-score ~0), and scores of ~1e303 were refused
(their sum of squares overflowed). Moments are now taken in units of each partition's
largest power of two and merged in common units.

g21: a fastText model whose header fields were corrupt but whose size matched crashed the
process (dim 0: a heap overflow, SIGABRT; n-grams without buckets: SIGFPE), named no file
(dim -5: "out of memory") or read for two minutes (a dictionary of 2^30 entries). The file
is now walked as fastText reads it, before fastText loads it; quantized models too.
"""
# the fixture given_model is imported, then taken as an argument:
# ruff: noqa: F811

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl
from fault_helpers import combined_scores, private_fingerprint_cache  # noqa: F401
from scoring_helpers import FixedScorer
from test_fasttext import given_model  # noqa: F401

from dataselect import read_corpus, select
from dataselect.scoring import merge_moments, scaled_moments

# --- g17: z-score moments at any scale -----------------------------------------------------

SCALES = [1e-200, 1e-300, 1.0, 3e5, 1e303, -1e307]


def _reference(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std in extended precision (its exponent range holds 1e-400
    and 1e606), the naive way."""
    wide = values.astype(np.longdouble)
    mean = wide.mean()
    return float(mean), float(np.sqrt(((wide - mean) ** 2).mean()))


def _merged(values: np.ndarray, cuts: list[int]) -> tuple[float, float]:
    count, mean, squares, exponent = merge_moments(
        scaled_moments(part) for part in np.split(values, cuts))
    assert count == len(values)
    return math.ldexp(mean, exponent), math.ldexp(math.sqrt(squares / count), exponent)


@pytest.mark.skipif(np.finfo(np.longdouble).maxexp <= 1024,
                    reason="no extended-precision long double on this platform")
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("cuts", [[], [1], [3, 3, 50], [10, 20, 30, 40, 90], [99]])
def test_merged_scaled_moments_match_an_extended_precision_reference(scale, cuts):
    values = np.random.default_rng(17).normal(2.0, 1.5, 100) * scale
    mean, std = _merged(values, cuts)
    want_mean, want_std = _reference(values)
    assert std > 0
    assert mean == pytest.approx(want_mean, rel=1e-12)
    assert std == pytest.approx(want_std, rel=1e-12)


def test_parts_of_very_different_scales_merge():
    """One part of ~1, one of ~1e-250: the small one's squares underflow in the common
    units, as they are negligible there; the mean and spread are still right."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 50), rng.normal(0, 1, 50) * 1e-250])
    mean, std = _merged(values, [50])
    assert mean == pytest.approx(values[:50].sum() / 100, rel=1e-12)
    assert std == pytest.approx(float(np.sqrt((values ** 2).mean() - mean ** 2)), rel=1e-12)


def test_moments_of_an_earlier_version_are_still_merged():
    """Summaries of three numbers (count, mean, squares, unscaled) merge as exponent 0,
    alone or with new ones."""
    values = np.arange(10.0)
    old = (5, float(values[:5].mean()), float(((values[:5] - values[:5].mean()) ** 2).sum()))
    count, mean, squares, exponent = merge_moments([old, scaled_moments(values[5:])])
    assert count == 10
    assert math.ldexp(mean, exponent) == pytest.approx(4.5)
    assert math.ldexp(squares, 2 * exponent) == pytest.approx(82.5)
    assert merge_moments([old]) == (*old, 0)
    assert merge_moments([]) == (0, 0.0, 0.0, 0)


@pytest.mark.parametrize("value", [0.1, 1e-200, -7e303, 0.0])
def test_constant_scores_have_no_spread(value):
    """Scores all equal: mean exactly that value, spread exactly 0 (no rounding of a sum
    makes one), in every partitioning."""
    values = np.full(37, value)
    count, mean, squares, exponent = merge_moments(
        scaled_moments(p) for p in np.split(values, [5, 6, 20]))
    assert (count, squares) == (37, 0.0) and math.ldexp(mean, exponent) == value


def _pool(tmp_path):
    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(60)]
    return read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=400)


def _combined(pool, scale, constant=None):
    values = {f"u{i}": (constant if constant is not None else (i * 37 % 11 + 0.5) * scale)
              for i in range(60)}
    mine = FixedScorer(values, frozenset({"u3"}), label="mine").score(pool)
    other = FixedScorer({f"u{i}": float(i % 5) for i in range(60)}, frozenset(),
                        label="other").score(pool)
    return combined_scores(pool, select.combine([other, mine], method="zscore",
                                                weights=[1.0, 2.0]))


@pytest.mark.parametrize("scale", [1e-200, 1e-310, 1e303, -1e307])
def test_zscore_combine_does_not_depend_on_the_scale(tmp_path, scale):
    """The probe: scores of ~1e-200 combined as if absent (the selection was the other
    scorer's alone); ~1e303 was refused. Both now give the z-scores of scale 1 (or -1)."""
    pool = _pool(tmp_path)
    assert pool.npartitions > 2
    got = _combined(pool, scale)
    want = _combined(pool, math.copysign(1.0, scale))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("value", [5.0, 1e-200, 1e303])
def test_constant_scores_combine_as_zero(tmp_path, value):
    """A scorer whose scores are all equal adds z-scores of 0, not a division by zero:
    the combination is the other scorer's z-scores weighted 1/3."""
    pool = _pool(tmp_path)
    got = _combined(pool, 1.0, constant=value)
    other = np.array([float(i % 5) for i in range(60)])
    np.testing.assert_allclose(got, (other - other.mean()) / other.std() / 3,
                               rtol=0, atol=1e-12)


def test_unscaled_moments_that_overflow_are_refused_in_one_line(tmp_path):
    """Summaries of an earlier version (three numbers, unscaled) of scores of ~1e303 hold
    an infinite sum of squares: refused naming the scorer and the rank combine, not NaN
    z-scores."""
    from dataselect.errors import InputError
    from dataselect.execution import default_runner

    pool = _pool(tmp_path)
    big = FixedScorer({f"u{i}": 1e303 * (i % 7) for i in range(60)}, frozenset(),
                      label="big").score(pool).write(tmp_path / "s", default_runner)
    for summary in big.summaries:
        summary["moments"] = (summary["eligible"], 3e303, math.inf)
    other = FixedScorer({f"u{i}": float(i % 5) for i in range(60)}, frozenset()).score(pool)
    with pytest.raises(InputError, match=r"'fixed'.*too large.*method: rank") as caught:
        select.combine([other, big], method="zscore")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("scale", [1e-200, 1e303, -1e307])
def test_auto_standardises_candidates_at_any_scale(scale):
    """The same mistake in ``auto``: a candidate (a plug-in) scoring ~1e-200 had a spread
    of 0 on the validation sample, so its z-scores were ~0 and it could never be chosen
    or weigh in a mix; ~1e303 had an infinite mean."""
    from scorers.auto.validation import standardise

    reference = np.random.default_rng(21).normal(3.0, 2.0, 500)
    held_out = np.random.default_rng(22).normal(4.0, 1.0, 50)
    want = standardise(held_out, reference) * math.copysign(1.0, scale)
    np.testing.assert_allclose(standardise(held_out * scale, reference * scale), want,
                               rtol=0, atol=1e-12)


def test_mean_and_std_are_numpys_to_the_bit_for_ordinary_scores():
    """So an ``auto`` fit's scales, and its fingerprint, are those of earlier versions."""
    from dataselect.scoring import mean_and_std

    values = np.random.default_rng(5).normal(-7.0, 3.0, 10_001)
    assert mean_and_std(values) == (float(values.mean()), float(values.std()))
    assert mean_and_std(np.zeros(0)) == (0.0, 0.0)
    assert mean_and_std(np.full(9, 0.1)) == (float(np.full(9, 0.1).mean()), 0.0)

# --- g21: fastText model files whose header is corrupt ----------------------------------

ROOT = Path(__file__).resolve().parents[2]
# offsets in a model file: after magic and version, the 13 arguments, then the dictionary
DIM, WORD_NGRAMS, LOSS, MODEL, BUCKET, MAXN = 8, 28, 32, 36, 40, 48
SIZE, NWORDS = 64, 68
FIRST_ENTRY = 92


def _edited(model: Path, tmp_path: Path, name: str, edit) -> Path:
    data = bytearray(model.read_bytes())
    edit(data)
    bad = tmp_path / name
    bad.write_bytes(bytes(data))
    return bad


def _int32(offset: int, value: int):
    def edit(data: bytearray) -> None:
        data[offset:offset + 4] = struct.pack("<i", value)
    return edit


def _input_columns(value: int):
    """The input matrix's column count (its shape follows the dictionary; the given model,
    dim 16 with 2 labels, has no n-gram rows)."""
    def edit(data: bytearray) -> None:
        nwords = struct.unpack_from("<i", data, NWORDS)[0]
        at = len(data) - (1 + 16 + 4 * 2 * 16) - 4 * nwords * 16 - 8
        assert struct.unpack_from("<q", data, at) == (16,)
        data[at:at + 8] = struct.pack("<q", 8)
    return edit


def _entry_byte(offset: int, value: int):
    """A byte of the first dictionary entry's tail (``</s>``, NUL, count, type)."""
    def edit(data: bytearray) -> None:
        end = data.index(b"\0", FIRST_ENTRY)
        data[end + offset] = value
    return edit


EDITS = {
    "dim_zero": (_int32(DIM, 0), "dim 0"),
    "dim_negative": (_int32(DIM, -5), "dim -5"),
    "maxn_huge": (_int32(MAXN, 1000), "maxn 1000"),
    "maxn_without_buckets": (_int32(MAXN, 5), "maxn 5 needs n-gram buckets"),
    "word_ngrams_huge": (_int32(WORD_NGRAMS, 100_000), "wordNgrams 100000"),
    "word_ngrams_without_buckets": (_int32(WORD_NGRAMS, 2), "wordNgrams 2 needs n-gram"),
    "bucket_negative": (_int32(BUCKET, -3), "bucket -3"),
    "loss": (_int32(LOSS, 9), "loss 9"),
    "model": (_int32(MODEL, 0), "model type 0"),
    "magic": (_int32(0, 12345), "magic number"),
    "version": (_int32(4, 13), "format version 13"),
    "dictionary_size_huge": (_int32(SIZE, 1 << 30), "a dictionary of 1073741824 entries"),
    "dictionary_words_huge": (lambda d: (_int32(SIZE, (1 << 30) + 2)(d),
                                         _int32(NWORDS, 1 << 30)(d)), "needs at least"),
    "input_columns": (_input_columns(8), "input matrix is"),
    "entry_count_negative": (_entry_byte(8, 0xFF), "negative count"),
    "entry_type": (_entry_byte(9, 1), "dictionary entry 0 is of type 1"),
    "truncated": (lambda d: d.__delitem__(slice(-40, None)), "ends inside its output"),
    "trailing": (lambda d: d.extend(b"xx"), "2 bytes follow the end"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_fasttext_model_with_a_corrupt_header_is_one_line_naming_it(
        given_model, tmp_path, case):
    """Refused before fastText reads the file (which crashed on the first six), in one
    line naming the file and what is wrong."""
    from dataselect import read_corpus
    from dataselect.errors import InputError
    from scorers import FastText

    edit, what = EDITS[case]
    bad = _edited(given_model, tmp_path, f"{case}.bin", edit)
    with pytest.raises(InputError, match="not a readable fastText model") as caught:
        FastText(model=str(bad), label="hq").fit(read_corpus(POOL_GLOB))
    line = str(caught.value)
    assert str(bad) in line and what in line and "\n" not in line, line


def test_the_probe_model_with_dim_zero_exits_2(given_model, tmp_path):
    """The probe's case, run as the user did (a separate process: it aborted, rc 134)."""
    bad = _edited(given_model, tmp_path, "dim_zero.bin", _int32(DIM, 0))
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.console import main; "
         "sys.exit(main())", "select", "--scorer", "fasttext", "-p", f"model={bad}",
         "-p", "label=hq", "--pool", POOL_GLOB, "--target", str(TARGETS / "fortunes.jsonl"),
         "--k", "5", "--out", str(tmp_path / "o"), "--workers", "1",
         "--worker-kind", "threads"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(set(errors)) == 1 and str(bad) in errors[0] and "dim 0" in errors[0], errors


@pytest.fixture(scope="module")
def quantized_model(given_model, tmp_path_factory) -> Path:
    import fasttext

    model = fasttext.load_model(str(given_model))
    model.quantize(qnorm=True, retrain=False)
    path = tmp_path_factory.mktemp("ftz") / "quality.ftz"
    model.save_model(str(path))
    return path


def test_a_quantized_model_is_checked_as_well(quantized_model, tmp_path):
    """A quantized (``.ftz``) model scores; cut short or with bytes after its end it is
    refused. Before, both loaded without a word (the cut one scored garbage)."""
    from dataselect import read_corpus
    from dataselect.errors import InputError
    from scorers import FastText
    from scorers.fasttext.model_file import check_model_file

    pool = read_corpus(POOL_GLOB)
    assert check_model_file(str(quantized_model)).quantized
    scorer = FastText(model=str(quantized_model), label="hq").fit(pool)
    assert scorer.score(pool).partition(0).num_rows > 0
    for name, edit, what in [("cut.ftz", lambda d: d.__delitem__(slice(-40, None)),
                              "ends inside"),
                             ("more.ftz", lambda d: d.extend(b"xx"), "2 bytes follow"),
                             ("dim.ftz", _int32(DIM, 8), "where its header gives")]:
        bad = _edited(quantized_model, tmp_path, name, edit)
        with pytest.raises(InputError, match=what) as caught:
            FastText(model=str(bad), label="hq").fit(pool)
        assert str(bad) in str(caught.value)
