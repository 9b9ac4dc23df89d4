"""TRAK: attribution by projected output gradients and a kernel inverse (Park et al. 2023).

For each model ``m`` of an ensemble (independently trained models, or checkpoints of one
run), every example gets ``phi`` = the per-example gradient of the model's output function,
projected to ``proj_dim`` dimensions (:mod:`attribution.output_gradients`):

* classifiers: the correct-class margin, ``logit_y - logsumexp(other logits)``, with
  ``p`` = the softmax probability of the correct class;
* causal LMs: the response-token log-odds, ``sum over response tokens t of
  log(p_t / (1 - p_t))`` with ``p_t`` the probability of token ``t``, and ``p`` = the
  geometric mean of the ``p_t`` (``exp(-mean response loss)``: one number per example for
  the ``1 - p`` reweighting, which for one token is TRAK's own ``1 - p``).

The score of training row ``x`` for query ``q`` is

    score(q, x) = mean over m of  phi_q^m (Phi_m^T Phi_m + lambda_m I)^-1 phi_x^m
                  x  mean over m of (1 - p_x^m)

Both factors fold into one inner product, so the FAISS inner-product index serves the
top-k: the training side stores ``[phi_x^1, ..., phi_x^M] * mean(1 - p_x)`` and the query
side ``[phi_q^1 K_1^-1, ..., phi_q^M K_M^-1] / M`` (``K_m`` the ridged kernel).

Kernel: TRAK's ``K_m = Phi_m^T Phi_m`` (``kernel="trak"``, the default of ``attribute``
for causal LMs), or, this class's default (classifiers), the Gauss-Newton kernel
``K_m = Phi_m^T diag(p (1 - p)) Phi_m`` (``kernel="gauss_newton"``):
TRAK treats every example as a logistic loss ``-log sigmoid(f)`` of its output, whose
second derivative in ``f`` is ``p (1 - p)``, then drops that factor from the Hessian while
keeping the first derivative ``1 - p`` on the training side; keeping both makes the
kernel the Gauss-Newton Hessian of the same linearised loss. Confident examples then stop
dominating the kernel (on digits: LDS 0.838 against 0.811 for TRAK-5, the same ridge). On
a causal LM fine-tuned on a few hundred rows it does worse than TRAK's kernel (RESULTS.md).

Solving: with more rows than dimensions, ``K_m`` (``dim x dim``, float64) is factored by
Cholesky. With fewer rows ``n`` than dimensions (a fine-tuning set of a few hundred rows,
``proj_dim`` in the thousands), the Woodbury identity applies the same inverse through an
``n x n`` system, ``K^-1 v = (v - A^T (A A^T + lambda I)^-1 A v) / lambda`` with
``A = W^1/2 Phi``: the cost falls from ``O(dim^3)`` to ``O(n^2 dim)`` and the result is
the same, so a larger ``proj_dim`` (fewer projection errors) costs little there.

Ridge rule: ``lambda_m = ridge * mean(diag(K_m))``, ``ridge`` = 0.1 by default.
It is scale-free (gradients of another model or projection scale the kernel, and the ridge
with it), it is fixed before any LDS is seen, and the kernel here is nearly singular
(condition number ~1e16 on digits), so an absolute or zero ridge inverts noise.
Everything runs on the model's device in float32, the kernel in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from attribution.ensemble import InnerProductMethod, ProjectedSettings
from attribution.output_gradients import (
    CausalLMOutput,
    OutputGradients,
    check_same_rows,
    gradient_matrix,
)
from dataselect.errors import InputError

DEFAULT_RIDGE = 0.1
KERNELS = ("gauss_newton", "trak")


def ridged_kernel(phi: torch.Tensor, ridge: float, weights: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """``Phi^T W Phi + ridge * mean(diag(Phi^T W Phi)) I`` in float64, ``W`` = diag of
    ``weights`` (the identity when None)."""
    phi = phi.double()
    kernel = phi.T @ (phi if weights is None else phi * weights.double()[:, None])
    kernel.diagonal().add_(ridge * float(kernel.diagonal().mean()))
    return kernel


def _singular() -> InputError:
    return InputError("TRAK's kernel is singular; use a positive ridge", field="ridge")


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info):
        raise _singular()
    return factor


@dataclass
class KernelInverse:
    """``v -> v K^-1`` for the ridged kernel ``K = A^T A + lambda I``, ``A = W^1/2 Phi``:
    a ``dim x dim`` Cholesky factor when the rows are at least ``dim``, else the
    Woodbury form through the ``rows x rows`` system (``factor`` of ``A A^T + lambda I``
    and ``a`` kept)."""

    factor: torch.Tensor
    a: torch.Tensor | None = None
    ridge: float = 0.0

    @classmethod
    def fit(cls, phi: torch.Tensor, ridge: float, weights: torch.Tensor | None = None
            ) -> KernelInverse:
        rows, dim = phi.shape
        if rows >= dim:
            return cls(_cholesky(ridged_kernel(phi, ridge, weights)))
        a = phi.double() if weights is None else phi.double() * weights.double().sqrt()[:, None]
        gram = a @ a.T
        lam = ridge * float(gram.diagonal().sum()) / dim  # ridge * mean(diag(A^T A))
        if not lam > 0:  # a zero ridge (or zero rows) leaves the rows x rows system singular
            raise _singular()
        gram.diagonal().add_(lam)
        return cls(_cholesky(gram), a, lam)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``v K^-1`` for the rows of ``v`` (float64 ``(queries, dim)``)."""
        if self.a is None:
            return torch.cholesky_solve(v.T, self.factor).T
        inner = torch.cholesky_solve(self.a @ v.T, self.factor)  # (rows, queries)
        return (v - (self.a.T @ inner).T) / self.ridge


