"""BADS for a generic torch classifier: data point weights for an in-memory dataset.

The driver of :class:`scorers.bads.sampler.BadsSampler` for a model that maps a batch of
inputs to logits (or any per-example loss through ``loss_fn``). Each step runs the train
and meta batches through the model in one forward pass (one pass costs less than two on
small batches), takes per-example losses and the train rows' weights, and hands them to
the sampler.

The weight network's embedding of an example is, by default, the input of the model's last
``nn.Linear`` (its penultimate features, detached, L2-normalised so the weight network's
step size does not depend on the feature scale). With ``with_label`` the embedding is the
outer product of those features and the one-hot label: a linear map of a plain
concatenation cannot tell whether a label agrees with the features (agreement is a
product of the two), while a linear map of the outer product is one linear scorer per
class, which can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dataselect.errors import InputError
from scorers.bads.sampler import (
    WEIGHT_KINDS,
    BadsConfig,
    BadsSampler,
    FreeWeights,
    WeightKind,
    WeightNetwork,
    free_read_off,
    network_read_off,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


class PenultimateFeatures:
    """Captures the input of ``model``'s last ``nn.Linear`` on every forward pass."""

    def __init__(self, model: torch.nn.Module):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise InputError("the model has no nn.Linear layer to take penultimate features "
                             "from; pass features=... or weights='free'")
        self.dim = linears[-1].in_features
        self.value: torch.Tensor | None = None
        self.handle = linears[-1].register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        self.value = inputs[0].detach()

    def close(self) -> None:
        self.handle.remove()


def weight_embedding(features: torch.Tensor, labels: torch.Tensor | None, classes: int
                     ) -> torch.Tensor:
    """Normalised features, or their outer product with the one-hot label."""
    features = torch.nn.functional.normalize(features.float(), dim=1)
    if labels is None:
        return features
    onehot = torch.nn.functional.one_hot(labels, classes).to(features.dtype)
    return (features[:, :, None] * onehot[:, None, :]).flatten(1)


@dataclass
class ClassifierFit:
    """A finished BADS run: ``weights`` are the training examples' final weights (the
    average over the kept samples); ``score`` weighs new examples with the network."""

    weights: np.ndarray
    model: torch.nn.Module
    summary: dict[str, Any]
    warnings: list[str]
    weight_kind: str
    samples: list[dict[str, torch.Tensor]] = field(repr=False)
    with_label: bool = True
    classes: int = 0

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> np.ndarray:
        """Weights of examples not seen in training (weight network only)."""
        if self.weight_kind != "network":
            raise InputError("free per-example weights exist for training examples only")
        hook = PenultimateFeatures(self.model)
        try:
            self.model.eval()
            self.model(x)
            embedding = weight_embedding(hook.value, y if self.with_label else None,
                                         self.classes)
        finally:
            hook.close()
        return network_read_off(self.samples, embedding)


def fit_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   meta_x: torch.Tensor, meta_y: torch.Tensor, config: BadsConfig,
                   weights: WeightKind = "network", with_label: bool = True,
                   loss_fn: LossFn = cross_entropy_per_example,
                   progress: Callable[[int], None] | None = None) -> ClassifierFit:
    """Sample θ and the weights of ``(x, y)`` jointly, guided by the meta set."""
    if weights not in WEIGHT_KINDS:
        raise InputError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}",
                         field="weights")
    if len(x) != len(y) or len(meta_x) != len(meta_y):
        raise InputError("inputs and labels differ in length")
    if len(meta_x) == 0:
        raise InputError("the meta set is empty", field="meta")
    config.check()
    torch.manual_seed(config.seed)
    classes = int(max(int(y.max()), int(meta_y.max())) + 1)
    hook = PenultimateFeatures(model) if weights == "network" else None
    if hook is not None:
        dim = hook.dim * (classes if with_label else 1)
        weight_model: torch.nn.Module = WeightNetwork(dim, config.beta)
    else:
        weight_model = FreeWeights(len(x), config.beta)
    sampler = BadsSampler(list(model.parameters()), weight_model, len(x), len(meta_x), config)
    rng = np.random.default_rng(config.seed)
    order = _epochs(rng, len(x), config.batch_size)
    model.train()
    try:
        for _ in range(config.steps):
            rows = torch.as_tensor(next(order))
            meta_rows = torch.as_tensor(rng.choice(len(meta_x),
                                                   min(config.meta_batch_size, len(meta_x)),
                                                   replace=False))
            logits = model(torch.cat([x[rows], meta_x[meta_rows]]))
            loss = loss_fn(logits, torch.cat([y[rows], meta_y[meta_rows]]))
            if hook is not None:
                embedding = weight_embedding(hook.value[:len(rows)],
                                             y[rows] if with_label else None, classes)
                batch_weights = weight_model(embedding)
            else:
                batch_weights = weight_model(rows)
            sampler.step(loss[:len(rows)], batch_weights, loss[len(rows):])
            if progress is not None:
                progress(1)
    finally:
        if hook is not None:
            hook.close()
    model.eval()
    samples = sampler.weight_samples()
    fit = ClassifierFit(np.zeros(0), model, sampler.summary(), [], weights, samples,
                        with_label, classes)
    if weights == "network":
        fit.weights = fit.score(x, y)
    else:
        fit.weights = free_read_off(samples)
    fit.warnings = sampler.diagnose(fit.weights)
    fit.summary["weight_mean"] = round(float(fit.weights.mean()), 5)
    return fit


def train_uniform(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  config: BadsConfig, loss_fn: LossFn = cross_entropy_per_example
                  ) -> torch.nn.Module:
    """Plain training with every example weighted 1, with the optimiser, learning rate,
    steps, batch size and seed of ``config``: what BADS is compared against."""
    torch.manual_seed(config.seed)
    make = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
    optimizer = make(model.parameters(), lr=config.lr_theta)
    order = _epochs(np.random.default_rng(config.seed), len(x), config.batch_size)
    model.train()
    for _ in range(config.steps):
        rows = torch.as_tensor(next(order))
        loss = loss_fn(model(x[rows]), y[rows]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def _epochs(rng: np.random.Generator, count: int, batch_size: int):
    """Batches of row indices, each row once per epoch, reshuffled every epoch."""
    while True:
        order = rng.permutation(count)
        for start in range(0, count, batch_size):
            yield order[start:start + batch_size]

