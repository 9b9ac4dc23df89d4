"""RDS+ embeddings: pooling against a hand loop, batch independence, the score rule, the
round-robin column, and selection quality on data/instructions."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import DATA

from dataselect import read_corpus
from dataselect.errors import InputError
from models.lm import load_causal_lm, load_tokenizer, model_view, tokenize
from scorers.embed import Embed, length_batches, pool_hidden_states

TASKS = ("code", "define", "summarize", "translate")
TARGETS = DATA / "instructions" / "targets"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory):
    rows = [json.loads(line) for line in (DATA / "instructions" / "train.jsonl").open()]
    random.Random(1).shuffle(rows)
    chosen = [r for task in TASKS for r in [r for r in rows if r["task"] == task][:40]]
    path = tmp_path_factory.mktemp("embed") / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return read_corpus(str(path), text="messages")


def _view(pool, rows: int | None = None) -> pa.Table:
    table = pool.read_partition(0)
    return pool.scoring_view(table if rows is None else table.slice(0, rows))


@pytest.mark.parametrize("pooling", ["position_weighted", "mean", "last"])
def test_pooling_equals_a_hand_loop_over_hidden_states(instruction_lm, pool, pooling) -> None:
    view = _view(pool, 4)
    ours = Embed(instruction_lm, pooling=pooling).embed(view)
    tokenizer = load_tokenizer(instruction_lm)
    model = load_causal_lm(instruction_lm, torch.device("cpu"))
    for row, text in enumerate(view["text"].to_pylist()):
        ids = tokenizer(text, truncation=True, max_length=512, return_tensors="pt").input_ids
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        n = states.shape[0]
        if pooling == "position_weighted":
            weights = torch.arange(1, n + 1, dtype=torch.float32) / (n * (n + 1) / 2)
            vector = (weights[:, None] * states).sum(0)
        elif pooling == "mean":
            vector = states.mean(0)
        else:
            vector = states[-1]
        expected = (vector / vector.norm()).numpy()
        np.testing.assert_allclose(ours[row], expected, atol=1e-4)


def test_a_rows_embedding_does_not_depend_on_its_batch(instruction_lm, pool) -> None:
    view = _view(pool, 12)  # rows of very different lengths, padded together
    batched = Embed(instruction_lm, batch_size=12).embed(view)
    alone = np.concatenate([Embed(instruction_lm, batch_size=1).embed(view.slice(i, 1))
                            for i in range(12)])
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_score_is_max_or_mean_cosine_and_per_target_column(instruction_lm, pool) -> None:
    target = read_corpus(str(TARGETS / "define.jsonl"), text="messages")
    view = _view(pool, 10)
    scorer = Embed(instruction_lm, per_target=True).fit(target)
    scores = scorer.score_batch(view)
    pool_vectors = scorer.embed(view)
    target_vectors = scorer.embed(target.scoring_view(target.read_partition(0)))
    cosines = pool_vectors @ target_vectors.T
    np.testing.assert_allclose(np.array(scores["target_scores"].to_pylist()), cosines,
                               atol=1e-5)
    np.testing.assert_allclose(scores["score"].to_numpy(), cosines.max(1), atol=1e-5)
    assert scores["nearest_target"].to_pylist() == [scorer.target_ids_[j]
                                                     for j in cosines.argmax(1)]
    mean = Embed(instruction_lm, aggregate="mean").fit(target).score_batch(view)
    np.testing.assert_allclose(mean["score"].to_numpy(), cosines.mean(1), atol=1e-5)
    assert "target_scores" not in mean.column_names


def test_bad_settings_are_errors(instruction_lm, tmp_path) -> None:
    with pytest.raises(InputError, match="pooling"):
        Embed(instruction_lm, pooling="cls")
    with pytest.raises(InputError, match="aggregate"):
        Embed(instruction_lm, aggregate="sum")
    with pytest.raises(InputError, match="model folder not found"):
        Embed(str(tmp_path / "missing"))


def test_embed_picks_the_target_task_far_above_chance(instruction_lm, pool) -> None:
    view = _view(pool)
    task = dict(zip(pool.read_partition(0)["id"].to_pylist(),
                    pool.read_partition(0)["task"].to_pylist()))
    precision = {}
    for name in TASKS:
        target = read_corpus(str(TARGETS / f"{name}.jsonl"), text="messages")
        scores = Embed(instruction_lm).fit(target).score_batch(view)
        top = np.argsort(-scores["score"].to_numpy())[:40]
        precision[name] = np.mean([task[scores["id"][i].as_py()] == name for i in top])
    assert min(precision.values()) >= 0.5, precision  # chance: 0.25


def test_scores_through_a_feature_store_match_and_embed_the_pool_once(
        instruction_lm, pool, tmp_path, monkeypatch) -> None:
    """With ``features`` set, scores equal direct scoring (float16 store), and a second
    target scored against the same pool reads the stored embeddings instead of embedding
    the pool again."""
    from dataselect.features import FeatureStore

    store = str(tmp_path / "feats")
    scores = {}
    for name in ("define", "code"):
        target = read_corpus(str(TARGETS / f"{name}.jsonl"), text="messages")
        direct = Embed(instruction_lm, per_target=True).fit(target).score(pool)
        stored = Embed(instruction_lm, per_target=True, features=store).fit(target).score(pool)
        scores[name] = (direct.partition(0), stored.partition(0))
        if name == "define":  # the store is complete now: the pool must not be embedded again
            monkeypatch.setattr(Embed, "featurize_batch", lambda *a, **k: pytest.fail(
                "pool embedded again"))
    for direct, stored in scores.values():
        assert stored["id"].to_pylist() == direct["id"].to_pylist()
        np.testing.assert_allclose(stored["score"].to_numpy(), direct["score"].to_numpy(),
                                   atol=2e-3)
        np.testing.assert_allclose(np.array(stored["target_scores"].to_pylist()),
                                   np.array(direct["target_scores"].to_pylist()), atol=2e-3)
        assert stored["text_bytes"].to_pylist() == direct["text_bytes"].to_pylist()
    ids, matrix = FeatureStore.open(store).read_part(0)
    assert len(ids) == pool.read_partition(0).num_rows and matrix.shape[1] == 1


def test_length_sorted_batches_equal_input_order_batches_for_any_batch_size(
        instruction_lm, pool) -> None:
    """Rows are batched by length, longest first, and put back in order: the embeddings
    equal those of batches taken in input order (the whole causal LM's hidden_states[-1],
    as before), for every batch size."""
    view = _view(pool, 40)
    tokenizer = load_tokenizer(instruction_lm)
    model = load_causal_lm(instruction_lm, torch.device("cpu"))
    results = []
    for size in (1, 5, 16):
        in_order = []
        for start in range(0, view.num_rows, size):
            tokens = tokenize(tokenizer, model_view(view.slice(start, size)), 512)
            with torch.no_grad():
                hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                               output_hidden_states=True).hidden_states[-1]
            in_order.append(pool_hidden_states(hidden, tokens.attention_mask,
                                               "position_weighted").numpy())
        expected = np.concatenate(in_order)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        results.append(Embed(instruction_lm, batch_size=size).embed(view))
        np.testing.assert_allclose(results[-1], expected, atol=1e-5)
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-5)
    assert Embed(instruction_lm).embed(view.slice(0, 0)).shape == (0, 64)


def test_length_batches_sort_longest_first_and_bound_padding() -> None:
    lengths = np.array([10, 512, 90, 100, 95, 11, 300, 12, 80, 9])
    batches = length_batches(lengths, 3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert [lengths[b].tolist() for b in batches] == [[512], [300], [100, 95, 90], [80],
                                                      [12, 11, 10], [9]]
    for rows in batches:  # padding is at most a quarter of a batch's tokens
        assert lengths[rows].sum() >= 0.75 * lengths[rows[0]] * len(rows)
    assert length_batches(np.array([], int), 4) == []


def test_a_model_scorers_pool_is_cut_by_compute_whatever_the_worker_count(
        instruction_lm, pool, tmp_path) -> None:
    """A small pool that is one 4 MiB partition for the cheap scorers becomes several for
    a model (every worker gets work); the plan depends on the data only, so one and two
    workers score the same partitions of the same rows.

    What is promised is agreement within float32 rounding, not bytes: each local
    worker's torch runs cores // workers threads, and a matmul summed by another number
    of threads rounds differently (one and two workers differed by up to 3e-7 in most
    rows); two runs with two workers also differed in the last bits of one part once, so
    no run is promised the bytes of another."""
    import pyarrow.parquet as pq

    from dataselect.corpus import DEFAULT_PARTITION_BYTES
    from dataselect.scoring import plan_pool
    from pipelines.jobs import SelectJob, run_score_job
    from scorers import SCORERS

    planned = plan_pool(pool, [Embed])
    assert pool.npartitions == 1 and planned.npartitions >= 4
    assert plan_pool(pool, [SCORERS["dsir"]]) is pool
    assert plan_pool(pool, [SCORERS["bads"]]) is pool  # scoring is a lookup
    assert plan_pool(pool, [SCORERS["dsir"], Embed]).partitions == planned.partitions
    stores = {}
    for run, workers in enumerate((1, 2, 2)):
        out = tmp_path / f"run{run}-workers{workers}"
        job = SelectJob(scorer="embed", pool=pool.files, target=[str(TARGETS / "define.jsonl")],
                        out=str(out), text_field="messages",
                        scorer_params={"model": instruction_lm, "batch_size": 8},
                        partition_bytes=DEFAULT_PARTITION_BYTES, workers=workers)
        assert run_score_job(job)["store"]["partitions_scored"] == planned.npartitions
        store = out / ".scores" / "embed"
        stores[run] = {p.name: p.read_bytes() for p in sorted(store.glob("part-*"))}
        stores[run, "table"] = pq.read_table(sorted(store.glob("part-*"))).to_pydict()
    assert len(stores[0]) == planned.npartitions
    assert all(len(stores[run]) == planned.npartitions for run in (1, 2))
    first = stores[0, "table"]
    assert len(first["id"]) > 0
    for run in (1, 2):
        other = stores[run, "table"]
        assert other["id"] == first["id"]
        np.testing.assert_allclose(other["score"], first["score"], rtol=0, atol=1e-5)