@dataclass
class Trak:
    """TRAK over an ensemble: :meth:`fit` on each model's training-side gradients, then
    :meth:`train_features` (what the index stores) and :meth:`query_features` (the kernel
    inverse folded in), whose inner product is the TRAK score."""

    ridge: float = DEFAULT_RIDGE
    kernel: str = "gauss_newton"
    solvers: list[KernelInverse] = field(default_factory=list, repr=False)
    train: list[torch.Tensor] = field(default_factory=list, repr=False)
    one_minus_p: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_ridge_and_kernel(self.ridge, self.kernel)

    def fit(self, models: Sequence[OutputGradients]) -> Trak:
        if not models:
            raise InputError("TRAK needs at least one model")
        check_same_rows(models)
        self.solvers, self.train = [], []
        for m in models:
            weights = m.p * (1 - m.p) if self.kernel == "gauss_newton" else None
            self.solvers.append(KernelInverse.fit(m.phi, self.ridge, weights))
            self.train.append(m.phi.float())
        self.one_minus_p = torch.stack([1 - m.p.float() for m in models]).mean(0)
        return self

    def train_features(self) -> np.ndarray:
        """``(rows, models * dim)`` float32: each model's ``phi`` times ``mean(1 - p)``."""
        self._check_fitted()
        return (torch.cat(self.train, 1) * self.one_minus_p[:, None]).cpu().numpy()

    def query_features(self, queries: Sequence[OutputGradients | torch.Tensor]) -> np.ndarray:
        """``(queries, models * dim)`` float32: ``phi_q^m K_m^-1 / M`` per model ``m``."""
        self._check_fitted()
        if len(queries) != len(self.solvers):
            raise InputError(f"{len(queries)} query gradients for {len(self.solvers)} models")
        parts = []
        for q, solver in zip(queries, self.solvers):
            phi = gradient_matrix(q).double()
            parts.append(solver.apply(phi) / len(self.solvers))
        return torch.cat(parts, 1).float().cpu().numpy()

    def _check_fitted(self) -> None:
        if self.one_minus_p is None:
            raise RuntimeError("call fit() first")


def check_ridge_and_kernel(ridge: float, kernel: str) -> None:
    """TRAK's own settings' ranges, for :class:`Trak` and :class:`TrakSettings` alike."""
    if not ridge >= 0:
        raise InputError(f"ridge must be >= 0, got {ridge}", field="ridge")
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}", field="kernel")


@dataclass
class TrakSettings(ProjectedSettings):
    """``attribute --method trak``: the ensemble's settings, the projection, and TRAK's
    ridge and kernel."""

    ridge: float = DEFAULT_RIDGE
    # TRAK's own kernel ("gauss_newton" is the other): on the causal-LM LDS benchmark it
    # beats the Gauss-Newton kernel, classifiers' default, on both seeds at every proj_dim
    kernel: str = "trak"

    def check(self) -> None:
        super().check()
        check_ridge_and_kernel(self.ridge, self.kernel)


class TrakAttribution(InnerProductMethod):
    """TRAK on a causal LM: training features (``phi`` times ``mean(1 - p)``) and query
    features (the kernel inverse folded in), whose inner product is the score."""

    name = "trak"
    settings_class = TrakSettings
    settings: TrakSettings

    def output(self) -> CausalLMOutput:
        return CausalLMOutput()

    def fit(self, train: list[OutputGradients]) -> Trak:
        return Trak(self.settings.ridge, self.settings.kernel).fit(train)
