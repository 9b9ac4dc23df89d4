"""What TRAK, TracIn and BIF share on a Hugging Face causal LM: their settings, the
ensemble of models they average over, and the token batches of the rows.

The ensemble is one member per LoRA checkpoint (``checkpoints``: adapters of one run, or of
independent runs, on ``model``), or the full model when no checkpoint is given: then every
``torch.nn.Linear`` weight except the output head is trained over (embeddings and norms are
held fixed, as per-example gradients cover Linear weights only; see
:mod:`models.gradients`). Examples are tokenised as every model-based scorer does
(:func:`models.lm.tokenize`, response tokens only); rows without response tokens get zero
gradients. Everything runs on ``device`` (``cuda`` when available) with no other change.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import torch

from attribution.base import Attributor, one_table
from attribution.output_gradients import OutputFunction, OutputGradients, output_gradients
from attribution.scores import InnerProducts
from dataselect import checks
from dataselect.errors import InputError
from models.lm import check_model_folder, load_causal_lm, load_tokenizer, pick_device, tokenize
from models.lora_checkpoints import (
    check_checkpoint,
    check_checkpoint_set,
    load_adapter,
    read_checkpoint_json,
)
from models.projection import PROJECTIONS

# the built-in methods over a model and its checkpoints: they take each other's settings
# keys (Attributor.shares_keys_with), the one key set they had before each had its own
ENSEMBLE_METHODS = ("trak", "tracin", "bif")


@dataclass
class EnsembleSettings:
    """What every model-based method is given: the model, its LoRA checkpoints (the
    ensemble's members), how rows become token batches, the seed and the device."""

    model: str
    checkpoints: list[str] = field(default_factory=list)
    max_length: int = 512
    batch_size: int = 8
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        self.check()
        if isinstance(self.checkpoints, str):
            self.checkpoints = [c for c in self.checkpoints.split(",") if c]

    def check(self) -> None:
        """The range checks, which need no file: a recipe checks its settings before the
        models it builds exist (the model folder and the device are checked when the
        method is built, :class:`EnsembleMethod`)."""
        checks.check_count(self.batch_size, "batch_size")
        checks.check_count(self.max_length, "max_length", minimum=2, maximum=2**20)
        checks.check_seed(self.seed)


@dataclass
class ProjectedSettings(EnsembleSettings):
    """An ensemble method whose gradients are projected (TRAK, TracIn)."""

    proj_dim: int = 2048
    projection: str = "sparse"

    def check(self) -> None:
        checks.check_count(self.proj_dim, "proj_dim", maximum=2**20)
        super().check()
        if self.projection not in PROJECTIONS:
            raise InputError(f"projection must be one of {PROJECTIONS}", field="projection")


class EnsembleMethod(Attributor):
    """A method over a causal LM and its LoRA checkpoints: the device, the model folder
    and each checkpoint folder are checked when it is built, before any row is read."""

    shares_keys_with = ENSEMBLE_METHODS

    def __init__(self, settings: EnsembleSettings) -> None:
        checks.optional(checks.check_device, settings.device, "device", here=False)
        settings.model = check_model_folder(settings.model, "model")
        settings.checkpoints = [check_checkpoint(path) for path in settings.checkpoints]
        check_checkpoint_set(settings.checkpoints, settings.model)
        super().__init__(settings)


def members(config: EnsembleSettings, device: torch.device) -> Iterator[torch.nn.Module]:
    """The ensemble's models, one at a time, their trainable weights set."""
    base = load_causal_lm(config.model, device)
    if not config.checkpoints:
        train_linear_layers(base)
        yield base.eval()
        return
    for path in config.checkpoints:
        model = load_adapter(base, path).to(device).eval()
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        yield model
        base = model.unload()  # the base weights back, without this adapter


def train_linear_layers(model: torch.nn.Module, head: str = "lm_head") -> None:
    """Train every Linear weight except the output head; freeze everything else."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith(head):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)


def _batches(tokenizer: Any, view: pa.Table, config: EnsembleSettings,
             device: torch.device) -> list[Any]:
    return [tokenize(tokenizer, view.slice(start, config.batch_size), config.max_length)
            .to(device) for start in range(0, view.num_rows, config.batch_size)]


def token_batches(config: EnsembleSettings, pool: pa.Table, queries: pa.Table
                  ) -> tuple[torch.device, list[Any], list[Any]]:
    """The device, and the pool's and the queries' token batches on it."""
    device = pick_device(config.device)
    tokenizer = load_tokenizer(config.model)
    return (device, _batches(tokenizer, pool, config, device),
            _batches(tokenizer, queries, config, device))


def member_gradients(config: ProjectedSettings, pool: pa.Table, queries: pa.Table,
                     output: Any) -> tuple[list[OutputGradients], list[OutputGradients]]:
    """Projected per-example gradients of ``output`` for the pool and the queries, one
    :class:`~attribution.output_gradients.OutputGradients` per ensemble member and side
    (member ``m``'s projection seeded by ``seed * 1000 + m``, the same on both sides)."""
    device, train, query = token_batches(config, pool, queries)
    train_grads, query_grads = [], []
    for m, model in enumerate(members(config, device)):
        seed = config.seed * 1000 + m
        train_grads.append(output_gradients(model, train, output, config.proj_dim, seed,
                                            config.projection))
        query_grads.append(output_gradients(model, query, output, config.proj_dim, seed,
                                            config.projection))
    return train_grads, query_grads


def checkpoint_learning_rate(path: str) -> float | None:
    """The mean learning rate a LoRA checkpoint recorded (``checkpoint.json``'s
    ``mean_lr``, as ``dataselect less warmup`` writes it), or None."""
    value = (read_checkpoint_json(path) or {}).get("mean_lr")
    return float(value) if isinstance(value, (int, float)) else None


class FoldedFeatures(Protocol):
    """A method fitted on the training side's gradients whose score is the inner product
    of its training and query features (:class:`attribution.trak.Trak`,
    :class:`attribution.tracin.TracIn`)."""

    def train_features(self) -> Any: ...
    def query_features(self, queries: Sequence[OutputGradients]) -> Any: ...


class InnerProductMethod(EnsembleMethod):
    """An ensemble method whose scores are inner products of features made from the
    members' projected gradients of :meth:`output`."""

    settings: ProjectedSettings

    @abstractmethod
    def output(self) -> OutputFunction:
        """The function whose gradients are taken."""

    @abstractmethod
    def fit(self, train: list[OutputGradients]) -> FoldedFeatures:
        """The method fitted on the training side's gradients, one entry per member."""

    def attribute(self, train: pa.Table | None, queries: Sequence[pa.Table]
                  ) -> InnerProducts:
        assert train is not None
        query = one_table(queries)
        train_grads, query_grads = member_gradients(self.settings, train, query,
                                                    self.output())
        fitted = self.fit(train_grads)
        return InnerProducts(fitted.train_features(), fitted.query_features(query_grads),
                             train["id"].to_pylist(), query["id"].to_pylist())

