"""BADS: the SGLD update against the paper's equations written out by hand, the budget
prior's running mean, the read-off, the failure-mode warnings, digits with label noise
and with class imbalance, and the causal-LM scorer on data/instructions."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import DATA
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from dataselect import read_corpus
from dataselect.errors import InputError
from pipelines.cli import main
from scorers.bads.classifier import fit_classifier, train_uniform
from scorers.bads.sampler import (
    BadsConfig,
    BadsDivergedError,
    BadsSampler,
    BadsWarning,
    FreeWeights,
)
from scorers.bads.scorer import Bads

INSTRUCTIONS = DATA / "instructions"
TASKS = ("code", "define", "summarize", "translate")


def test_one_step_equals_the_papers_update_written_out() -> None:
    """With SGD (lr 1), no noise: θ' = θ − ∇θ U and u' = u − ∇u U, each term by hand."""
    torch.manual_seed(0)
    n_train, n_meta, beta, sigma, s = 50, 7, 0.3, 0.5, 2.0
    rho_tt, rho_tm, rho_wt = 0.7, 1.3, 0.9
    config = BadsConfig(beta=beta, sigma=sigma, rho_theta_train=rho_tt, rho_theta_meta=rho_tm,
                        rho_w_train=rho_wt, theta_prior_std=s, noise=0.0, optimizer="sgd",
                        lr_theta=1.0, lr_w=1.0, steps=5, batch_size=4, meta_batch_size=3)
    theta = torch.nn.Parameter(torch.randn(3))
    free = FreeWeights(n_train, beta)
    with torch.no_grad():
        free.logits.normal_()
    sampler = BadsSampler([theta], free, n_train, n_meta, config)
    x, xm = torch.randn(4, 3), torch.randn(3, 3)
    rows = torch.tensor([3, 10, 11, 40])
    theta0, u0 = theta.detach().clone(), free.logits.detach().clone()

    def loss(inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (inputs @ t - 1.0) ** 2

    sampler.step(loss(x, theta), free(rows), loss(xm, theta))
    # the paper's gradients, by hand
    w = torch.sigmoid(u0[rows])
    residual, meta_residual = x @ theta0 - 1.0, xm @ theta0 - 1.0
    grad_theta = (theta0 / s**2
                  + rho_tt * n_train / 4 * (w[:, None] * 2 * residual[:, None] * x).sum(0)
                  + rho_tm * n_meta / 3 * (2 * meta_residual[:, None] * xm).sum(0))
    budget = math.floor(n_train * beta)
    total = w.sum() + (n_train - 4) * w.mean()  # no batch means yet: w̄ is this batch's
    grad_w = rho_wt * n_train / 4 * residual**2 + (total - budget) / sigma**2
    grad_u = torch.zeros(n_train)
    grad_u[rows] = grad_w * w * (1 - w)
    torch.testing.assert_close(theta.detach(), theta0 - grad_theta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(free.logits.detach(), u0 - grad_u, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_step_accumulated_chunk_by_chunk_equals_the_one_batch_step(optimizer: str) -> None:
    """What the LM scorer does to bound memory: backpropagate coefficient x loss per chunk
    of rows, then step with detached losses; θ, the weights and the record are those of a
    step on the whole batch at once."""
    config = BadsConfig(beta=0.3, sigma=0.5, noise=1e-3, optimizer=optimizer, lr_theta=0.1,
                        lr_w=0.1, steps=5, batch_size=5, meta_batch_size=3, seed=4)
    x, xm = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), \
        torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    rows = torch.tensor([3, 10, 11, 40, 41])

    def loss(inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (inputs @ t - 1.0) ** 2

    runs = []
    for accumulated in (False, True):
        torch.manual_seed(0)
        theta = torch.nn.Parameter(torch.randn(3))
        free = FreeWeights(50, 0.3)
        with torch.no_grad():
            free.logits.normal_()
        sampler = BadsSampler([theta], free, 50, 7, config)
        for _ in range(3):
            weights = free(rows)
            if not accumulated:
                record = sampler.step(loss(x, theta), weights, loss(xm, theta))
                continue
            train_c, meta_c = sampler.theta_loss_coefficients(weights, 3)
            sampler.begin_step()
            for part in (slice(0, 2), slice(2, 5)):  # train rows in two chunks
                (loss(x[part], theta) * train_c[part]).sum().backward()
            (loss(xm, theta) * meta_c).sum().backward()
            record = sampler.step(loss(x, theta).detach(), weights,
                                  loss(xm, theta).detach(), accumulated=True)
        runs.append((theta.detach().clone(), free.logits.detach().clone(), record))
    (theta_a, u_a, rec_a), (theta_b, u_b, rec_b) = runs
    torch.testing.assert_close(theta_b, theta_a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(u_b, u_a, rtol=1e-6, atol=1e-6)
    assert rec_b.energy == pytest.approx(rec_a.energy, rel=1e-6)
    assert rec_b.theta_grad_norm == pytest.approx(rec_a.theta_grad_norm, rel=1e-5)


def test_an_accumulated_step_refuses_losses_that_still_carry_gradients() -> None:
    theta = torch.nn.Parameter(torch.randn(3))
    free = FreeWeights(10, 0.3)
    sampler = BadsSampler([theta], free, 10, 2, BadsConfig(steps=2, batch_size=2,
                                                           meta_batch_size=1))
    live = (torch.randn(2, 3) @ theta) ** 2
    with pytest.raises(ValueError, match="detached"):
        sampler.step(live, free(torch.tensor([0, 1])), live[:1].detach(), accumulated=True)


def test_the_budget_uses_the_running_mean_of_recent_batch_means() -> None:
    torch.manual_seed(1)
    config = BadsConfig(beta=0.2, s_avg=3, noise=0.0, steps=10, batch_size=5)
    theta = torch.nn.Parameter(torch.randn(2))
    free = FreeWeights(40, 0.2)
    sampler = BadsSampler([theta], free, 40, 5, config)
    means = []
    for step in range(6):
        rows = torch.arange(step * 5, step * 5 + 5)
        weights = free(rows)
        expected_bar = float(np.mean(means[-3:])) if means else float(weights.detach().mean())
        expected_gap = float(weights.detach().sum()) + 35 * expected_bar - math.floor(40 * 0.2)
        record = sampler.step((theta**2).sum().expand(5) * 0 + rows.float() / 10, weights,
                              (theta**2).sum().expand(2))
        assert record.budget_gap == pytest.approx(expected_gap, rel=1e-5, abs=1e-5)
        means.append(float(weights.detach().mean()))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def _mlp(seed: int, hidden: int = 64, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes))


@pytest.fixture(scope="module")
def noisy_digits() -> dict:
    """500 clean test rows, a clean meta set of 10 per class, and the rest with 40 %
    symmetric label noise (a noisy label is one of the 9 wrong classes, uniformly)."""
    x, y = _digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    test, rest = order[:500], order[500:]
    meta = np.concatenate([rest[y[rest] == c][:10] for c in range(10)])
    train = np.setdiff1d(rest, meta)
    labels = y[train].copy()
    noisy = rng.random(len(train)) < 0.4
    labels[noisy] = (labels[noisy] + rng.integers(1, 10, noisy.sum())) % 10
    t = torch.tensor
    return {"x": t(x[train]), "y": t(labels), "noisy": noisy, "meta_x": t(x[meta]),
            "meta_y": t(y[meta]), "test_x": t(x[test]), "test_y": t(y[test])}


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


NOISE_CONFIG = dict(beta=0.6, steps=1500, batch_size=64, meta_batch_size=16)


@pytest.mark.slow
def test_digits_label_noise_free_weights_separate_clean_from_noisy(noisy_digits) -> None:
    d = noisy_digits
    config = BadsConfig(**NOISE_CONFIG, lr_w=1e-2)
    fit = fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config,
                         weights="free")
    auc = roc_auc_score(~d["noisy"], fit.weights)
    uniform = train_uniform(_mlp(0), torch.cat([d["x"], d["meta_x"]]),
                            torch.cat([d["y"], d["meta_y"]]), config)
    ours, theirs = (_accuracy(m, d["test_x"], d["test_y"]) for m in (fit.model, uniform))
    print(f"label noise, free weights: AUC {auc:.3f}, test accuracy BADS {ours:.3f}, "
          f"uniform {theirs:.3f}")
    assert auc >= 0.9
    assert ours > theirs
    assert fit.warnings == []
    assert abs(fit.weights.mean() - 0.6) < 0.1  # the budget prior held


@pytest.mark.slow
def test_digits_label_noise_weight_network_ranks_clean_above_noisy(noisy_digits) -> None:
    """The weight network on penultimate features x one-hot label: weaker than free
    weights here (README), still far above chance."""
    d = noisy_digits
    config = BadsConfig(**NOISE_CONFIG, lr_w=1e-4)
    fit = fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config)
    auc = roc_auc_score(~d["noisy"], fit.weights)
    print(f"label noise, weight network: AUC {auc:.3f}")
    assert auc >= 0.85
    # the network weighs examples it never saw: the test rows with their true labels
    # rank above the same rows with a wrong label
    right = fit.score(d["test_x"], d["test_y"])
    wrong = fit.score(d["test_x"], (d["test_y"] + 1) % 10)
    assert (right > wrong).mean() > 0.8


@pytest.mark.slow
def test_digits_class_imbalance_balanced_meta_set_beats_uniform() -> None:
    """4-vs-9 (the paper's MNIST setting, on digits): 3 nines among ~120 fours in
    training, 5 of each in the meta set; balanced accuracy on 60 + 60 test rows."""
    x, y = _digits()
    rng = np.random.default_rng(0)
    keep = np.flatnonzero((y == 4) | (y == 9))
    rng.shuffle(keep)
    xb, yb = torch.tensor(x[keep]), torch.tensor((y[keep] == 9).astype(np.int64))
    fours, nines = np.flatnonzero(yb == 0), np.flatnonzero(yb == 1)
    test = np.concatenate([fours[:60], nines[:60]])
    meta = np.concatenate([fours[60:65], nines[60:65]])
    train = np.concatenate([fours[65:], nines[65:68]])

    def balanced(model: torch.nn.Module) -> float:
        with torch.no_grad():
            predicted = model(xb[test]).argmax(1)
        return float(np.mean([(predicted[yb[test] == c] == c).float().mean() for c in (0, 1)]))

    ours, with_meta, without_meta = [], [], []
    for seed in range(3):
        config = BadsConfig(beta=0.5, steps=600, batch_size=32, meta_batch_size=8,
                            rho_theta_meta=10, seed=seed)
        fit = fit_classifier(_mlp(seed, 32, 2), xb[train], yb[train], xb[meta], yb[meta],
                             config)
        ours.append(balanced(fit.model))
        everything = np.concatenate([train, meta])
        with_meta.append(balanced(train_uniform(_mlp(seed, 32, 2), xb[everything],
                                                yb[everything], config)))
        without_meta.append(balanced(train_uniform(_mlp(seed, 32, 2), xb[train], yb[train],
                                                   config)))
    print(f"imbalance, balanced accuracy: BADS {np.mean(ours):.3f}, uniform on train + meta "
          f"{np.mean(with_meta):.3f}, uniform on train {np.mean(without_meta):.3f}")
    assert np.mean(ours) > np.mean(with_meta)
    assert np.mean(ours) > np.mean(without_meta)


@pytest.mark.slow
def test_same_seed_gives_identical_weights(noisy_digits) -> None:
    d = noisy_digits
    config = BadsConfig(beta=0.6, steps=40, batch_size=32, lr_w=1e-2)
    runs = [fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config).weights
            for _ in range(2)]
    assert runs[0].tobytes() == runs[1].tobytes()
    other = BadsConfig(beta=0.6, steps=40, batch_size=32, lr_w=1e-2, seed=1)
    changed = fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], other)
    assert changed.weights.tobytes() != runs[0].tobytes()


def test_read_off_averages_the_last_thinned_samples(noisy_digits) -> None:
    d = noisy_digits
    config = BadsConfig(beta=0.6, steps=20, batch_size=32, lr_w=1e-2, samples=3, thin=4)
    fit = fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config,
                         weights="free")
    assert len(fit.samples) == 3  # after steps 12, 16 and 20
    by_hand = np.mean([torch.sigmoid(s["logits"]).numpy() for s in fit.samples], axis=0)
    np.testing.assert_allclose(fit.weights, by_hand)
    assert not np.allclose(torch.sigmoid(fit.samples[0]["logits"]).numpy(),
                           torch.sigmoid(fit.samples[-1]["logits"]).numpy())


@pytest.mark.slow
def test_a_weak_budget_prior_collapses_the_weights_and_is_reported(noisy_digits) -> None:
    d = noisy_digits
    config = BadsConfig(beta=0.6, sigma=10.0, steps=300, batch_size=64, lr_w=1e-2)
    with pytest.warns(BadsWarning, match="collapsed towards 0"):
        fit = fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config)
    assert fit.weights.mean() < 0.06
    assert "sigma=10.0" in fit.warnings[0]


def test_an_overshooting_weight_step_is_named_instead_of_raising_it(noisy_digits) -> None:
    """lr_w=1e30 collapses every weight; the advice was "raise lr_w", the wrong way."""
    d = noisy_digits
    config = BadsConfig(beta=0.6, steps=20, batch_size=64, lr_w=1e30)
    with pytest.warns(BadsWarning, match="lower lr_w first"):
        fit = fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config)
    assert fit.weights.max() < 0.05
    assert not any("raise lr_w" in line for line in fit.warnings), fit.warnings


def test_a_step_too_large_for_the_n_t_factor_is_an_error(noisy_digits) -> None:
    d = noisy_digits
    config = BadsConfig(beta=0.6, optimizer="sgd", lr_theta=10.0, steps=50, batch_size=64)
    with pytest.raises(BadsDivergedError, match="N_t=1197"):
        fit_classifier(_mlp(0), d["x"], d["y"], d["meta_x"], d["meta_y"], config)


@pytest.mark.parametrize("settings, message", [
    (dict(beta=0.0), "beta"), (dict(optimizer="rmsprop"), "optimizer"),
    (dict(samples=5, thin=10, steps=40), "samples"), (dict(sigma=-1.0), "sigma"),
])
def test_bad_settings_are_errors(settings, message) -> None:
    with pytest.raises(InputError, match=message):
        BadsConfig(**settings).check()


@pytest.fixture(scope="module")
def instruction_pool(tmp_path_factory: pytest.TempPathFactory):
    rows = [json.loads(line) for line in (INSTRUCTIONS / "train.jsonl").open()]
    random.Random(1).shuffle(rows)
    chosen = [r for task in TASKS for r in [r for r in rows if r["task"] == task][:40]]
    path = tmp_path_factory.mktemp("bads") / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path


LM_SETTINGS = dict(beta=0.25, sigma=0.2, rho_theta_train=0.1, rho_theta_meta=10.0,
                   steps=100, max_length=512)


def test_lm_weights_rank_the_target_task_first(instruction_lm, instruction_pool) -> None:
    pool = read_corpus(str(instruction_pool), text="messages")
    table = pool.read_partition(0)
    view = pool.scoring_view(table)
    tasks = np.array(table["task"].to_pylist())
    target = read_corpus(str(INSTRUCTIONS / "targets" / "code.jsonl"), text="messages")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadsWarning)
        scorer = Bads(instruction_lm, **LM_SETTINGS).fit(target, pool)
    scores = scorer.score_batch(view)
    assert scores["id"].to_pylist() == view["id"].to_pylist()
    weights = scores["score"].to_numpy()
    assert ((weights > 0) & (weights < 1)).all()
    auc = roc_auc_score(tasks == "code", weights)
    print(f"instructions, target code: ROC AUC {auc:.3f}; fit {scorer.fit_stats_}")
    assert auc >= 0.8
    assert scorer.fit_stats_["steps"] == 100
    assert abs(scorer.fit_stats_["final_budget_gap"]) < 0.1 * scorer.fit_stats_["budget"]


def test_lm_free_weights_cover_the_fit_pool_only(instruction_lm, instruction_pool, tmp_path
                                                 ) -> None:
    pool = read_corpus(str(instruction_pool), text="messages")
    target = read_corpus(str(INSTRUCTIONS / "targets" / "define.jsonl"), text="messages")
    scorer = Bads(instruction_lm, weights="free", steps=10, max_length=128).fit(target, pool)
    view = pool.scoring_view(pool.read_partition(0))
    scores = scorer.score_batch(view)
    assert scores["filtered_by"].null_count == view.num_rows
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "new", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    unseen = read_corpus(str(other), text="messages")
    assert scorer.score_batch(unseen.scoring_view(unseen.read_partition(0)))[
        "filtered_by"].to_pylist() == ["not_in_bads_fit"]


def test_cli_selects_with_bads(instruction_lm, instruction_pool, tmp_path) -> None:
    out = tmp_path / "out"
    params = [f"model={instruction_lm}", "steps=20", "max_length=256", "beta=0.25"]
    code = main(["select", "--scorer", "bads", "--pool", str(instruction_pool),
                 "--target", str(INSTRUCTIONS / "targets" / "define.jsonl"), "--text-field",
                 "messages", "--k", "40", "--out", str(out), "--workers", "1",
                 *[arg for p in params for arg in ("-p", p)]])
    assert code == 0
    picked = pq.read_table(out)
    assert picked.num_rows == 40
    pool_ids = {json.loads(line)["id"] for line in instruction_pool.open()}
    assert set(picked["id"].to_pylist()) <= pool_ids
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["fit"]["steps"] == 20
    assert "warnings" in manifest["fit"]
