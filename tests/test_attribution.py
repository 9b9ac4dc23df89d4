"""TRAK, TracIn, BIF and the dense / inner-product attribution paths (issue 16)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from attribution.bif import BifConfig, RunningCovariance, bif
from attribution.output import (
    attribute_inner,
    dense_scores,
    inner_product_index,
    read_attribution_matrix,
    write_attribution_matrix,
)
from attribution.output_gradients import (
    ClassifierOutput,
    OutputGradients,
    margin,
    output_gradients,
)
from attribution.tracin import NegativeLoss, TracIn, member_weights
from attribution.trak import Trak, ridged_kernel
from models.projection import RademacherProjection


def _classifier(seed: int) -> tuple[torch.nn.Module, tuple, tuple]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    return model, (x[:30], y[:30]), (x[30:], y[30:])


def _naive_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     value: Callable = lambda logits, y: margin(logits, y)[0]
                     ) -> torch.Tensor:
    """Gradients of ``value(logits, y)`` (the margin by default) one example at a time,
    ``(rows, params)``."""
    rows = []
    for xi, yi in zip(x, y):
        model.zero_grad()
        value(model(xi[None]), yi[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows).double()


def test_trak_equals_dense_naive_formula() -> None:
    models = [_classifier(seed) for seed in (0, 1, 2)]
    train, query = models[0][1], models[0][2]
    out, dim, ridge = ClassifierOutput(), 16, 0.05
    trak = Trak(ridge, "trak").fit([output_gradients(m, [train], out, dim, s, "rademacher")
                            for s, (m, _, _) in enumerate(models)])
    ours = trak.query_features([output_gradients(m, [query], out, dim, s, "rademacher")
                                for s, (m, _, _) in enumerate(models)]) \
        @ trak.train_features().T
    kernels, one_minus_p = [], []
    for s, (model, _, _) in enumerate(models):
        sizes = [p.numel() for p in model.parameters()]
        proj = RademacherProjection(sizes, dim, s)
        eye = torch.eye(sum(sizes))
        matrix = proj.project(list(eye.split(sizes, 1))).double()  # (params, dim)
        phi = _naive_gradients(model, *train) @ matrix
        phi_q = _naive_gradients(model, *query) @ matrix
        xtx = phi.T @ phi
        xtx += ridge * xtx.diagonal().mean() * torch.eye(dim, dtype=torch.float64)
        kernels.append(phi_q @ torch.linalg.inv(xtx) @ phi.T)
        with torch.no_grad():
            p = torch.softmax(model(train[0]), -1).gather(1, train[1][:, None])[:, 0]
        one_minus_p.append(1 - p.double())
    naive = torch.stack(kernels).mean(0) * torch.stack(one_minus_p).mean(0)[None]
    naive = naive.numpy()
    np.testing.assert_allclose(ours, naive, rtol=1e-3, atol=1e-5 * np.abs(naive).max())


def test_tracin_equals_weighted_sum_of_naive_loss_gradient_products() -> None:
    models = [_classifier(seed) for seed in (0, 1, 2)]
    train, query = models[0][1], models[0][2]
    loss, dim, weights = NegativeLoss(ClassifierOutput()), 16, [0.5, 0.3, 0.2]
    tracin = TracIn(weights).fit([output_gradients(m, [train], loss, dim, s, "rademacher")
                                  for s, (m, _, _) in enumerate(models)])
    ours = tracin.query_features([output_gradients(m, [query], loss, dim, s, "rademacher")
                                  for s, (m, _, _) in enumerate(models)]) \
        @ tracin.train_features().T
    naive = torch.zeros(len(query[1]), len(train[1]), dtype=torch.float64)
    for s, ((model, _, _), weight) in enumerate(zip(models, weights)):
        sizes = [p.numel() for p in model.parameters()]
        eye = torch.eye(sum(sizes))
        matrix = RademacherProjection(sizes, dim, s).project(list(eye.split(sizes, 1))).double()
        g_train = _naive_gradients(model, *train, torch.nn.functional.cross_entropy) @ matrix
        g_query = _naive_gradients(model, *query, torch.nn.functional.cross_entropy) @ matrix
        naive += weight * g_query @ g_train.T
    np.testing.assert_allclose(ours, naive.numpy(), rtol=1e-3,
                               atol=1e-5 * float(naive.abs().max()))
    # a step on a row with a positive score lowers the query's loss, to first order
    model, (x, y) = models[0][0], train
    tracin_1 = TracIn().fit([output_gradients(model, [train], loss, 2000, 0, "rademacher")])
    scores = tracin_1.query_features([output_gradients(model, [(query[0][:1], query[1][:1])],
                                                        loss, 2000, 0, "rademacher")]) \
        @ tracin_1.train_features().T
    best = int(np.argmax(scores[0]))
    before = float(torch.nn.functional.cross_entropy(model(query[0][:1]), query[1][:1]))
    step = torch.optim.SGD(model.parameters(), lr=1e-3)
    torch.nn.functional.cross_entropy(model(x[best:best + 1]), y[best:best + 1]).backward()
    step.step()
    after = float(torch.nn.functional.cross_entropy(model(query[0][:1]), query[1][:1]))
    assert after < before


def test_tracin_member_weights() -> None:
    assert member_weights([3e-4, 1e-4]) == pytest.approx([0.75, 0.25])
    assert member_weights([None, 1e-4]) == [0.5, 0.5]
    assert member_weights([0.0, 1e-4]) == [0.5, 0.5]
    assert member_weights([None]) == [1.0]


def test_folded_query_inverse_equals_explicit_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    phi, phi_q = torch.randn(50, 8, generator=generator), torch.randn(5, 8, generator=generator)
    p = torch.rand(50, generator=generator)
    trak = Trak(0.1).fit([OutputGradients(phi, p)])
    weighted = phi.double().T @ torch.diag(p.double() * (1 - p.double())) @ phi.double()
    weighted += 0.1 * weighted.diagonal().mean() * torch.eye(8, dtype=torch.float64)
    explicit = phi_q.double() @ torch.linalg.inv(weighted)
    np.testing.assert_allclose(trak.query_features([phi_q]), explicit.numpy(), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(trak.train_features(), (1 - p[:, None]) * phi.numpy(),
                               rtol=1e-6)
    kernel = ridged_kernel(phi, 0.1)
    lam = 0.1 * (phi.double() ** 2).sum(0).mean()
    np.testing.assert_allclose(kernel.diagonal().numpy(),
                               ((phi.double() ** 2).sum(0) + lam).numpy())


@pytest.mark.parametrize("kernel", ["gauss_newton", "trak"])
def test_woodbury_inverse_with_fewer_rows_than_dimensions_equals_explicit(kernel: str) -> None:
    """12 rows in 40 dimensions: the rows x rows Woodbury solve gives the dim x dim
    inverse's query features."""
    generator = torch.Generator().manual_seed(1)
    phi, phi_q = torch.randn(12, 40, generator=generator), torch.randn(3, 40, generator=generator)
    p = torch.rand(12, generator=generator)
    trak = Trak(0.1, kernel).fit([OutputGradients(phi, p)])
    assert trak.solvers[0].a is not None  # the Woodbury path was taken
    weights = p.double() * (1 - p.double()) if kernel == "gauss_newton" else torch.ones(12)
    kernel_matrix = phi.double().T @ torch.diag(weights.double()) @ phi.double()
    kernel_matrix += 0.1 * kernel_matrix.diagonal().mean() * torch.eye(40, dtype=torch.float64)
    explicit = phi_q.double() @ torch.linalg.inv(kernel_matrix)
    np.testing.assert_allclose(trak.query_features([phi_q]), explicit.numpy(), rtol=1e-4,
                               atol=1e-6 * float(explicit.abs().max()))


