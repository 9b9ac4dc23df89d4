"""BIF: Bayesian influence functions, Hessian-free attribution by SGLD covariance.

Kreer et al. 2025 ("Bayesian influence functions for Hessian-free data attribution").
Weighting training row ``i`` by ``w_i`` in a tempered posterior
``p(theta) ~ exp(-n beta sum_i w_i l_i(theta) / n)`` moves the posterior mean of any
function ``f`` by ``d E[f] / d w_i = -beta Cov(l_i, f)``; so the influence of row ``i`` on
query ``q`` is ``-Cov(l_i(theta), f_q(theta))`` over draws ``theta`` from the posterior,
localised at the trained model ``theta*`` by a Gaussian pull of strength ``gamma``. Nothing
inverts or even forms a Hessian: near ``theta*`` the covariance is
``grad l_i^T (n beta H + gamma I)^-1 grad f_q``, the classical influence function with
``gamma`` as its damping, estimated by sampling.

``f_q`` is the same output function as TRAK's (:mod:`attribution.output_gradients`): the
correct-class margin for classifiers, the response-token log-odds for causal LMs; ``l_i`` is the
training loss. Higher score = training on ``i`` raises the query's output.

Sampler: SGLD on the trainable parameters (the LoRA weights, or every weight of a small
model), ``theta <- theta - eps/2 (n beta grad L(theta) + gamma (theta - theta*)) +
N(0, eps)``, ``L`` the mean training loss over a minibatch (the whole set by default),
``beta = 1 / log n`` (the localised-posterior temperature used for local learning
coefficients). BADS's sampler (:mod:`scorers.bads.sampler`) samples ``theta`` jointly
with data weights and keeps whole draws; this one needs neither, so it shares only the
update rule. Draws are streamed: after burn-in, every ``thin``-th step's losses update a
running cross-covariance (Welford's update, :class:`RunningCovariance`), so memory is the
``(rows, queries)`` result, never draws x rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from attribution.base import one_table
from attribution.ensemble import EnsembleMethod, EnsembleSettings, members, token_batches
from attribution.output_gradients import CausalLMOutput
from attribution.scores import ScoreMatrix
from dataselect import checks
from dataselect.errors import InputError


@dataclass
class BifConfig:
    draws: int = 1000             # draws kept for the covariance
    burn_in: int = 100            # SGLD steps before the first kept draw
    thin: int = 1                 # steps between kept draws
    step_size: float = 1e-4       # eps
    localization: float = 1000.0  # gamma, the pull towards theta*
    beta: float | None = None     # inverse temperature; None: 1 / log n
    seed: int = 0

    def check(self) -> None:
        checks.check_count(self.draws, "draws", minimum=2)
        checks.check_count(self.thin, "thin")
        if self.burn_in < 0:
            raise InputError(f"burn_in must be >= 0, got {self.burn_in}", field="burn_in")
        for name in ("step_size", "localization"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive", field=name)
        if self.beta is not None and not self.beta > 0:
            raise InputError("beta must be positive", field="beta")


class RunningCovariance:
    """Cross-covariance of two streamed vectors ``a`` ``(n,)`` and ``b`` ``(m,)``, one
    draw at a time, in float64 on their device (Welford's update)."""

    def __init__(self, n: int, m: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.mean_a = torch.zeros(n, dtype=torch.float64, device=device)
        self.mean_b = torch.zeros(m, dtype=torch.float64, device=device)
        self.comoment = torch.zeros((n, m), dtype=torch.float64, device=device)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.double(), b.double()
        self.count += 1
        delta_a = a - self.mean_a
        self.mean_a += delta_a / self.count
        self.mean_b += (b - self.mean_b) / self.count
        self.comoment.addr_(delta_a, b - self.mean_b)

    def covariance(self) -> torch.Tensor:
        if self.count < 2:
            raise RuntimeError("a covariance needs at least two draws")
        return self.comoment / (self.count - 1)


def bif(model: torch.nn.Module, output: Any, train_batches: Sequence[Any],
        query_batches: Sequence[Any], config: BifConfig | None = None) -> np.ndarray:
    """``(training rows, queries)`` float32 BIF scores, ``-Cov(l_i, f_q)``.

    ``output`` is an output function (:mod:`attribution.output_gradients`) with a ``loss`` method
    (:class:`~attribution.output_gradients.ClassifierOutput`,
    :class:`~attribution.output_gradients.CausalLMOutput`);
    the batches are what it takes. The model's trainable parameters are sampled and put
    back afterwards."""
    config = config or BifConfig()
    config.check()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters")
    device = params[0].device
    anchor = [p.detach().clone() for p in params]
    n = sum(output.rows(b) for b in train_batches)
    m = sum(output.rows(b) for b in query_batches)
    beta = config.beta or 1 / math.log(max(n, 3))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    running = RunningCovariance(n, m, device)
    eps, gamma = config.step_size, config.localization
    was_training = model.training
    model.eval()
    try:
        for step in range(config.burn_in + config.draws * config.thin):
            batch = train_batches[step % len(train_batches)]
            model.zero_grad(set_to_none=True)
            (output.loss(model, batch).sum() * (beta * n / output.rows(batch))).backward()
            with torch.no_grad():
                for p, p0 in zip(params, anchor):
                    drift = p.grad + gamma * (p - p0)
                    noise = torch.randn(p.shape, generator=generator, device=device,
                                        dtype=p.dtype)
                    p.add_(drift, alpha=-eps / 2).add_(noise, alpha=math.sqrt(eps))
                if not all(torch.isfinite(p).all() for p in params):
                    raise InputError(f"SGLD diverged at step {step + 1}; lower step_size "
                                     f"({eps}) or raise localization ({gamma})")
            kept = step - config.burn_in
            if kept >= 0 and (kept + 1) % config.thin == 0:
                with torch.no_grad():
                    losses = torch.cat([output.loss(model, b) for b in train_batches])
                    outputs = torch.cat([output(model, b)[0] for b in query_batches])
                running.update(losses, outputs)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, anchor):
                p.copy_(p0)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return (-running.covariance()).float().cpu().numpy()


@dataclass
class BifSettings(EnsembleSettings):
    """``attribute --method bif``: the ensemble's settings and the sampler's
    (:class:`BifConfig`, seeded by ``seed``)."""

    draws: int = 1000
    burn_in: int = 100
    thin: int = 1
    step_size: float = 1e-4
    localization: float = 1000.0
    beta: float | None = None

    def check(self) -> None:
        super().check()
        self.sampler.check()

    @property
    def sampler(self) -> BifConfig:
        return BifConfig(self.draws, self.burn_in, self.thin, self.step_size,
                         self.localization, self.beta, self.seed)


class BifAttribution(EnsembleMethod):
    """BIF on a causal LM: the dense ``(pool rows, queries)`` scores, averaged over the
    ensemble's members."""

    name = "bif"
    settings_class = BifSettings

    def attribute(self, train: pa.Table | None, queries: Sequence[pa.Table]) -> ScoreMatrix:
        assert train is not None
        query = one_table(queries)
        device, train_batches, query_batches = token_batches(self.settings, train, query)
        total, count = None, 0
        for model in members(self.settings, device):
            scores = bif(model, CausalLMOutput(), train_batches, query_batches,
                         self.settings.sampler)
            total = scores if total is None else total + scores
            count += 1
        return ScoreMatrix(total / count, train["id"].to_pylist(), query["id"].to_pylist())

