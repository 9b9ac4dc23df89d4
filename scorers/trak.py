"""TRAK: attribution by projected output gradients and a kernel inverse (Park et al. 2023).

For each model ``m`` of an ensemble (independently trained models, or checkpoints of one
run), every example gets ``phi`` = the per-example gradient of the model's output function,
projected to ``proj_dim`` dimensions (:mod:`models.gradients`, :mod:`models.projection`):

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dataselect.errors import InputError
from models.gradients import LinearGradients
from models.projection import make_projection

DEFAULT_RIDGE = 0.1


class OutputFunction(Protocol):
    """What TRAK differentiates: per-example outputs (with gradient) and ``p``."""

    def rows(self, batch: Any) -> int: ...
    def __call__(self, model: torch.nn.Module, batch: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the logsumexp of the other logits, per row."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_true = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
    return true - torch.logsumexp(logits.masked_fill(is_true, float("-inf")), dim=-1)


class ClassifierOutput:
    """Batches are ``(x, y)``: the correct-class margin, ``p`` = softmax of the true class."""

    def rows(self, batch: Any) -> int:
        return len(batch[1])

    def __call__(self, model: torch.nn.Module, batch: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = model(x)
        p = torch.softmax(logits.detach().float(), -1).gather(1, y[:, None])[:, 0]
        return margin(logits, y), p

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


class CausalLMOutput:
    """Batches are :class:`models.lm.TokenBatch`: summed response-token log-odds, ``p`` =
    the geometric mean probability of the response tokens."""

    def rows(self, batch: Any) -> int:
        return batch.input_ids.shape[0]

    def token_logp(self, model: torch.nn.Module, batch: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        shifted = logits[:, :-1].float()
        logp = torch.log_softmax(shifted, -1).gather(
            -1, batch.input_ids[:, 1:, None])[..., 0]
        return logp, batch.loss_mask[:, 1:].to(logp.dtype)

    def __call__(self, model: torch.nn.Module, batch: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        logp, mask = self.token_logp(model, batch)
        # log(p / (1 - p)) = logp - log(-expm1(logp)); logp < 0 kept off 0 for the log
        safe = logp.clamp(max=-1e-6)
        odds = (safe - torch.log(-torch.expm1(safe))) * mask
        count = mask.sum(1).clamp(min=1)
        p = torch.exp((logp.detach() * mask).sum(1) / count)
        return odds.sum(1), p

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Mean response-token loss per row (0 for rows without response tokens)."""
        logp, mask = self.token_logp(model, batch)
        return -(logp * mask).sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class OutputGradients:
    """Projected per-example output gradients of one model: ``phi`` ``(rows, dim)`` and
    ``p`` ``(rows,)``, both on the model's device."""

    phi: torch.Tensor
    p: torch.Tensor


def output_gradients(model: torch.nn.Module, batches: Iterable[Any], output: OutputFunction,
                     proj_dim: int, seed: int = 0, projection: str = "sparse"
                     ) -> OutputGradients:
    """``phi`` and ``p`` of every row of ``batches`` (one forward and one backward pass per
    batch, :class:`models.gradients.LinearGradients`; every trainable parameter must be
    a ``torch.nn.Linear`` weight, as in LoRA and MLPs). The projection is seeded by
    ``seed`` and lives on the model's device."""
    grads = LinearGradients(model)
    params = dict(model.named_parameters())
    device = params[grads.names[0]].device
    project = make_projection(projection, [params[n].numel() for n in grads.names], proj_dim,
                              seed, device)
    phis, ps = [], []
    for batch in batches:
        rows = output.rows(batch)
        kept: dict[str, torch.Tensor] = {}

        def run(batch: Any = batch, kept: dict = kept) -> torch.Tensor:
            f, kept["p"] = output(model, batch)
            return f

        per_example = grads.per_example(rows, run)
        phis.append(project.project([per_example.pop(n).reshape(rows, -1).float()
                                     for n in grads.names]))
        ps.append(kept["p"])
    if not phis:
        raise InputError("no examples to compute gradients for")
    return OutputGradients(torch.cat(phis), torch.cat(ps))


def gradient_matrix(gradients: OutputGradients | torch.Tensor) -> torch.Tensor:
    """The ``(rows, dim)`` tensor of one model's gradients, given whole or as its ``phi``."""
    return gradients.phi if isinstance(gradients, OutputGradients) else gradients


def check_same_rows(models: Sequence[OutputGradients | torch.Tensor]) -> None:
    """Every member's training side must cover the same rows, in the same order."""
    rows = {len(gradient_matrix(m)) for m in models}
    if len(rows) != 1:
        raise InputError(f"the models saw different numbers of rows: {sorted(rows)}")


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
        if not self.ridge >= 0:
            raise InputError(f"ridge must be >= 0, got {self.ridge}", field="ridge")
        if self.kernel not in KERNELS:
            raise InputError(f"kernel must be one of {KERNELS}, got {self.kernel!r}",
                             field="kernel")

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
