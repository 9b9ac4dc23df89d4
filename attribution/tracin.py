"""TracIn over an ensemble: attribution by inner products of training-loss gradients.

TracIn (Pruthi et al. 2020) credits training row ``x`` for query ``q`` with the sum, over
checkpoints ``m`` of a run, of the learning rate times ``g_q^m . g_x^m``, ``g`` being the
gradient of the example's *training loss* (cross-entropy for classifiers, the mean
response-token loss for causal LMs). Here a member ``m`` is a checkpoint of one run or an
independently trained model, each gradient is projected to ``proj_dim`` dimensions
(:mod:`models.projection`, one seed per member), and

    score(q, x) = sum over m of  w_m (P_m g_q^m) . (P_m g_x^m)

with ``w_m`` the member's weight: its mean learning rate, normalised to sum to 1, when
every member records one (LESS warmup checkpoints do), else ``1 / M``. A positive score
means a gradient step on ``x`` lowers ``q``'s loss.

Why ship it beside TRAK: it has no kernel and no ridge, fits nothing on the rows (so it
grows with them), and costs one backward pass per row and member; on the causal-LM LDS
benchmark (``benchmarks/bench_lds_lm.py``) it is the fastest 5-model method. It is not the
most accurate there: TRAK leads it once ``proj_dim`` is 2048 or more (RESULTS.md); at 512
it led every TRAK variant, which is why it was added.

Like :class:`attribution.trak.Trak`, the score folds into one inner product so the FAISS
inner-product index serves the top-k: the training side stores ``[P_1 g_x^1, ...,
P_M g_x^M]`` and the query side ``[w_1 P_1 g_q^1, ..., w_M P_M g_q^M]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from attribution.ensemble import InnerProductMethod, ProjectedSettings, checkpoint_learning_rate
from attribution.output_gradients import CausalLMOutput, check_same_rows, gradient_matrix
from dataselect.errors import InputError


class LossFunction(Protocol):
    """An output function (:class:`attribution.output_gradients.OutputFunction`) that also knows the
    per-example training loss."""

    def rows(self, batch: Any) -> int: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...


class NegativeLoss:
    """The output function ``-loss(example)``, with ``p`` = 0: gradients of it through
    :func:`attribution.output_gradients.output_gradients` are minus the loss gradients (the
    sign cancels in every inner product of two of them)."""

    def __init__(self, output: LossFunction) -> None:
        self.output = output

    def rows(self, batch: Any) -> int:
        return self.output.rows(batch)

    def __call__(self, model: torch.nn.Module, batch: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        value = -self.output.loss(model, batch)
        return value, torch.zeros_like(value.detach())


def member_weights(learning_rates: Sequence[float | None]) -> list[float]:
    """Each member's weight: the learning rates normalised to sum to 1 when every member
    has a positive one, else equal weights (independently trained models, or checkpoints
    that did not record their learning rate)."""
    if not learning_rates:
        raise InputError("TracIn needs at least one model")
    if all(lr is not None and lr > 0 for lr in learning_rates):
        total = float(sum(learning_rates))  # type: ignore[arg-type]
        return [float(lr) / total for lr in learning_rates]  # type: ignore[arg-type]
    return [1.0 / len(learning_rates)] * len(learning_rates)


@dataclass
class TracIn:
    """:meth:`fit` on each member's projected training-row loss gradients, then
    :meth:`train_features` (what the index stores) and :meth:`query_features` (the member
    weights folded in), whose inner product is the TracIn score."""

    weights: list[float] | None = None
    train: list[torch.Tensor] = field(default_factory=list, repr=False)

    def fit(self, members: Sequence[Any]) -> TracIn:
        if not members:
            raise InputError("TracIn needs at least one model")
        check_same_rows(members)
        if self.weights is None:
            self.weights = member_weights([None] * len(members))
        if len(self.weights) != len(members):
            raise InputError(f"{len(self.weights)} weights for {len(members)} models")
        self.train = [gradient_matrix(m).float() for m in members]
        return self

    def train_features(self) -> np.ndarray:
        """``(rows, models * dim)`` float32: the members' gradients side by side."""
        self._check_fitted()
        return torch.cat(self.train, 1).cpu().numpy()

    def query_features(self, queries: Sequence[Any]) -> np.ndarray:
        """``(queries, models * dim)`` float32: ``w_m P_m g_q^m`` per member ``m``."""
        self._check_fitted()
        if len(queries) != len(self.train):
            raise InputError(f"{len(queries)} query gradients for {len(self.train)} models")
        assert self.weights is not None
        parts = [gradient_matrix(q).float() * w for q, w in zip(queries, self.weights)]
        return torch.cat(parts, 1).cpu().numpy()

    def _check_fitted(self) -> None:
        if not self.train:
            raise RuntimeError("call fit() first")


@dataclass
class TracInSettings(ProjectedSettings):
    """``attribute --method tracin``: the ensemble's settings and the projection (the
    members' weights come from their checkpoints)."""


class TracInAttribution(InnerProductMethod):
    """TracIn on a causal LM: projected response-loss gradients, each member weighted by
    its checkpoint's mean learning rate when all record one."""

    name = "tracin"
    settings_class = TracInSettings

    def output(self) -> NegativeLoss:
        return NegativeLoss(CausalLMOutput())

    def fit(self, train: list[Any]) -> TracIn:
        rates = [checkpoint_learning_rate(p) for p in self.settings.checkpoints] or [None]
        return TracIn(member_weights(rates)).fit(train)

