"""Probe 10 faults (fix10d): models that compute nothing (g05), a fastText model with NaN
weights (g15), and an address-space limit too small for the native libraries (g12)."""
# the fixtures tiny_lm and given_model are imported, then taken as arguments:
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, POOL_GLOB, TARGETS
from fault_helpers import dsir_select, private_fingerprint_cache, refused_run  # noqa: F401
from test_fasttext import given_model  # noqa: F401
from test_fault_probe_r import tiny_lm  # noqa: F401

from dataselect.errors import InputError

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------- g05: a model computing nothing


def _edited_config(tiny_lm: Path, tmp_path: Path, **settings: object) -> Path:
    model = tmp_path / "m"
    shutil.copytree(tiny_lm, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **settings}))
    return model


@pytest.mark.parametrize(("field", "value"), [
    ("rms_norm_eps", 1e39), ("rms_norm_eps", 1e308), ("rope_theta", -4e38),
    ("rope_scaling", {"rope_type": "linear", "factor": 1e300})])
def test_a_config_float_beyond_float32_is_refused(
        tiny_lm: Path, tmp_path: Path, field: str, value: object) -> None:
    """Finite in JSON, infinite in the float32 the model runs in: rms_norm_eps 1e39 made
    every hidden state zero, every embed score 0.0, with exit 0."""
    from models.lm import check_model_folder

    model = _edited_config(tiny_lm, tmp_path, **{field: value})
    with pytest.raises(InputError, match=rf"config\.json: {field}\S* = .* beyond float32"):
        check_model_folder(str(model), "model")


def test_a_config_float_within_float32_is_kept(tiny_lm: Path, tmp_path: Path) -> None:
    from models.lm import check_model_folder

    check_model_folder(str(_edited_config(tiny_lm, tmp_path, rms_norm_eps=3e38)), "model")


def _zero_final_norm(tiny_lm: Path, tmp_path: Path) -> Path:
    from safetensors.torch import load_file, save_file

    model = tmp_path / "m_norm"
    shutil.copytree(tiny_lm, model)
    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"].zero_()
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return model


def test_embed_with_a_model_computing_nothing_is_refused_naming_it(
        tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A checkpoint with a zeroed final norm weight: every embedding zero, every score 0.0
    and an arbitrary pick, with exit 0."""
    model = _zero_final_norm(tiny_lm, tmp_path)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(list((DATA / "instructions" / "train.jsonl").open())[:20]))
    refused_run(["select", "--scorer", "embed", "-p", f"model={model}", "--pool", str(pool),
                 "--target", str(DATA / "instructions" / "targets" / "code.jsonl"),
                 "--text-field", "messages", "--k", "5", "--workers", "1",
                 "--worker-kind", "threads", "--out", str(tmp_path / "out")], capsys,
                str(model), "computes nothing")
    assert not (tmp_path / "out" / ".manifest.json").exists()


def test_every_model_load_refuses_a_model_computing_nothing(
        tiny_lm: Path, tmp_path: Path) -> None:
    """load_causal_lm serves embed, LESS, BADS, eval and the warmup: BADS's losses were all
    log(vocabulary) and LESS's gradients all zero with such a model."""
    import torch

    from models.lm import load_causal_lm

    model = _zero_final_norm(tiny_lm, tmp_path)
    with pytest.raises(InputError, match="computes nothing from its input: its last hidden "
                                         "state is zero") as info:
        load_causal_lm(str(model), torch.device("cpu"))
    assert str(model) in str(info.value)
    load_causal_lm(str(tiny_lm), torch.device("cpu"))  # a working model loads


def test_zero_vectors_of_rows_with_input_are_refused() -> None:
    """A row without input (an empty text, no response tokens) keeps its zero vector;
    a row with input never has one from a working model (embed, LESS per checkpoint)."""
    from dataselect.features import model_unit_rows

    rows = model_unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]), "m", inputs=[True, False])
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(InputError, match=r"m: the model computed all-zero vectors for 1 of "
                                         r"these 2 rows with text"):
        model_unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]), "m", inputs=[True, True])
    views = np.array([[[1.0, 0.0], [0.0, 0.0]]])  # (rows, checkpoints, dim): one view zero
    with pytest.raises(InputError, match=r"\(with its LoRA checkpoints\) computed all-zero"):
        model_unit_rows(views, "m", checkpoints=" (with its LoRA checkpoints)", inputs=[True])


# ------------------------------------------------- g15: a fastText model computing NaN


