"""Selection policies by name: the one place a policy's name leads to the function that
applies it (:data:`POLICIES`). The names a job or recipe accepts are
:data:`dataselect.defaults.POLICIES` (``auto`` plus :data:`~dataselect.defaults.
SELECTION_POLICIES`); a scorer declares one of the latter as its ``default_policy``, and
``auto`` resolves to it (:func:`resolved_policy`), so a plug-in's declared policy is the
one applied, through the same mapping as a policy the user names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dataselect import select
from dataselect.corpus import Corpus
from dataselect.defaults import SELECTION_POLICIES
from dataselect.errors import InputError
from dataselect.execution import Runner
from dataselect.scoring import Scores

# what a threshold budget applies, whatever the policy (not a name a user chooses)
THRESHOLD = "threshold"


@dataclass(frozen=True)
class Budget:
    """How many rows a policy takes: ``k`` or ``fraction`` (or ``threshold``), and the seed
    of a policy that draws."""

    k: int | None = None
    fraction: float | None = None
    threshold: float | None = None
    seed: int = 0


Policy = Callable[[Corpus, Scores, Budget, Runner], select.Selection]


def _top_k(pool: Corpus, scores: Scores, budget: Budget, runner: Runner) -> select.Selection:
    if budget.fraction is not None:
        return select.top_fraction(pool, scores, budget.fraction, runner=runner)
    return select.top_k(pool, scores, budget.k, runner=runner)


def _importance_resample(pool: Corpus, scores: Scores, budget: Budget, runner: Runner
                         ) -> select.Selection:
    return select.importance_resample(pool, scores, k=budget.k, fraction=budget.fraction,
                                      seed=budget.seed, runner=runner)


def _round_robin(pool: Corpus, scores: Scores, budget: Budget, runner: Runner
                 ) -> select.Selection:
    if budget.k is None:
        raise InputError("the round_robin policy takes k", field="policy")
    return select.round_robin(pool, scores, budget.k, runner=runner)


def _threshold(pool: Corpus, scores: Scores, budget: Budget, runner: Runner
               ) -> select.Selection:
    return select.threshold(pool, scores, budget.threshold, runner=runner)


POLICIES: dict[str, Policy] = {"top_k": _top_k, "importance_resample": _importance_resample,
                               "round_robin": _round_robin, THRESHOLD: _threshold}
if set(POLICIES) != {*SELECTION_POLICIES, THRESHOLD}:  # the names, listed import-free
    raise ImportError("dataselect.policies.POLICIES and defaults.SELECTION_POLICIES differ")


def resolved_policy(policy: str, threshold: float | None, default_policy: str) -> str:
    """The policy a job applies: ``threshold`` when one is given; for ``auto``, the one the
    scorer declares (``default_policy``: DSIR's log importance weights resample, as the
    paper does; a plug-in's own declaration is used as it is, round_robin included; it used
    to be compared with importance_resample only, so round_robin became top_k)."""
    if threshold is not None:
        return THRESHOLD
    if policy == "auto":
        return default_policy
    return policy


def choose_rows(pool: Corpus, scores: Scores, policy: str, budget: Budget,
                default_policy: str, runner: Runner) -> select.Selection:
    """Apply a policy (``auto`` resolved, :func:`resolved_policy`) and one budget."""
    name = resolved_policy(policy, budget.threshold, default_policy)
    return POLICIES[name](pool, scores, budget, runner)
