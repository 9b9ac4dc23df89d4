"""fastText scorer: a deterministic target-vs-pool classifier, a given model scored as the
library scores it, and clear errors for bad model files."""

from __future__ import annotations

import hashlib
import json
import os

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl

import scorers.fasttext.scorer as fasttext_scorer
from dataselect import read_corpus, select
from dataselect.errors import InputError
from dataselect.metrics import domain_precision
from pipelines.cli import main
from scorers import FastText
from scorers.fasttext.scorer import normalize_texts


@pytest.fixture(scope="module")
def given_model(tmp_path_factory, pool_table):
    """A real supervised model (python_docs = hq, everything else = lq), trained here."""
    folder = tmp_path_factory.mktemp("model")
    rows = pool_table.take(list(range(0, 3960, 4)))
    lines = [f"__label__{'hq' if d == 'python_docs' else 'lq'} {t}" for d, t in
             zip(rows["domain"].to_pylist(),
                 normalize_texts(rows["text"]).to_pylist())]
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    # trained in a fresh process: in this one, fastText's one-thread init is not reliable
    fasttext_scorer.TrainingProcess(
        str(folder / "train.txt"), str(folder / "quality.bin"),
        {"epoch": 25, "lr": 0.2, "dim": 16, "bucket": 1000, "wordNgrams": 1, "thread": 1,
         "verbose": 0}, str(folder / "stderr.txt")).wait()
    return folder / "quality.bin"


def test_normalize_texts_makes_one_trimmed_line():
    texts = pa.array(["  Hello\n\nWorld\t!\r\n", "A\u000bB\fC\x00D", ""])
    assert normalize_texts(texts).to_pylist() == ["Hello World !", "A B C D", ""]
    assert normalize_texts(texts, lowercase=True).to_pylist()[0] == "hello world !"


@pytest.mark.slow
def test_training_is_deterministic_given_the_seed():
    """Trained twice in one process: identical model bytes (fastText leaves most of its
    input matrix uninitialised with one thread; see TrainingProcess)."""
    pool, target = read_corpus(POOL_GLOB), read_corpus(str(TARGETS / "licenses.jsonl"))
    first = FastText(negatives=300, epoch=5).fit(target, pool)
    second = FastText(negatives=300, epoch=5).fit(target, pool)
    other = FastText(negatives=300, epoch=5, seed=1).fit(target, pool)
    digest = lambda s: hashlib.sha256(s.model_bytes_).hexdigest()  # noqa: E731
    assert digest(first) == digest(second)
    assert digest(first) != digest(other)
    assert first.fit_stats_["positives"] == 100 and first.fit_stats_["negatives"] == 300
    scores = [s.score(pool).partition(1)["score"].to_numpy() for s in (first, second)]
    np.testing.assert_array_equal(*scores)
    assert np.all((scores[0] >= 0) & (scores[0] <= 1))


@pytest.mark.slow
def test_fits_started_together_train_the_models_of_fits_alone():
    """``start_fit`` trains in the background (auto overlaps its refit with it): two models
    training at once, each in its own process, are those ``fit`` trains one at a time."""
    pool, target = read_corpus(POOL_GLOB), read_corpus(str(TARGETS / "licenses.jsonl"))
    alone = [FastText(negatives=300, epoch=5, seed=s).fit(target, pool).model_bytes_
             for s in (0, 1)]
    started = [FastText(negatives=300, epoch=5, seed=s).start_fit(target, pool) for s in (0, 1)]
    assert [training.wait().model_bytes_ for training in started] == alone
    assert not any(os.path.exists(training.folder.name) for training in started)


def test_a_failed_training_names_its_error_and_leaves_nothing_running():
    pool, target = read_corpus(POOL_GLOB), read_corpus(str(TARGETS / "fortunes.jsonl"))
    training = FastText(negatives=50, epoch=1, lr=1e30).start_fit(target, pool)
    with pytest.raises(InputError, match=r"fastText training failed: .*NaN.*lower lr"):
        training.wait()
    assert training.process._process.poll() is not None
    assert not os.path.exists(training.folder.name)


def test_an_abandoned_training_is_stopped():
    pool, target = read_corpus(POOL_GLOB), read_corpus(str(TARGETS / "fortunes.jsonl"))
    with FastText(negatives=50, epoch=1000).start_fit(target, pool) as training:
        assert training.process._process.poll() is None  # still training
    assert training.process._process.poll() is not None
    assert not os.path.exists(training.folder.name)