def _non_finite_model(given_model: Path, tmp_path: Path, value: float) -> Path:
    """``given_model`` with its output matrix (2 labels x dim 16, the file's end) set to
    ``value``: the same size, so it passes the truncation check."""
    data = bytearray(given_model.read_bytes())
    data[-128:] = np.full(32, value, np.float32).tobytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_fasttext_model_with_non_finite_weights_is_one_line(
        given_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        value: float) -> None:
    """It loaded, and every worker's predict raised "RuntimeError: Encountered NaN."."""
    bad = _non_finite_model(given_model, tmp_path, value)
    refused_run(["select", "--scorer", "fasttext", "-p", f"model={bad}", "-p", "label=hq",
                 "--pool", str(DATA / "pool"), "--target", str(TARGETS / "python_docs.jsonl"),
                 "--out", str(tmp_path / "out"), "--k", "5", "--workers", "1",
                 "--worker-kind", "threads"], capsys, str(bad), "NaN or infinite weights")
    assert not (tmp_path / "out" / ".manifest.json").exists()


def test_nan_at_fasttext_predict_is_one_line(
        given_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quantized model's weights are not read ahead: its NaN meets predict."""
    import pyarrow as pa

    import scorers.fasttext.scorer as fasttext_scorer
    from dataselect import read_corpus
    from scorers import FastText

    class Diverged:
        def predict(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("Encountered NaN.")

    scorer = FastText(model=str(given_model), label="hq").fit(read_corpus(POOL_GLOB))
    monkeypatch.setattr(fasttext_scorer.FastText, "_model", lambda self: Diverged())
    with pytest.raises(InputError, match="NaN or infinite weights") as info:
        scorer.score_batch(pa.table({"id": ["a"], "text": ["some text"]}))
    assert str(given_model) in str(info.value)


def test_a_trained_fasttext_model_with_nan_weights_names_lr(
        given_model: Path, tmp_path: Path) -> None:
    import scorers.fasttext.scorer as fasttext_scorer

    bad = _non_finite_model(given_model, tmp_path, np.nan)
    with pytest.raises(InputError, match=r"field 'lr'.*training diverged\); lower lr"):
        fasttext_scorer._load(str(bad), trained=True)


# ------------------------------------------- g12: an address-space limit too small to run


def test_an_address_space_limit_is_checked_by_every_cli_entry(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """``pipelines.cli.main`` itself (``python -m pipelines.cli``, a program calling it),
    not only the console script, refuses a limit below the native libraries' floor."""
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (2**30, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which)))
    pool = tmp_path / "pool.parquet"
    refused_run(dsir_select(pool, tmp_path / "out"), capsys,
                "address-space limit (ulimit -v) is 1024 MiB", "needs at least")
    assert not (tmp_path / "out").exists()


def test_python_m_pipelines_cli_under_ulimit_v_is_one_line(tmp_path: Path) -> None:
    """Under ulimit -v 1000000 (KiB) a DSIR select run as ``python -m pipelines.cli``
    aborted in Polars' allocator (exit 134) or exited in OpenBLAS."""
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1000000 * 1024, 1000000 * 1024))

    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *dsir_select(DATA / "pool", tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=set_limit,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "ulimit -v) is 976 MiB" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_malloc_arenas_are_capped_only_under_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from dataselect import errors

    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, parameter: int, value: int) -> int:
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    real = resource.getrlimit
    errors.cap_arenas_under_limit()  # no limit: nothing changes
    assert "MALLOC_ARENA_MAX" not in os.environ and not calls
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (5 * 2**30, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which)))
    errors.cap_arenas_under_limit()
    assert os.environ["MALLOC_ARENA_MAX"] == "8" and calls == [(-8, 8)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "64")  # the user's own choice is kept
    errors.cap_arenas_under_limit()
    assert os.environ["MALLOC_ARENA_MAX"] == "64" and len(calls) == 1


def test_a_4_gib_limit_holds_with_the_arenas_of_many_cores(tmp_path: Path) -> None:
    """glibc allows 8 malloc arenas per core, each reserving 64 MiB: emulating 64 cores
    (512 arenas, 64 threads per pool), a DSIR job under ulimit -v 4 GiB, which passes the
    floor, aborted in Polars' allocator (exit 134); with the arenas capped it finishes."""
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    many = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=512", "POLARS_MAX_THREADS": "64",
            "OPENBLAS_NUM_THREADS": "64", "OMP_NUM_THREADS": "64"}
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    pool = tmp_path / "pool.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 60), pool)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *dsir_select(pool, tmp_path / "out", k=5)],
        env={**environ, **many, "PYTHONPATH": str(ROOT)}, preexec_fn=set_limit,
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
