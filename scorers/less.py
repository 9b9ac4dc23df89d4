"""LESS: select the examples whose low-rank gradient features align with the target's.

Xia et al. 2024, "LESS: Selecting Influential Data for Targeted Instruction Tuning". After
a short LoRA warmup on a sample of the pool (:mod:`scorers.lora_warmup`), every example gets
one feature per warmup checkpoint ``c``:

* pool examples: the Adam update direction from the checkpoint's moments,
  ``m' / (sqrt(v') + eps)`` with ``m' = b1 m + (1 - b1) g``, ``v' = b2 v + (1 - b2) g^2``;
* target examples: the plain gradient ``g``;

where ``g`` is the gradient of the example's mean response-token loss with respect to the
LoRA weights only, computed for a whole batch in one backward pass
(:mod:`scorers.gradients`), then projected to ``proj_dim`` dimensions with a seeded
Rademacher matrix shared by pool, target and checkpoints (:mod:`scorers.projection`).

The score of pool example ``x`` for a target task with subtasks ``S``:

    score(x) = max over s in S of  mean over t in s of  sum over c of  lr_c * cos(x_c, t_c)

with ``lr_c`` the mean learning rate of checkpoint ``c``'s epoch: the reference's rule
(mean within a subtask, max across subtasks). Subtasks come from the target's
``subtask_field`` column; without it the target is one subtask. Higher = more influential.
Rows whose response is cut off entirely by ``max_length`` have no gradient: they are
marked ``filtered_by = "no_response_tokens"`` and never selected.

Deviation from the reference code, on purpose: it divides by ``sqrt(v' + eps)``; this
follows the paper's and Adam's ``sqrt(v') + eps``. The two agree unless ``v'`` is near
``eps``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from dataselect import checks
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import Runner, default_runner
from dataselect.features import normalize_rows
from dataselect.featurize import SIDES, Side, scores_via_store
from dataselect.scoring import FILTERED_BY, Scorer, Scores
from scorers.gradients import LinearGradients, adam_precondition
from scorers.lm import (
    NO_RESPONSE_TOKENS,
    check_model_folder,
    load_causal_lm,
    load_tokenizer,
    loaded_once,
    per_example_loss,
    pick_device,
    tokenize,
)
from scorers.lora_checkpoints import AdamMoments, canonical_name, load_moments, read_info
from scorers.projection import RademacherProjection

# The projection matrix is cached while it fits in this; past it, its blocks are regenerated
# per call, so gradients are buffered for up to PROJECTION_BUFFER_BYTES per call instead.
PROJECTION_CACHE_BYTES = 1 << 30
PROJECTION_BUFFER_BYTES = 1 << 30


@dataclass
class Less(Scorer):
    """LESS gradient-feature scorer over LoRA warmup ``checkpoints`` of ``model``."""

    name: ClassVar[str] = "less"
    uses_response_spans: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True
    pool_features: ClassVar[bool] = True
    needs_warmup: ClassVar[bool] = True

    model: str
    checkpoints: list[str] = field(default_factory=list)
    proj_dim: int = 8192
    seed: int = 0
    max_length: int = 512
    batch_size: int = 8
    subtask_field: str = "subtask"
    device: str | None = None
    features: str | None = None

    def __post_init__(self) -> None:
        # numbers first: a recipe checks them before its models and checkpoints exist
        checks.check_count(self.proj_dim, "proj_dim", maximum=2**20)
        checks.check_count(self.batch_size, "batch_size")
        checks.check_count(self.max_length, "max_length", minimum=2, maximum=2**20)
        checks.check_seed(self.seed)
        self.model = check_model_folder(self.model, "model")
        if isinstance(self.checkpoints, str):  # one checkpoint folder
            self.checkpoints = [self.checkpoints]
        if not self.checkpoints:
            raise InputError("LESS needs at least one warmup checkpoint (run `dataselect less "
                             "warmup` first)", field="checkpoints")
        self.infos = [read_info(path) for path in self.checkpoints]
        self.checkpoints = [info.path for info in self.infos]
        self.subtasks_: list[str] = []
        self.subtask_means_: np.ndarray | None = None  # (subtasks, checkpoints, dim)
        self.target_ids_: list[str] = []
        self.target_features_: np.ndarray | None = None  # (targets, checkpoints, dim)
        self.fit_stats_: dict[str, Any] = {}

    @property
    def weights(self) -> np.ndarray:
        """Each checkpoint's weight: the mean learning rate of its epoch."""
        return np.array([info.mean_lr for info in self.infos])

    def config(self) -> dict[str, Any]:
        settings = asdict(self)
        settings["checkpoint_weights"] = self.weights.tolist()
        settings["resolved_device"] = pick_device(self.device).type
        return settings

    def feature_description(self, side: Side = "pool") -> dict[str, Any]:
        """What identifies the features (the feature store refuses to mix others). Pool
        features are Adam-preconditioned, query (target) features plain gradients."""
        return {"kind": "less", "dim": self.proj_dim, "views": len(self.checkpoints),
                "view_weights": self.weights.tolist(), "scale": float(self.weights.sum()),
                "model": self.model, "checkpoints": self.checkpoints, "seed": self.seed,
                "max_length": self.max_length, "device": pick_device(self.device).type,
                "gradient": "adam" if side == "pool" else "sgd"}

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Less:
        """Gradient features of every target example, averaged per subtask."""
        ids: list[str] = []
        subtasks: list[str] = []
        features = []
        for table in target.iter_tables():
            view = target.scoring_view(table, response_spans=True)
            if self.subtask_field in table.column_names:
                labels = table[self.subtask_field].cast(pa.string()).to_pylist()
                if None in labels:
                    row = labels.index(None)
                    raise InputError("subtask is missing", where=target.where_in(table)(row),
                                     field=self.subtask_field)
            else:
                labels = ["all"] * view.num_rows
            batch_features, valid = self.featurize(view, adam=False, with_validity=True)
            if not valid.all():
                row = int(np.flatnonzero(~valid)[0])
                raise InputError(f"target example has no response tokens within max_length="
                                 f"{self.max_length} (raise max_length)",
                                 where=target.where_in(table)(row))
            ids += view["id"].to_pylist()
            subtasks += labels
            features.append(batch_features)
        if not ids:
            raise EmptyCorpusError("target holds no records", where=", ".join(target.files))
        self.target_ids_ = ids
        self.target_features_ = np.concatenate(features)
        self.subtasks_ = sorted(set(subtasks))
        labels = np.array(subtasks)
        self.subtask_means_ = np.stack([self.target_features_[labels == s].mean(axis=0)
                                        for s in self.subtasks_])
        digest = hashlib.sha256(repr(self.config()).encode())
        digest.update(self.target_features_.tobytes())
        self.fingerprint_ = digest.hexdigest()[:16]
        self.fit_stats_ = {"target_rows": len(ids),
                           "subtasks": {s: subtasks.count(s) for s in self.subtasks_}}
        return self

    def target_features(self) -> tuple[list[str], np.ndarray]:
        """Ids and ``(targets, checkpoints, dim)`` unit features of the fitted target."""
        if self.target_features_ is None:
            raise RuntimeError("Less.target_features called before fit")
        return self.target_ids_, self.target_features_

    def subtask_scores(self, features: np.ndarray) -> np.ndarray:
        """``(rows, subtasks)``: sum over checkpoints of lr x mean cosine to the subtask."""
        if self.subtask_means_ is None:
            raise RuntimeError("Less scoring called before fit")
        per_checkpoint = np.einsum("ncd,scd->nsc", features.astype(np.float32),
                                   self.subtask_means_)
        return per_checkpoint @ self.weights.astype(np.float32)

    def score_batch(self, batch: pa.Table) -> pa.Table:
        features, valid = self.featurize(batch, adam=True, with_validity=True)
        return self.scores_from_features(batch["id"], features, valid)

    def score(self, corpus: Corpus) -> Scores:
        """Scores of ``corpus``; with ``features`` set, pool features are kept in that
        feature store (computed once, reused by later scoring, the index and attribution)."""
        if self.features is None:
            return super().score(corpus)
        return scores_via_store(self, corpus, self.features)

    def scores_from_features(self, ids: Any, features: np.ndarray, valid: np.ndarray
                             ) -> pa.Table:
        by_subtask = self.subtask_scores(features)
        best = by_subtask.argmax(axis=1)
        score = np.where(valid, by_subtask.max(axis=1), np.nan).astype(np.float64)
        return pa.table({
            "id": ids,
            "score": score,
            "best_subtask": pa.array([self.subtasks_[b] for b in best], pa.string()),
            FILTERED_BY: pa.array([None if v else NO_RESPONSE_TOKENS for v in valid],
                                  pa.string()),
        })

    def featurize_batch(self, batch: pa.Table, side: Side = "pool") -> np.ndarray:
        """Unit features ``(rows, checkpoints, dim)``: Adam-preconditioned on the pool
        side, plain gradients on the query side; zero rows where the response was cut off."""
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}, got {side!r}")
        return self.featurize(batch, adam=side == "pool")

    def featurize(self, batch: pa.Table, adam: bool, with_validity: bool = False) -> Any:
        """Unit gradient features ``(rows, checkpoints, proj_dim)`` in float32."""
        worker = _gradient_model(self)
        out = np.zeros((batch.num_rows, len(self.checkpoints), self.proj_dim), np.float32)
        valid = np.zeros(batch.num_rows, bool)
        group = worker.rows_per_projection(self.batch_size)
        for start in range(0, batch.num_rows, group):
            chunk = batch.slice(start, group)
            feats, ok = worker.features(chunk, adam, self.max_length, self.batch_size)
            out[start:start + chunk.num_rows] = feats
            valid[start:start + chunk.num_rows] = ok
        return (out, valid) if with_validity else out


