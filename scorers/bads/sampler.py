"""BADS: instance weights and model parameters sampled jointly by SGLD.

Xu, Kim, Lee, Martinez and Hospedales, "A Bayesian Approach to Data Point Selection"
(NeurIPS 2024). Instead of a bi-level optimisation, the weights ``w`` of the training
examples and the model parameters ``θ`` are two random variables of one model:

    p(w)            ∝ exp(−(Σ_i w_i − ⌊N_t·β⌋)² / 2σ²)      budget prior on the weights' sum
    p(θ | w, D_t)   ∝ p(θ) Π_i exp(−w_i · l(z_i; θ))          p(θ) = N(0, s² I)
    p(D_m | θ)      ∝ Π_j exp(−l(z_j^m; θ))                  the meta set (the target)

and one minibatch SGLD step, with a train batch ``B_t`` and a meta batch ``B_m``, is

    θ ← θ + η/2 ∇_θ[log p(θ) − ρ_θ^t N_t E_Bt[w_i l_i] − ρ_θ^m N_m E_Bm[l_j^m]] + ε_θ √η
    w ← w + η/2 ∇_w[log p(w) − ρ_w^t N_t E_Bt[w_i l_i]] + ε_w √η

where in a minibatch the prior's sum is estimated as Σ_Bt w_i + (N_t − |B_t|)·w̄, with w̄
the mean of the last ``s_avg`` batch means, held constant. As in the paper, η = 1 is
applied through an ordinary optimiser (Adam or SGD) with its own learning rates, and the
injected noise has a fixed small standard deviation (``noise``) rather than √η.

The weights are ``w_i = sigmoid(Linear(e_i))`` of an embedding ``e_i`` of the example
(:class:`WeightNetwork`; it scores examples never seen in training), or free per-example
parameters (:class:`FreeWeights`). This module knows nothing about data: a driver computes
per-example losses and weights for a step and hands them to :meth:`BadsSampler.step`
(:mod:`scorers.bads.classifier` for torch classifiers, :mod:`scorers.bads.scorer` for causal LMs).

The paper's failure modes are checked, not silently produced: weights collapsing to 0
(a weak budget prior, large σ), a weight mean far from the budget β, weights that never
separate, and θ blowing up under the N_t factor (an error when a loss or gradient is no
longer finite). See :meth:`BadsSampler.diagnose`.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from dataselect import checks
from dataselect.errors import InputError

WeightKind = Literal["network", "free"]
WEIGHT_KINDS = ("network", "free")
OPTIMIZERS = ("adam", "sgd")
# the largest weight learning rate a run is expected to use: an optimizer step of 1 moves a
# weight's logit by about 1 a step (Adam), past which its steps overshoot
USUAL_MAX_LR_W = 1.0


class BadsWarning(UserWarning):
    """A failure mode of the paper was detected in a fit (the message has the numbers)."""


class BadsDivergedError(InputError):
    """θ or the weights stopped being finite (the N_t factor made the step too large).
    An input error: the settings cannot be used on this data, and the command line gives
    its one line and exit 2 (it was a traceback)."""


@dataclass
class BadsConfig:
    """SGLD settings. Marked *paper* where the value is the paper's; the rest were chosen
    on this project's digits and instruction runs (README, "BADS")."""

    beta: float = 0.05             # paper (instruction tuning): fraction of the pool useful
    sigma: float = 1.0             # paper uses ≈1e-5; here it drowned the data term (README)
    rho_theta_train: float = 1.0   # paper: ρ_θ^t (lower it when labels are noisy)
    rho_theta_meta: float = 1.0    # paper: ρ_θ^m
    rho_w_train: float = 1.0       # paper: ρ_w^t
    theta_prior_std: float = 1.0   # p(θ) = N(0, s² I)
    noise: float = 1e-5            # paper: std of the injected Gaussian noise per step
    optimizer: str = "adam"
    lr_theta: float = 1e-3
    lr_w: float = 1e-3
    steps: int = 1000
    batch_size: int = 32
    meta_batch_size: int = 8
    s_avg: int = 10                # paper: window of batch means for w̄
    samples: int = 1               # read-off: average of the last `samples` thinned draws
    thin: int = 10
    seed: int = 0

    def check(self) -> None:
        """Ranges from :mod:`dataselect.checks`: finite numbers (a NaN weight would pass a
        ``< 0`` test and turn every SGLD step into NaN) and integer counts, not booleans."""
        checks.check_fraction(self.beta, "beta")
        for name in ("sigma", "theta_prior_std", "lr_theta", "lr_w"):
            checks.check_positive(getattr(self, name), name)
        for name in ("rho_theta_train", "rho_theta_meta", "rho_w_train", "noise"):
            checks.check_nonnegative(getattr(self, name), name)
        for name in ("steps", "batch_size", "meta_batch_size", "s_avg", "samples", "thin"):
            checks.check_count(getattr(self, name), name)
        checks.check_seed(self.seed)
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
                             field="optimizer")
        if (self.samples - 1) * self.thin >= self.steps:
            raise InputError(f"{self.samples} samples thinned by {self.thin} need more than "
                             f"{self.steps} steps", field="samples")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class WeightNetwork(torch.nn.Module):
    """``w = sigmoid(Linear(e))``; starts at ``w = β`` for every example (zero slope), so
    the fit begins on budget and only the data moves the weights apart."""

    def __init__(self, dim: int, beta: float):
        super().__init__()
        self.linear = torch.nn.Linear(dim, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.constant_(self.linear.bias, _logit(beta))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(embedding).squeeze(-1))


