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
from dataselect.execution import Runner, default_runner, partition_tasks, run_stage
from dataselect.features import model_unit_rows
from dataselect.featurize import SIDES, Side, scores_via_store
from dataselect.scoring import Scorer, Scores
from models.lm import (
    TokenBatch,
    check_model_folder,
    check_model_unchanged,
    load_causal_lm,
    load_tokenizer,
    loaded_once,
    model_rendering,
    model_view,
    pick_device,
    recorded_model_files,
    tokenize,
)

Pooling = Literal["position_weighted", "mean", "last"]
POOLINGS = ("position_weighted", "mean", "last")
AGGREGATES = ("max", "mean")
TARGET_SCORES = "target_scores"
# Rows tokenized (and length-sorted) together: bounds the padded token tensors of a large
# table (a target read as one partition) at a few MB.
TOKENIZE_ROWS = 1024



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


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar token counts, longest first: a batch ends at
    ``batch_size`` rows or before a row shorter than 3/4 of its first (longest), so at most
    a quarter of any batch's tokens is padding.

    Why the second rule: a partition of a hundred chat records has a long tail (data/
    instructions: 92 tokens on average, up to 512), and sorted batches of 16 still padded
    1.43x the real tokens there; ending batches at a quarter's drop pads 1.10x, and a long
    row alone costs a CPU no more per token than in a batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    for stop in range(1, len(order) + 1):
        if stop == len(order) or stop - start == batch_size \
                or 4 * lengths[order[stop]] < 3 * lengths[order[start]]:
            batches.append(order[start:stop])
            start = stop
    return batches


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
        checks.optional(checks.check_device, self.device, "device", here=False)
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
        # the model folder's fingerprint, taken once when fit starts (recorded_model_files)
        self.model_files_: list[dict[str, Any]] | None = None

    def config(self) -> dict[str, Any]:
        return {**asdict(self), "resolved_device": pick_device(self.device).type,
                "model_files": recorded_model_files(self),
                "rendering": model_rendering(self.model)}

    def feature_description(self, side: Side = "pool") -> dict[str, Any]:
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}, got {side!r}")
        return {"kind": "embed", "dim": _embedding_model(self).hidden_size, "views": 1,
                "model": self.model, "model_files": recorded_model_files(self),
                "pooling": self.pooling, "max_length": self.max_length,
                "rendering": model_rendering(self.model),
                "device": pick_device(self.device).type}

    def embed(self, batch: pa.Table) -> np.ndarray:
        """Unit embeddings ``(rows, hidden)`` of the rows of ``batch`` (float32), in order.

        Rows are tokenized together, go to the model in batches of similar token counts
        (:func:`length_batches`), each cut to its own longest row, and come back in their
        own order: batches of 16 in input order spent two thirds of each pass on padding
        (data/instructions with SmolLM2's tokenizer: 3.1x the real tokens; 1.10x now, in
        partitions of 100 rows). A row's embedding does not depend on its batch (masked
        pooling, right padding), so batching changes no result beyond float rounding
        (tested against input-order batches of several sizes).
        """
        worker = _embedding_model(self)
        out = np.zeros((batch.num_rows, worker.hidden_size), np.float32)
        tokens = np.zeros(batch.num_rows, bool)  # rows with a token: never a zero vector
        for start in range(0, batch.num_rows, TOKENIZE_ROWS):
            chunk = batch.slice(start, TOKENIZE_ROWS)
            rows = slice(start, start + chunk.num_rows)
            out[rows], tokens[rows] = worker.embed(
                chunk, self.max_length, self.pooling, self.batch_size)
        return model_unit_rows(out, self.model, inputs=tokens) if batch.num_rows else out

    def featurize_batch(self, batch: pa.Table, side: Side = "pool") -> np.ndarray:
        """``(rows, 1, hidden)``: the same embedding on the pool and the query side."""
        return self.embed(batch)[:, None, :]

    def check_unchanged(self) -> None:
        check_model_unchanged(self)

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Embed:
        """Embed the target's rows, one task per target partition on the runner's
        workers, which load the model for scoring anyway: the client of a job no longer
        loads a model of its own (seconds, and its memory) to embed a few rows."""
        self.model_files_ = None
        self.model_files_ = recorded_model_files(self)  # before the model is read
        parts = run_stage(runner, "fit:embed", partition_tasks(
            "fit-embed", _EmbedPartition(self, target), target.npartitions))
        ids = [row for part_ids, _ in parts for row in part_ids]
        if not ids:
            raise EmptyCorpusError("target holds no records", where=", ".join(target.files))
        self.target_ids_ = ids
        self.targets_ = np.concatenate([vectors for _, vectors in parts])
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

    @property
    def scores_per_target(self) -> bool:
        return self.per_target

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


@dataclass(frozen=True)
class _EmbedPartition:
    """Ids and unit embeddings of one partition's rows (a fit task)."""

    scorer: Embed
    corpus: Corpus

    def __call__(self, index: int) -> tuple[list[str], np.ndarray]:
        view = self.corpus.scoring_view(self.corpus.read_partition(index))
        return view["id"].to_pylist(), self.scorer.embed(view)


class _EmbeddingModel:
    def __init__(self, scorer: Embed):
        self.lock = threading.Lock()
        self.device = pick_device(scorer.device)
        self.tokenizer = load_tokenizer(scorer.model)
        # trimming a batch to its longest row and "last" pooling assume right padding
        self.tokenizer.padding_side = "right"
        self.model = load_causal_lm(scorer.model, self.device)
        self.hidden_size = int(self.model.config.hidden_size)
        # The transformer without its LM head: its last hidden state is the causal LM's
        # hidden_states[-1] (tested), and the head's vocabulary-wide logits, never used
        # here, cost a fifth of SmolLM2-135M's forward pass and rows x tokens x 49,152
        # floats of memory. A model without a separate base keeps the whole-model call.
        base = getattr(self.model, "base_model", None)
        self.encoder = base if base is not None and base is not self.model else None

    def embed(self, batch: pa.Table, max_length: int, pooling: Pooling, batch_size: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """Pooled (not normalised) last hidden states of ``batch``'s rows, in row order,
        from batches of ``batch_size`` rows sorted by token count, and which rows have a
        token (the others keep a zero vector)."""
        out = np.zeros((batch.num_rows, self.hidden_size), np.float32)
        if batch.num_rows == 0:
            return out, np.zeros(0, bool)
        tokens: TokenBatch = tokenize(self.tokenizer, model_view(batch), max_length)
        lengths = tokens.attention_mask.sum(1).numpy()
        with self.lock, torch.inference_mode():
            for rows in length_batches(lengths, batch_size):
                width = int(lengths[rows[0]])
                if width == 0:  # rows without a token (empty texts): no embedding
                    continue
                index = torch.from_numpy(rows)
                ids = tokens.input_ids[index, :width].to(self.device)
                mask = tokens.attention_mask[index, :width].to(self.device)
                pooled = pool_hidden_states(self._last_hidden(ids, mask).float(), mask,
                                            pooling)
                out[rows] = pooled.cpu().numpy()
        return out, lengths > 0

    def _last_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            return self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.model(input_ids=ids, attention_mask=mask,
                          output_hidden_states=True).hidden_states[-1]


def _embedding_model(scorer: Embed) -> _EmbeddingModel:
    return loaded_once(("embed", scorer.model, scorer.device), lambda: _EmbeddingModel(scorer))
