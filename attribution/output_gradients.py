"""What TRAK, TracIn and BIF differentiate: a model's per-example output function (the
correct-class margin of a classifier, the response-token log-odds of a causal LM), its
training loss, and the projected per-example gradients of the output
(:func:`output_gradients`, through :mod:`models.gradients` and :mod:`models.projection`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from dataselect.errors import InputError
from models.gradients import LinearGradients
from models.projection import make_projection


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
