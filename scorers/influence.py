"""TRAK, TracIn and BIF attribution for a Hugging Face causal LM (``attribute --method``).

The ensemble is one member per LoRA checkpoint (``checkpoints``: adapters of one run, or of
independent runs, on ``model``), or the full model when no checkpoint is given: then every
``torch.nn.Linear`` weight except the output head is trained over (embeddings and norms are
held fixed, as per-example gradients cover Linear weights only; see
:mod:`models.gradients`). Examples are tokenised as every model-based scorer does
(:func:`models.lm.tokenize`, response tokens only); rows without response tokens get zero
gradients. Everything runs on ``device`` (``cuda`` when available) with no other change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch

from dataselect import checks
from dataselect.errors import InputError
from models.lm import check_model_folder, load_causal_lm, load_tokenizer, pick_device, tokenize
from models.lora_checkpoints import read_checkpoint_json
from models.projection import PROJECTIONS
from scorers.bif import BifConfig, bif
from scorers.tracin import NegativeLoss, TracIn, member_weights
from scorers.trak import DEFAULT_RIDGE, KERNELS, CausalLMOutput, Trak, output_gradients

Method = Literal["trak", "tracin", "bif"]
METHODS = ("less", "trak", "tracin", "bif")


@dataclass
class InfluenceConfig:
    """Settings of ``attribute --method trak|tracin|bif`` (``-p KEY=VALUE``)."""

    model: str
    checkpoints: list[str] = field(default_factory=list)
    proj_dim: int = 2048
    ridge: float = DEFAULT_RIDGE
    # TRAK's own kernel ("gauss_newton" is the other): on the causal-LM LDS benchmark it
    # beats the Gauss-Newton kernel, classifiers' default, on both seeds at every proj_dim
    kernel: str = "trak"
    projection: str = "sparse"
    max_length: int = 512
    batch_size: int = 8
    seed: int = 0
    device: str | None = None
    # BIF's sampler (scorers.bif.BifConfig)
    draws: int = 1000
    burn_in: int = 100
    thin: int = 1
    step_size: float = 1e-4
    localization: float = 1000.0
    beta: float | None = None

    def __post_init__(self) -> None:
        check_settings(vars(self))
        checks.optional(checks.check_device, self.device, "device", here=False)
        if isinstance(self.checkpoints, str):
            self.checkpoints = [c for c in self.checkpoints.split(",") if c]
        self.model = check_model_folder(self.model, "model")

    @property
    def bif_config(self) -> BifConfig:
        return BifConfig(self.draws, self.burn_in, self.thin, self.step_size,
                         self.localization, self.beta, self.seed)


def check_settings(values: dict[str, Any]) -> None:
    """The range checks of :class:`InfluenceConfig`'s numbers and choices, without its
    model: a recipe checks its settings before the models it builds exist."""
    given = {f.name: f.default for f in fields(InfluenceConfig) if f.default is not MISSING}
    given.update(values)
    checks.check_count(given["proj_dim"], "proj_dim", maximum=2**20)
    checks.check_count(given["batch_size"], "batch_size")
    checks.check_count(given["max_length"], "max_length", minimum=2, maximum=2**20)
    checks.check_seed(given["seed"])
    if given["projection"] not in PROJECTIONS:
        raise InputError(f"projection must be one of {PROJECTIONS}", field="projection")
    if not given["ridge"] >= 0:
        raise InputError(f"ridge must be >= 0, got {given['ridge']}", field="ridge")
    if given["kernel"] not in KERNELS:
        raise InputError(f"kernel must be one of {KERNELS}, got {given['kernel']!r}",
                         field="kernel")
    BifConfig(given["draws"], given["burn_in"], given["thin"], given["step_size"],
              given["localization"], given["beta"], given["seed"]).check()


def members(config: InfluenceConfig, device: torch.device) -> Iterator[torch.nn.Module]:
    """The ensemble's models, one at a time, their trainable weights set."""
    base = load_causal_lm(config.model, device)
    if not config.checkpoints:
        train_linear_layers(base)
        yield base.eval()
        return
    from peft import PeftModel

    for path in config.checkpoints:
        model = PeftModel.from_pretrained(base, path).to(device).eval()
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


def _batches(tokenizer: Any, view: pa.Table, config: InfluenceConfig,
             device: torch.device) -> list[Any]:
    return [tokenize(tokenizer, view.slice(start, config.batch_size), config.max_length)
            .to(device) for start in range(0, view.num_rows, config.batch_size)]


def member_gradients(config: InfluenceConfig, pool: pa.Table, queries: pa.Table,
                     output: Any) -> tuple[list[Any], list[Any]]:
    """Projected per-example gradients of ``output`` for the pool and the queries, one
    :class:`scorers.trak.OutputGradients` per ensemble member and side (member ``m``'s
    projection seeded by ``seed * 1000 + m``, the same on both sides)."""
    device = pick_device(config.device)
    tokenizer = load_tokenizer(config.model)
    train, query = _batches(tokenizer, pool, config, device), \
        _batches(tokenizer, queries, config, device)
    train_grads, query_grads = [], []
    for m, model in enumerate(members(config, device)):
        seed = config.seed * 1000 + m
        train_grads.append(output_gradients(model, train, output, config.proj_dim, seed,
                                            config.projection))
        query_grads.append(output_gradients(model, query, output, config.proj_dim, seed,
                                            config.projection))
    return train_grads, query_grads


def trak_features(config: InfluenceConfig, pool: pa.Table, queries: pa.Table
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(training features, query features)``: float32 rows whose inner product is the
    TRAK score (:class:`scorers.trak.Trak`) of the pool rows for the queries."""
    train_grads, query_grads = member_gradients(config, pool, queries, CausalLMOutput())
    trak = Trak(config.ridge, config.kernel).fit(train_grads)
    return trak.train_features(), trak.query_features(query_grads)


def checkpoint_learning_rate(path: str) -> float | None:
    """The mean learning rate a LoRA checkpoint recorded (``checkpoint.json``'s
    ``mean_lr``, as ``dataselect less warmup`` writes it), or None."""
    value = (read_checkpoint_json(path) or {}).get("mean_lr")
    return float(value) if isinstance(value, (int, float)) else None


def tracin_features(config: InfluenceConfig, pool: pa.Table, queries: pa.Table
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(training features, query features)``: float32 rows whose inner product is the
    TracIn score (:class:`scorers.tracin.TracIn`): projected response-loss gradients, each
    member weighted by its checkpoint's mean learning rate when all record one."""
    train_grads, query_grads = member_gradients(config, pool, queries,
                                                NegativeLoss(CausalLMOutput()))
    rates = [checkpoint_learning_rate(path) for path in config.checkpoints] or [None]
    tracin = TracIn(member_weights(rates)).fit(train_grads)
    return tracin.train_features(), tracin.query_features(query_grads)


def bif_scores(config: InfluenceConfig, pool: pa.Table, queries: pa.Table) -> np.ndarray:
    """``(pool rows, queries)`` float32 BIF scores, averaged over the ensemble's members."""
    device = pick_device(config.device)
    tokenizer = load_tokenizer(config.model)
    train, query = _batches(tokenizer, pool, config, device), \
        _batches(tokenizer, queries, config, device)
    total, count = None, 0
    for model in members(config, device):
        scores = bif(model, CausalLMOutput(), train, query, config.bif_config)
        total = scores if total is None else total + scores
        count += 1
    return total / count
