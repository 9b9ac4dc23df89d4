"""RDS+: select by cosine similarity of pooled hidden states to the target's.

Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning", found this cheap
representation-based selection (RDS+) stronger than gradient and n-gram methods as pools
grow: embed every example with the causal LM's last hidden states, pooled by a
position-weighted mean (token ``t`` of ``n`` weighs ``t / (1 + ... + n)``, so later tokens,
which have seen more of the text, count more), and compare with the target's embeddings.

    score(x) = max over target examples t of cos(e(x), e(t))      (aggregate="max")
               mean over t of cos(e(x), e(t))                      (aggregate="mean")

Multi-example targets can also be served round robin (each target example in turn takes
its best remaining pool row, :func:`dataselect.select.round_robin`), which the study used
across tasks; ``per_target=True`` stores the cosine to every target example for it.

Pooling is masked: padding never enters a row's embedding, and with right padding and a
causal model a row's hidden states do not depend on the rows batched with it (tested).

With ``features=FOLDER`` the pool's embeddings are kept in a feature store (float16, as for
LESS) and scores are computed from it: several targets scored against one pool (a recipe's
tasks) embed the pool once, and the same store serves ``dataselect index build``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch

from dataselect import checks
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import Runner, default_runner
from dataselect.features import normalize_rows
from dataselect.featurize import SIDES, Side, scores_via_store
from dataselect.scoring import Scorer, Scores
from scorers.lm import (
    TokenBatch,
    check_model_folder,
    load_causal_lm,
    load_tokenizer,
    loaded_once,
    model_fingerprint,
    model_rendering,
    model_view,
    pick_device,
    tokenize,
)

Pooling = Literal["position_weighted", "mean", "last"]
POOLINGS = ("position_weighted", "mean", "last")
AGGREGATES = ("max", "mean")
TARGET_SCORES = "target_scores"



def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling
                       ) -> torch.Tensor:
    """One vector per row from ``(rows, tokens, hidden)`` states, padding excluded."""
    mask = attention_mask.to(hidden.dtype)
    if pooling == "last":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), last.clamp(min=0)]
    weights = mask.cumsum(1) * mask if pooling == "position_weighted" else mask
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
    return torch.einsum("bt,bth->bh", weights, hidden)


@dataclass
class Embed(Scorer):
    """RDS+ embedding similarity to the target (higher = closer)."""

    name: ClassVar[str] = "embed"
    needs_model: ClassVar[bool] = True
    pool_features: ClassVar[bool] = True

    model: str
    pooling: Pooling = "position_weighted"
    aggregate: str = "max"
    per_target: bool = False
    max_length: int = 512
    batch_size: int = 16
    device: str | None = None
    features: str | None = None

    def __post_init__(self) -> None:
        # numbers first: a recipe checks them before its models exist
        checks.check_count(self.batch_size, "batch_size")
        checks.check_count(self.max_length, "max_length", maximum=2**20)
        self.model = check_model_folder(self.model, "model")
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}",
                             field="pooling")
        if self.aggregate not in AGGREGATES:
            raise InputError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}",
                             field="aggregate")
        self.target_ids_: list[str] = []
        self.targets_: np.ndarray | None = None
        self.fit_stats_: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {**asdict(self), "resolved_device": pick_device(self.device).type,
                "model_files": model_fingerprint(self.model),
                "rendering": model_rendering(self.model)}

    def feature_description(self, side: Side = "pool") -> dict[str, Any]:
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}, got {side!r}")
        return {"kind": "embed", "dim": _embedding_model(self).hidden_size, "views": 1,
                "model": self.model, "model_files": model_fingerprint(self.model),
                "pooling": self.pooling, "max_length": self.max_length,
                "rendering": model_rendering(self.model),
                "device": pick_device(self.device).type}

    def embed(self, batch: pa.Table) -> np.ndarray:
        """Unit embeddings ``(rows, hidden)`` of ``batch['text']`` (float32)."""
        worker = _embedding_model(self)
        out = []
        for start in range(0, batch.num_rows, self.batch_size):
            chunk = batch.slice(start, self.batch_size)
            out.append(worker.embed(chunk, self.max_length, self.pooling))
        if not out:
            return np.zeros((0, worker.hidden_size), np.float32)
        return normalize_rows(np.concatenate(out))

    def featurize_batch(self, batch: pa.Table, side: Side = "pool") -> np.ndarray:
        """``(rows, 1, hidden)``: the same embedding on the pool and the query side."""
        return self.embed(batch)[:, None, :]

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Embed:
        ids, vectors = [], []
        for table in target.iter_tables():
            view = target.scoring_view(table)
            ids += view["id"].to_pylist()
            vectors.append(self.embed(view))
        if not ids:
            raise EmptyCorpusError("target holds no records", where=", ".join(target.files))
        self.target_ids_, self.targets_ = ids, np.concatenate(vectors)
        digest = hashlib.sha256(repr(self.config()).encode())
        digest.update(self.targets_.tobytes())
        self.fingerprint_ = digest.hexdigest()[:16]
        self.fit_stats_ = {"target_rows": len(ids), "dim": int(self.targets_.shape[1])}
        return self

    def score_batch(self, batch: pa.Table) -> pa.Table:
        return self.scores_from_embeddings(batch["id"], self.embed(batch))

    def score(self, corpus: Corpus) -> Scores:
        """Scores of ``corpus``; with ``features`` set, through that feature store."""
        if self.features is None:
            return super().score(corpus)
        return scores_via_store(self, corpus, self.features)

    def scores_from_features(self, ids: Any, features: np.ndarray, valid: np.ndarray
                             ) -> pa.Table:
        """Scores from stored ``(rows, 1, hidden)`` unit embeddings (every row has one)."""
        return self.scores_from_embeddings(ids, features[:, 0, :])

    def scores_from_embeddings(self, ids: Any, embeddings: np.ndarray) -> pa.Table:
        if self.targets_ is None:
            raise RuntimeError("Embed scored before fit")
        cosines = embeddings @ self.targets_.T
        score = cosines.max(1) if self.aggregate == "max" else cosines.mean(1)
        columns: dict[str, Any] = {
            "id": ids, "score": score.astype(np.float64),
            "nearest_target": pa.array([self.target_ids_[i] for i in cosines.argmax(1)],
                                       pa.string()),
        }
        if self.per_target:
            columns[TARGET_SCORES] = pa.array(list(cosines.astype(np.float32)),
                                              pa.list_(pa.float32()))
        return pa.table(columns)


class _EmbeddingModel:
    def __init__(self, scorer: Embed):
        self.lock = threading.Lock()
        self.device = pick_device(scorer.device)
        self.tokenizer = load_tokenizer(scorer.model)
        self.model = load_causal_lm(scorer.model, self.device)
        self.hidden_size = int(self.model.config.hidden_size)

    def embed(self, batch: pa.Table, max_length: int, pooling: Pooling) -> np.ndarray:
        tokens: TokenBatch = tokenize(self.tokenizer, model_view(batch),
                                      max_length).to(self.device)
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                             output_hidden_states=True)
            pooled = pool_hidden_states(out.hidden_states[-1].float(), tokens.attention_mask,
                                        pooling)
        return pooled.cpu().numpy()


def _embedding_model(scorer: Embed) -> _EmbeddingModel:
    return loaded_once(("embed", scorer.model, scorer.device), lambda: _EmbeddingModel(scorer))