class _GradientModel:
    """The base model with every checkpoint's adapter loaded, their moments, and the
    shared projection: what one worker needs to turn examples into features."""

    def __init__(self, scorer: Less):
        from peft import PeftModel

        self.lock = threading.Lock()
        self.device = pick_device(scorer.device)
        self.tokenizer = load_tokenizer(scorer.model)
        base = load_causal_lm(scorer.model, self.device)
        self.adapters = [f"ckpt{i}" for i in range(len(scorer.checkpoints))]
        model = PeftModel.from_pretrained(base, scorer.checkpoints[0],
                                          adapter_name=self.adapters[0])
        for name, path in zip(self.adapters[1:], scorer.checkpoints[1:]):
            model.load_adapter(path, adapter_name=name)
        self.model = model.to(self.device).eval()
        self.moments: list[AdamMoments] = [load_moments(p).to(self.device)
                                           for p in scorer.checkpoints]
        self.gradients: list[LinearGradients] = []
        self.names: list[list[str]] = []
        sizes = None
        for adapter, moments, path in zip(self.adapters, self.moments, scorer.checkpoints):
            self._activate(adapter)
            grads = LinearGradients(self.model)
            names = [canonical_name(n, adapter) for n in grads.names]
            missing = [n for n in names if n not in moments.exp_avg]
            if missing:
                raise InputError(f"moments missing for {len(missing)} LoRA parameters, e.g. "
                                 f"{missing[0]}", where=path)
            params = dict(self.model.named_parameters())
            these = [params[n].numel() for n in grads.names]
            if sizes is not None and these != sizes:
                raise InputError("checkpoints have different LoRA shapes", where=path)
            sizes = these
            self.gradients.append(grads)
            self.names.append(names)
        self.projection = RademacherProjection(sizes, scorer.proj_dim, scorer.seed, self.device,
                                               cache_bytes=PROJECTION_CACHE_BYTES)

    def _activate(self, adapter: str) -> None:
        self.model.set_adapter(adapter)
        for name, param in self.model.named_parameters():
            param.requires_grad_("lora_" in name and f".{adapter}." in name)

    def rows_per_projection(self, batch_size: int) -> int:
        """Rows projected in one call. While the projection matrix is cached, one backward
        batch; otherwise as many rows as fit in PROJECTION_BUFFER_BYTES of gradients, since
        each call regenerates every block of the matrix."""
        if self.projection.cache:
            return batch_size
        per_row = 4 * self.projection.input_dim
        return max(batch_size, PROJECTION_BUFFER_BYTES // per_row)

    def features(self, batch: pa.Table, adam: bool, max_length: int, batch_size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        # switching adapters and the gradient hooks are per-model state: one batch at a
        # time (threads of a Dask worker share this model; torch parallelises inside ops)
        with self.lock:
            return self._features(batch, adam, max_length, batch_size)

    def _features(self, batch: pa.Table, adam: bool, max_length: int, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        chunks = [tokenize(self.tokenizer, batch.slice(start, batch_size), max_length)
                  .to(self.device) for start in range(0, batch.num_rows, batch_size)]
        valid = torch.cat([tokens.has_response for tokens in chunks])
        out = torch.zeros((batch.num_rows, len(self.adapters), self.projection.dim),
                          device=self.device)
        for c, adapter in enumerate(self.adapters):
            self._activate(adapter)
            flat = torch.cat([self._gradients(c, tokens, adam) for tokens in chunks])
            out[:, c] = self.projection.project(flat.split(self.projection.sizes, dim=1))
        out[~valid] = 0
        features = normalize_rows(out.cpu().numpy(), axis=-1)
        return features, valid.cpu().numpy()

    def _gradients(self, checkpoint: int, tokens: Any, adam: bool) -> torch.Tensor:
        """``(rows, LoRA parameters)``: per-example gradients of one batch at one
        checkpoint, Adam-preconditioned when ``adam``, flattened in parameter order."""
        grads, names = self.gradients[checkpoint], self.names[checkpoint]
        moments = self.moments[checkpoint]
        rows = tokens.input_ids.shape[0]

        def losses() -> torch.Tensor:
            logits = self.model(input_ids=tokens.input_ids,
                                attention_mask=tokens.attention_mask).logits
            return per_example_loss(logits, tokens)

        per_example = grads.per_example(rows, losses)
        pieces = []
        for live_name, name in zip(grads.names, names):
            g = per_example.pop(live_name)
            if adam:
                g = adam_precondition(g, moments.exp_avg[name], moments.exp_avg_sq[name],
                                      moments.beta1, moments.beta2, moments.eps)
            pieces.append(g.reshape(rows, -1))
        return torch.cat(pieces, dim=1)


def _gradient_model(scorer: Less) -> _GradientModel:
    key = ("less", scorer.model, tuple(scorer.checkpoints), scorer.proj_dim, scorer.seed,
           scorer.device, PROJECTION_CACHE_BYTES)
    return loaded_once(key, lambda: _GradientModel(scorer))
