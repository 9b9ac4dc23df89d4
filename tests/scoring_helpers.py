"""A scorer with known scores, so selection policies can be checked against naive answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from dataselect.scoring import FILTERED_BY, Scorer


@dataclass
class FixedScorer(Scorer):
    """Score = ``scores[id]``; ids in ``drop`` are marked filtered by ``fixed_drop``."""

    name: ClassVar[str] = "fixed"
    scores: dict[str, float] = field(default_factory=dict)
    drop: frozenset = frozenset()
    label: str = "fixed"

    def fit(self, target: Any, pool: Any = None, runner: Any = None) -> FixedScorer:
        return self

    def config(self) -> dict[str, Any]:
        return {"label": self.label, "n": len(self.scores)}

    def score_batch(self, batch: pa.Table) -> pa.Table:
        ids = batch["id"].to_pylist()
        return pa.table({
            "id": batch["id"],
            "score": pa.array([self.scores[i] for i in ids], pa.float64()),
            FILTERED_BY: pa.array(["fixed_drop" if i in self.drop else None for i in ids],
                                  pa.string()),
        })


@dataclass
class FixedTargetScorer(FixedScorer):
    """Like FixedScorer, plus a ``target_scores`` list column: ``per_target[id]``."""

    name: ClassVar[str] = "fixed_targets"
    per_target: dict[str, list[float]] = field(default_factory=dict)

    def score_batch(self, batch: pa.Table) -> pa.Table:
        table = super().score_batch(batch)
        values = [self.per_target[i] for i in batch["id"].to_pylist()]
        return table.append_column("target_scores", pa.array(values, pa.list_(pa.float32())))