def test_running_covariance_equals_two_pass() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 7, generator=generator) * 3 + 5
    b = a[:, :4] * 0.5 + torch.randn(200, 4, generator=generator) - 2
    running = RunningCovariance(7, 4)
    for row_a, row_b in zip(a, b):
        running.update(row_a, row_b)
    centred_a, centred_b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    two_pass = centred_a.T @ centred_b / (len(a) - 1)
    torch.testing.assert_close(running.covariance(), two_pass, rtol=1e-10, atol=1e-12)


def test_bif_streams_covariance_and_restores_the_model() -> None:
    model, train, query = _classifier(0)
    before = [p.detach().clone() for p in model.parameters()]
    out = ClassifierOutput()
    config = BifConfig(draws=50, burn_in=5, step_size=1e-3, localization=100.0, seed=3)
    scores = bif(model, out, [train], [query], config)
    assert scores.shape == (30, 10) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0
    for p, p0 in zip(model.parameters(), before):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)
    np.testing.assert_array_equal(scores, bif(model, out, [train], [query], config))


def test_dense_path_equals_index_top_k(tmp_path) -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((300, 12)) * rng.uniform(0.1, 5, (300, 1))
    queries = rng.standard_normal((7, 12))
    ids, qids = [f"t{i}" for i in range(300)], [f"q{j}" for j in range(7)]
    dense = dense_scores(train, queries, block=64)
    np.testing.assert_allclose(dense, train @ queries.T, rtol=1e-4, atol=1e-4)
    index, norm = inner_product_index(ids, train)
    table = attribute_inner(index, norm, qids, queries, k=20).to_pydict()
    for j in range(7):
        top = np.argsort(-dense[:, j], kind="stable")[:20]
        got = [int(t[1:]) for q, t in zip(table["query_id"], table["train_id"]) if q == qids[j]]
        assert got == top.tolist()
        scores = [s for q, s in zip(table["query_id"], table["score"]) if q == qids[j]]
        np.testing.assert_allclose(scores, dense[top, j], rtol=1e-4, atol=1e-4)
    folder = write_attribution_matrix(dense, ids, qids, tmp_path / "dense")
    matrix, train_ids, query_ids = read_attribution_matrix(folder)
    np.testing.assert_array_equal(matrix, dense)
    assert (train_ids, query_ids) == (ids, qids)


@pytest.mark.parametrize("rows", [3, 12])  # the Woodbury form (rows < dim) and Cholesky
def test_a_kernel_without_ridge_on_too_few_directions_is_refused(rows):
    """Rows spanning 2 of 8 directions: with no ridge the kernel has no inverse, in both
    forms, and the error names the setting to change."""
    from attribution.trak import KernelInverse
    from dataselect.errors import InputError

    basis = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    phi = torch.randn(rows, 2, generator=torch.Generator().manual_seed(1)) @ basis
    with pytest.raises(InputError, match="kernel is singular; use a positive ridge"):
        KernelInverse.fit(phi, ridge=0.0)
    inverse = KernelInverse.fit(phi, ridge=0.1)
    assert inverse.apply(torch.ones(1, 8, dtype=torch.float64)).isfinite().all()