class FreeWeights(torch.nn.Module):
    """One free parameter per training example, ``w_i = sigmoid(u_i)``, starting at β."""

    def __init__(self, count: int, beta: float):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.full((count,), _logit(beta)))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits[index])


@torch.no_grad()
def network_read_off(samples: list[dict[str, Any]], embedding: torch.Tensor) -> np.ndarray:
    """Weights of ``embedding`` rows averaged over kept :class:`WeightNetwork` states
    (tensors or arrays)."""
    network = WeightNetwork(embedding.shape[1], 0.5)
    total = torch.zeros(len(embedding))
    for state in samples:
        network.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        total += network(embedding.float().cpu())
    return (total / len(samples)).numpy()


def free_read_off(samples: list[dict[str, Any]]) -> np.ndarray:
    """Every training example's weight averaged over kept :class:`FreeWeights` states."""
    return np.mean([torch.sigmoid(torch.as_tensor(s["logits"])).cpu().numpy()
                    for s in samples], axis=0)


@dataclass
class StepRecord:
    step: int
    energy: float
    train_loss: float
    meta_loss: float
    weight_mean: float
    budget_gap: float        # estimated Σw − ⌊N_t β⌋
    theta_grad_norm: float


class BadsSampler:
    """Runs the joint SGLD updates of θ (``theta``) and of the weight model's parameters.

    Call :meth:`step` once per train + meta batch with per-example losses computed by the
    model *with* gradients and the batch's weights from ``weights`` (also with gradients).
    The sampler keeps the last ``config.samples`` weight-model states, thinned by
    ``config.thin`` steps, for the read-off (:meth:`weight_samples`).
    """

    def __init__(self, theta: list[torch.nn.Parameter], weights: torch.nn.Module,
                 n_train: int, n_meta: int, config: BadsConfig):
        config.check()
        if n_train < 1 or n_meta < 1:
            raise InputError(f"BADS needs training and meta examples, got {n_train} and "
                             f"{n_meta}")
        self.theta = [p for p in theta if p.requires_grad]
        self.weights = weights
        self.n_train, self.n_meta, self.config = n_train, n_meta, config
        self.budget = math.floor(n_train * config.beta)
        groups = [{"params": self.theta, "lr": config.lr_theta},
                  {"params": list(weights.parameters()), "lr": config.lr_w}]
        make = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
        self.optimizer = make(groups)
        self.recent_means: deque[float] = deque(maxlen=config.s_avg)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.steps_done = 0
        self.history: list[StepRecord] = []
        self._samples: list[dict[str, torch.Tensor]] = []
        self._theta_norm0 = self._theta_norm()
        self.max_theta_norm_ratio = 1.0

    def energy(self, train_loss: torch.Tensor, weights: torch.Tensor,
               meta_loss: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The negative log joint density of this step's minibatch estimate, arranged so
        that one backward pass gives each variable its own gradient: θ sees the weights as
        constants (ρ_θ^t), the weights see the losses as constants (ρ_w^t). Also returns
        the budget gap Σw − ⌊N_t β⌋ of the minibatch estimate."""
        c = self.config
        batch = train_loss.shape[0]
        w_bar = (sum(self.recent_means) / len(self.recent_means) if self.recent_means
                 else float(weights.detach().mean()))
        total = weights.sum() + (self.n_train - batch) * w_bar
        theta_prior = sum((p.float() ** 2).sum() for p in self.theta) / (2 * c.theta_prior_std ** 2)
        theta_data = (c.rho_theta_train * self.n_train * (weights.detach() * train_loss).mean()
                      + c.rho_theta_meta * self.n_meta * meta_loss.mean())
        weight_data = c.rho_w_train * self.n_train * (weights * train_loss.detach()).mean()
        weight_prior = (total - self.budget) ** 2 / (2 * c.sigma ** 2)
        gap = float(total.detach()) - self.budget
        return theta_prior + theta_data + weight_data + weight_prior, gap

    def theta_loss_coefficients(self, weights: torch.Tensor, meta_rows: int
                                ) -> tuple[torch.Tensor, float]:
        """∂U/∂L of each train row and of each meta row in this step's energy: θ's data
        gradient is Σ coefficient · ∇θ L over the batch's rows. The energy is linear in
        the losses, so a caller may backpropagate ``coefficient · loss`` chunk by chunk
        (between :meth:`begin_step` and ``step(..., accumulated=True)``) and hold one
        chunk's activations at a time instead of the whole batch's."""
        c = self.config
        return (c.rho_theta_train * self.n_train * weights.detach() / weights.shape[0],
                c.rho_theta_meta * self.n_meta / meta_rows)

    def begin_step(self) -> None:
        """Clear the gradients before a step whose loss gradients the caller accumulates."""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, train_loss: torch.Tensor, weights: torch.Tensor, meta_loss: torch.Tensor,
             accumulated: bool = False) -> StepRecord:
        """One SGLD update. ``accumulated``: the caller has already backpropagated the
        losses' θ terms (see :meth:`theta_loss_coefficients`) and passes them detached;
        the prior and the weights' terms are added here."""
        if train_loss.shape != weights.shape or train_loss.ndim != 1:
            raise ValueError(f"train_loss {tuple(train_loss.shape)} and weights "
                             f"{tuple(weights.shape)} must be one value per train example")
        if accumulated and (train_loss.requires_grad or meta_loss.requires_grad):
            raise ValueError("accumulated steps take detached losses (their θ gradients are "
                             "already in place)")
        energy, gap = self.energy(train_loss, weights, meta_loss)
        if not torch.isfinite(energy):
            raise BadsDivergedError(self._diverged(f"the energy is {float(energy.detach())}"))
        if not accumulated:
            self.optimizer.zero_grad(set_to_none=True)
        energy.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.theta, float("inf")))
        if not math.isfinite(grad_norm):
            raise BadsDivergedError(self._diverged(f"the θ gradient norm is {grad_norm}"))
        self.optimizer.step()
        self._add_noise()
        self.recent_means.append(float(weights.detach().mean()))
        self.steps_done += 1
        record = StepRecord(self.steps_done, float(energy.detach()),
                            float(train_loss.detach().mean()), float(meta_loss.detach().mean()),
                            self.recent_means[-1], gap, grad_norm)
        self.history.append(record)
        if self.steps_done % self.config.thin == 0:
            self._track_theta()
        self._keep_sample()
        return record

    @torch.no_grad()
    def _add_noise(self) -> None:
        if self.config.noise == 0:
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                noise = torch.randn(p.shape, generator=self.generator, dtype=p.dtype)
                p.add_(noise.to(p.device), alpha=self.config.noise)

    def _theta_norm(self) -> float:
        with torch.no_grad():
            return math.sqrt(sum(float((p.float() ** 2).sum()) for p in self.theta)) or 1.0

    def _track_theta(self) -> None:
        norm = self._theta_norm()
        if not math.isfinite(norm):
            raise BadsDivergedError(self._diverged(f"‖θ‖ is {norm}"))
        self.max_theta_norm_ratio = max(self.max_theta_norm_ratio, norm / self._theta_norm0)

    def _keep_sample(self) -> None:
        """Keep the weight model's state at the steps of the read-off: the last step and
        every ``thin``-th step before it, ``samples`` in all."""
        c = self.config
        from_end = c.steps - self.steps_done
        if 0 <= from_end < c.samples * c.thin and from_end % c.thin == 0:
            self._samples.append({k: v.detach().clone()
                                  for k, v in self.weights.state_dict().items()})

    def weight_samples(self) -> list[dict[str, torch.Tensor]]:
        """The kept weight-model states (the current one when the run stopped early)."""
        if self._samples:
            return list(self._samples)
        return [{k: v.detach().clone() for k, v in self.weights.state_dict().items()}]

    def _diverged(self, what: str) -> str:
        # adam is the default: suggesting it to a run that used it sent users in a circle
        other = "" if self.config.optimizer == "adam" else ", or use optimizer=adam"
        return (f"BADS diverged at step {self.steps_done + 1}: {what} (N_t={self.n_train} "
                f"multiplies the θ gradient; lower lr_theta={self.config.lr_theta} or "
                f"rho_theta_train={self.config.rho_theta_train}{other})")

    def diagnose(self, weights: np.ndarray) -> list[str]:
        """Warnings (with the numbers) for the paper's failure modes, given the final
        weights of the training examples; each is also issued as a :class:`BadsWarning`."""
        c = self.config
        found = []
        mean = float(weights.mean()) if len(weights) else float("nan")
        # a weight step far above the usual ones overshoots: the weights saturate, and the
        # advice to raise lr_w or lower sigma pointed the wrong way (lr_w=1e30, pass 18)
        overshoot = (f"; lr_w={c.lr_w} is {c.lr_w / USUAL_MAX_LR_W:.3g}× the largest usual "
                     "step, so the weights' steps overshoot: lower lr_w first"
                     if c.lr_w > USUAL_MAX_LR_W else "")
        collapsed = len(weights) and (mean < c.beta / 10 or float(weights.max()) < 0.05)
        if collapsed:
            found.append(
                f"weights collapsed towards 0: mean {mean:.3g}, max {float(weights.max()):.3g} "
                f"for a budget beta={c.beta}; the budget prior (sigma={c.sigma}) is too weak "
                f"against the data term, lower sigma{overshoot}")
        elif len(weights) and abs(mean / c.beta - 1) > 0.5:
            found.append(
                f"weights average {mean:.3g}, far from the budget beta={c.beta}: the selection "
                "is sensitive to beta; check it against the share of the pool you expect to "
                "be useful, or lower sigma to hold the budget")
        # after an overshoot the collapse's line names the cause: raising lr_w makes it worse
        if len(weights) > 1 and float(weights.std()) < 1e-3 and not (overshoot and collapsed):
            found.append(
                f"weights did not separate: std {float(weights.std()):.2e} over {len(weights)} "
                f"examples after {self.steps_done} steps; raise lr_w={c.lr_w} or steps, or "
                f"raise sigma={c.sigma} if the budget prior dominates")
        if self.max_theta_norm_ratio > 10:
            found.append(
                f"θ grew to {self.max_theta_norm_ratio:.1f}× its initial norm (N_t={self.n_train} "
                "multiplies the data term); lower lr_theta or rho_theta_train")
        for message in found:
            warnings.warn(message, BadsWarning, stacklevel=2)
        return found

    def summary(self) -> dict[str, Any]:
        tail = self.history[-max(1, len(self.history) // 10):]
        return {
            "steps": self.steps_done, "n_train": self.n_train, "n_meta": self.n_meta,
            "budget": self.budget, "samples_kept": len(self.weight_samples()),
            "final_train_loss": round(float(np.mean([r.train_loss for r in tail])), 5),
            "final_meta_loss": round(float(np.mean([r.meta_loss for r in tail])), 5),
            "final_budget_gap": round(float(np.mean([r.budget_gap for r in tail])), 3),
            "max_theta_grad_norm": round(max((r.theta_grad_norm for r in self.history),
                                             default=0.0), 3),
            "max_theta_norm_ratio": round(self.max_theta_norm_ratio, 3),
        }