@pytest.mark.slow
def test_negative_sample_does_not_depend_on_partitioning(tmp_path, pool_table):
    rows = pool_table.slice(0, 400).select(["id", "text"]).to_pylist()
    one = read_corpus(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    many = read_corpus(str(write_jsonl(tmp_path / "b.jsonl", rows[::-1])), partition_bytes=20_000)
    assert many.npartitions > 3
    target = read_corpus(str(TARGETS / "fortunes.jsonl"))
    a = FastText(negatives=50, epoch=2).fit(target, one)
    b = FastText(negatives=50, epoch=2).fit(target, many)
    assert a.model_bytes_ == b.model_bytes_


@pytest.mark.slow
def test_trained_classifier_recovers_the_target_domain(tmp_path):
    pool, target = read_corpus(POOL_GLOB), read_corpus(str(TARGETS / "fortunes.jsonl"))
    scorer = FastText().fit(target, pool)
    select.top_k(pool, scorer.score(pool), 440).write(str(tmp_path / "out"))
    picked = pq.read_table(tmp_path / "out").column("domain").to_pylist()
    assert domain_precision(picked, "fortunes") > 0.7  # chance: 0.11


@pytest.mark.slow
@pytest.mark.parametrize("label", ["hq", "__label__hq"])
def test_given_model_scores_equal_the_library_prediction(given_model, label):
    pool = read_corpus(POOL_GLOB)
    scorer = FastText(model=str(given_model), label=label).fit(read_corpus(POOL_GLOB))
    table = pool.read_partition(0)
    scores = scorer.score(pool).partition(0)["score"].to_numpy()
    model = fasttext.load_model(str(given_model))
    texts = normalize_texts(pool.texts(table)).to_pylist()
    expected = []
    for text in texts:
        labels, probs = model.predict(text, k=2)
        expected.append(min(1.0, dict(zip(labels, probs))["__label__hq"]))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    domains = table["domain"].to_numpy(zero_copy_only=False)
    assert scores[domains == "python_docs"].mean() > scores[domains != "python_docs"].mean()


def test_given_model_is_loaded_once_per_process(given_model, monkeypatch):
    pool = read_corpus(POOL_GLOB)
    scorer = FastText(model=str(given_model), label="hq").fit(read_corpus(POOL_GLOB))
    loads = []
    real_load = fasttext_scorer._load
    monkeypatch.setattr(fasttext_scorer, "_load", lambda p: loads.append(p) or real_load(p))
    monkeypatch.setattr(fasttext_scorer, "_MODELS", {})
    for index in range(pool.npartitions):
        scorer.score(pool).partition(index)
    assert loads == [str(given_model)]


def test_missing_model_is_an_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(InputError, match="model file not found") as info:
        FastText(model=str(missing), label="hq").fit(read_corpus(POOL_GLOB))
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_model_is_an_error_naming_the_file(tmp_path, given_model, damage):
    bad = tmp_path / "bad.bin"
    data = given_model.read_bytes()
    bad.write_bytes(b"not a model at all" * 10 if damage == "garbage" else data[:-40])
    with pytest.raises(InputError, match=r"fastText model|truncated") as info:
        FastText(model=str(bad), label="hq").fit(read_corpus(POOL_GLOB))
    assert str(bad) in str(info.value)


def test_unknown_label_lists_the_model_labels(given_model):
    with pytest.raises(InputError, match=r"has no label 'spam'; it has: (hq, lq|lq, hq)"):
        FastText(model=str(given_model), label="spam").fit(read_corpus(POOL_GLOB))


@pytest.mark.parametrize(("params", "message"), [
    ({"label": "hq"}, "label is for a given model"),
    ({"model": "m.bin"}, "needs label"),
    ({"negatives": 0}, "negatives"), ({"dim": 0}, "dim"),
])
def test_bad_settings_are_refused(params, message):
    with pytest.raises(InputError, match=message):
        FastText(**params)


@pytest.mark.slow
def test_cli_scores_with_a_given_model_on_process_workers(tmp_path, given_model):
    out = tmp_path / "out"
    code = main(["select", "--scorer", "fasttext", "--pool", POOL_GLOB,
                 "--target", str(TARGETS / "python_docs.jsonl"), "--k", "300", "--out",
                 str(out), "-p", f"model={given_model}", "-p", "label=hq", "--workers", "2"])
    assert code == 0
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["fit"]["label"] == "__label__hq"
    picked = pq.read_table(out).column("domain").to_pylist()
    assert domain_precision(picked, "python_docs") > 0.5


def test_cli_reports_a_missing_model_and_exits_2(tmp_path, capsys):
    code = main(["select", "--scorer", "fasttext", "--pool", POOL_GLOB,
                 "--target", str(TARGETS / "fortunes.jsonl"), "--k", "10", "--out",
                 str(tmp_path / "out"), "-p", f"model={tmp_path / 'none.bin'}",
                 "-p", "label=hq"])
    assert code == 2
    assert "none.bin" in capsys.readouterr().err


def test_pool_sample_matches_ids(pool_table):
    """The negatives are pool rows (ids drawn from the pool, no duplicates)."""
    from dataselect.sampling import bottom_k

    sample = bottom_k(pool_table.select(["id", "text"]), 25, seed=0)
    ids = sample["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 25
    assert set(ids) <= set(pool_table["id"].to_pylist())
    assert pc.all(pc.is_in(sample["id"], pool_table["id"])).as_py()
