"""The pieces under LESS and attribution, each against a naive reference: per-example
gradients, the Adam preconditioning, the projection, the feature store, the FAISS index,
attribution rows, LDS, and the response spans of the text spec."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from torch.func import functional_call, grad, vmap

from attribution.index import FeatureIndex
from attribution.output import attribute
from dataselect.errors import InputError, OutputConflictError
from dataselect.features import FeatureStore, combine_views
from dataselect.metrics import lds, lds_per_query
from dataselect.textspec import TextSpec
from models import projection as projection_module
from models.gradients import LinearGradients, adam_precondition
from models.projection import RademacherProjection


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def test_per_example_gradients_equal_vmap_of_grad_on_an_mlp() -> None:
    model = _mlp()
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    ours = LinearGradients(model).per_example(9, lambda: torch.nn.functional.cross_entropy(
        model(x), y, reduction="none"))
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None],)),
                                                 yi[None])

    reference = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    assert list(ours) == list(params)
    for name in params:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-7)


def test_a_layer_called_twice_gets_both_contributions() -> None:
    torch.manual_seed(1)
    layer = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(layer)
    x = torch.randn(3, 4)

    def losses() -> torch.Tensor:
        return layer(torch.tanh(layer(x))).pow(2).sum(1)

    ours = LinearGradients(model).per_example(3, losses)
    for i in range(3):
        model.zero_grad()
        layer(torch.tanh(layer(x[i:i + 1]))).pow(2).sum().backward()
        torch.testing.assert_close(ours["0.weight"][i], layer.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours["0.bias"][i], layer.bias.grad, rtol=1e-5, atol=1e-6)


def test_gradients_of_one_example_do_not_depend_on_the_others() -> None:
    model = _mlp()
    x = torch.randn(4, 5)

    def run(inputs: torch.Tensor) -> dict:
        return LinearGradients(model).per_example(4, lambda: model(inputs).pow(2).sum(1))

    changed = x.clone()
    changed[2] = 100.0
    a, b = run(x), run(changed)
    for name in a:
        torch.testing.assert_close(a[name][[0, 1, 3]], b[name][[0, 1, 3]])
        assert not torch.allclose(a[name][2], b[name][2])


def test_trainable_parameters_outside_linear_layers_are_refused_by_name() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    with pytest.raises(InputError, match=r"0\.weight"):
        LinearGradients(model)
    model[0].weight.requires_grad_(False)
    assert LinearGradients(model).names == ["1.weight", "1.bias"]


def test_adam_preconditioning_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    g, m, v = rng.normal(size=(3, 6)), rng.normal(size=6), rng.random(6)
    expected = (0.8 * m + 0.2 * g) / (np.sqrt(0.99 * v + 0.01 * g**2) + 1e-6)
    ours = adam_precondition(torch.tensor(g), torch.tensor(m), torch.tensor(v), 0.8, 0.99, 1e-6)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)


def test_projection_equals_the_dense_matrix_across_block_boundaries(monkeypatch) -> None:
    monkeypatch.setattr(projection_module, "BLOCK_BYTES", 4 * 16 * 7)  # 7 rows per block
    sizes = [5, 20, 3]
    projection = RademacherProjection(sizes, 16, seed=3)
    assert projection.rows_per_block == 7 and len(projection.plan) == 1 + 3 + 1
    pieces = [torch.randn(4, s) for s in sizes]
    dense = projection.matrix()
    assert dense.shape == (28, 16)
    assert set(np.unique(dense.numpy() * 4)) == {-1.0, 1.0}  # ±1/sqrt(16)
    torch.testing.assert_close(projection.project(pieces), torch.cat(pieces, 1) @ dense)
    uncached = RademacherProjection(sizes, 16, seed=3, cache_bytes=0)
    assert not uncached.cache
    torch.testing.assert_close(uncached.project(pieces), projection.project(pieces))
    assert torch.equal(RademacherProjection(sizes, 16, seed=3).matrix(), dense)
    assert not torch.equal(RademacherProjection(sizes, 16, seed=4).matrix(), dense)


def test_projection_preserves_inner_products_within_jl_bounds() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 20_000))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dim = 2048
    projected = RademacherProjection([20_000], dim, seed=0).project(
        [torch.tensor(x, dtype=torch.float32)]).double().numpy()
    exact, approx = x @ x.T, projected @ projected.T
    error = np.abs(exact - approx)
    # each entry has standard deviation about sqrt(2/dim) = 0.031: 0.2 is > 6 of them
    assert error.max() < 0.2
    assert error.mean() < 3 / np.sqrt(dim)
    assert np.all(np.abs(np.diag(approx) - 1) < 0.15)


def test_feature_store_round_trip_normalises_and_resumes(tmp_path) -> None:
    store = FeatureStore.create(tmp_path, {"kind": "x", "dim": 3, "views": 2})
    features = np.array([[[3, 4, 0], [0, 0, 0]], [[1, 1, 1], [0, 2, 0]]], np.float32)
    store.write_part(1, pa.array(["a", "b"]), features)
    assert store.parts() == [1] and store.has_part(1) and not store.has_part(0)
    ids, matrix = store.read_part(1)
    assert ids.to_pylist() == ["a", "b"] and matrix.dtype == np.float16
    np.testing.assert_allclose(matrix[0, 0], [0.6, 0.8, 0], atol=1e-3)
    assert not matrix[0, 1].any()  # a zero vector stays zero
    np.testing.assert_allclose(np.linalg.norm(matrix[1].astype(np.float32), axis=1), 1,
                               atol=1e-3)
    again = FeatureStore.create(tmp_path, {"kind": "x", "dim": 3, "views": 2})
    assert again.parts() == [1]
    with pytest.raises(OutputConflictError, match="dim"):
        FeatureStore.create(tmp_path, {"kind": "x", "dim": 4, "views": 2})


def test_combined_views_give_the_weighted_mean_of_cosines() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3, 8)), rng.normal(size=(4, 3, 8))
    a /= np.linalg.norm(a, axis=2, keepdims=True)
    b /= np.linalg.norm(b, axis=2, keepdims=True)
    weights = np.array([2.0, 1.0, 0.5])
    dots = combine_views(a, weights) @ combine_views(b, weights).T
    for i in range(5):
        for j in range(4):
            expected = sum(w * a[i, c] @ b[j, c] for c, w in enumerate(weights)) / weights.sum()
            assert dots[i, j] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError, match="view weights"):
        combine_views(a, [1.0, -1.0, 1.0])


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_brute_force_and_survives_save_load(tmp_path) -> None:
    pool, queries = _unit(500, 16, 0), _unit(20, 16, 1)
    ids = [f"r{i}" for i in range(500)]
    shards = [(ids[:200], pool[:200]), (ids[200:], pool[200:])]
    index = FeatureIndex.build(shards, 16)
    exact = queries @ pool.T
    for k in (1, 7, 600):
        scores, found = index.search(queries, k)
        order = np.argsort(-exact, axis=1)[:, :min(k, 500)]
        assert found == [[ids[r] for r in row] for row in order]
        np.testing.assert_allclose(scores, np.take_along_axis(exact, order, 1), atol=1e-5)
    index.save(tmp_path / "index")
    loaded = FeatureIndex.load(tmp_path / "index")
    assert loaded.search(queries, 5)[1] == index.search(queries, 5)[1]
    with pytest.raises(InputError, match="dim"):
        index.search(_unit(2, 8, 0), 3)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_the_exact_neighbours(kind: str) -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 32))
    pool = (centres[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 32)))
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float32)
    queries = pool[:50] + 0.01
    ids = [str(i) for i in range(2000)]
    exact = FeatureIndex.build([(ids, pool)], 32).search(queries, 10)[1]
    approx = FeatureIndex.build(lambda: [(ids[:1000], pool[:1000]), (ids[1000:], pool[1000:])],
                                32, kind=kind, nlist=20, nprobe=8).search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_attribution_rows_rank_every_query_like_brute_force() -> None:
    pool, queries = _unit(50, 8, 3), _unit(4, 8, 4)
    ids = [f"t{i}" for i in range(50)]
    index = FeatureIndex.build([(ids, pool)], 8)
    table = attribute(index, ["q0", "q1", "q2", "q3"], queries, k=3, scale=2.0)
    assert table.column_names == ["query_id", "rank", "train_id", "score"]
    assert table["query_id"].to_pylist() == [q for q in ["q0", "q1", "q2", "q3"] for _ in "abc"]
    assert table["rank"].to_pylist() == [1, 2, 3] * 4
    exact = queries @ pool.T
    for q in range(4):
        order = np.argsort(-exact[q])[:3]
        rows = table.slice(3 * q, 3)
        assert rows["train_id"].to_pylist() == [ids[r] for r in order]
        np.testing.assert_allclose(rows["score"].to_numpy(), 2 * exact[q, order], atol=1e-5)
    with pytest.raises(InputError, match="not unique"):
        attribute(index, ["q", "q"], queries[:2], k=1)
    with pytest.raises(InputError, match="query ids"):
        attribute(index, ["q"], queries[:2], k=1)


def test_lds_equals_a_naive_spearman_loop() -> None:
    rng = np.random.default_rng(5)
    attributions = rng.normal(size=(6, 30))
    subsets = rng.random((25, 30)) < 0.5
    outputs = rng.normal(size=(25, 6))
    outputs[:, 0] = 1.0  # constant: undefined for that query
    ours = lds_per_query(attributions, subsets, outputs)
    assert np.isnan(ours[0])
    for q in range(1, 6):
        predicted = subsets.astype(float) @ attributions[q]
        ranks = [pd.Series(v).rank().to_numpy() for v in (predicted, outputs[:, q])]
        rho = np.corrcoef(*ranks)[0, 1]  # Spearman = Pearson of average ranks
        assert ours[q] == pytest.approx(rho)
    assert lds(attributions, subsets, outputs) == pytest.approx(np.nanmean(ours))


def test_lds_is_one_for_a_true_linear_datamodel_and_minus_one_reversed() -> None:
    rng = np.random.default_rng(6)
    truth = rng.normal(size=(3, 40))
    subsets = rng.random((50, 40)) < 0.5
    outputs = subsets @ truth.T
    assert lds(truth, subsets, outputs) == pytest.approx(1.0)
    assert lds(-truth, subsets, outputs) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="undefined"):
        lds(truth, subsets, np.ones_like(outputs))
    with pytest.raises(ValueError, match="shapes"):
        lds(truth, subsets[:, :10], outputs)


def test_response_spans_cut_exactly_the_trained_parts() -> None:
    where = str
    chat = pa.table({"messages": [[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"},
        {"role": "assistant", "content": "héllo twice"}]]})
    spec = TextSpec.parse("messages")
    text = spec.render(chat, where)[0].as_py()
    spans = spec.response_spans(chat, where)[0].as_py()
    assert [text[s["start"]:s["end"]] for s in spans] == ["hello", "héllo twice"]
    pairs = pa.table({"p": ["Question?"], "c": ["Answer."]})
    spec = TextSpec.parse("p+c")
    text = spec.render(pairs, where)[0].as_py()
    (span,) = spec.response_spans(pairs, where)[0].as_py()
    assert text[span["start"]:span["end"]] == "Answer."
    plain = pa.table({"text": ["naïve text"]})
    (span,) = TextSpec.parse("text").response_spans(plain, where)[0].as_py()
    assert (span["start"], span["end"]) == (0, len("naïve text"))
