"""BADS as a scorer: data point weights of a causal LM's training pool, given a target.

The pool is the training set ``D_t`` and the target the meta set ``D_m`` of
:mod:`scorers.bads.sampler`. ``fit`` fine-tunes a local Hugging Face causal LM on the
response tokens of both (the per-example loss every model-based scorer here uses), with
SGLD steps that sample θ and the weights jointly, streaming the pool partition by
partition (each epoch visits partitions and rows in a seeded order). The score of a pool
row is its weight: higher = more wanted.

The weight network sees the mean of the *initial* model's input token embeddings over the
row's tokens, L2-normalised: an embedding that needs no forward pass and does not drift
as θ trains, so scoring the pool afterwards needs only the tokenizer and the embedding
table, and the network weighs rows it never saw in training. ``weights="free"`` keeps one
free weight per pool row instead (rows of another pool are then ``filtered_by``
``not_in_bads_fit``).

Rows whose response is cut off by ``max_length`` have no loss and are left out of the
training steps (counted in ``fit_stats_``); the network still weighs them.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dataselect import checks
from dataselect.corpus import Corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.execution import Runner, default_runner, step_progress
from dataselect.scoring import FILTERED_BY, Scorer
from models.lm import (
    TokenBatch,
    check_model_folder,
    check_model_unchanged,
    load_causal_lm,
    load_tokenizer,
    loaded_once,
    model_rendering,
    model_view,
    per_example_loss,
    pick_device,
    recorded_model_files,
    token_budget_chunks,
    tokenize,
)
from models.warmup_config import has_text
from scorers.bads.sampler import (
    WEIGHT_KINDS,
    BadsConfig,
    BadsSampler,
    FreeWeights,
    WeightNetwork,
    free_read_off,
    network_read_off,
)

NOT_IN_FIT = "not_in_bads_fit"
# batches whose embeddings are kept to check the final weights for the failure modes
DIAGNOSTIC_BATCHES = 50


@dataclass
class Bads(Scorer):
    """BADS data point weights (higher = more wanted). SGLD settings as in
    :class:`~scorers.bads.sampler.BadsConfig`; these defaults suit a small model on CPU."""

    name: ClassVar[str] = "bads"
    uses_response_spans: ClassVar[bool] = True
    needs_model: ClassVar[bool] = True

    @classmethod
    def compute_bound(cls) -> bool:
        """No: fitting runs the model in the client; scoring a row is a table lookup and a
        small network's read-off, so the pool keeps the job's partition size."""
        return False

    model: str
    beta: float = 0.05
    sigma: float = 1.0
    rho_theta_train: float = 1.0
    rho_theta_meta: float = 1.0
    rho_w_train: float = 1.0
    theta_prior_std: float = 1.0
    noise: float = 1e-5
    optimizer: str = "adam"
    lr_theta: float = 1e-4
    lr_w: float = 1e-2
    steps: int = 200
    batch_size: int = 8
    meta_batch_size: int = 2
    s_avg: int = 10
    samples: int = 1
    thin: int = 10
    weights: str = "network"
    max_length: int = 512
    max_batch_tokens: int = 1024  # padded tokens per backward pass: bounds memory
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # numbers first (a recipe checks them before its models exist); the SGLD ranges
        # are BadsConfig.check's
        checks.check_count(self.max_length, "max_length", minimum=2, maximum=2**20)
        checks.optional(checks.check_device, self.device, "device", here=False)
        checks.check_count(self.max_batch_tokens, "max_batch_tokens")
        self.sgld_config().check()
        self.model = check_model_folder(self.model, "model")
        if self.weights not in WEIGHT_KINDS:
            raise InputError(f"weights must be one of {WEIGHT_KINDS}, got {self.weights!r}",
                             field="weights")
        self.network_samples_: list[dict[str, np.ndarray]] = []
        self.free_weights_: dict[str, float] = {}
        self.fit_stats_: dict[str, Any] = {}
        # the model folder's fingerprint, taken once when fit starts (recorded_model_files)
        self.model_files_: list[dict[str, Any]] | None = None

    def sgld_config(self) -> BadsConfig:
        names = {f.name for f in fields(BadsConfig)}
        return BadsConfig(**{k: v for k, v in asdict(self).items() if k in names})

    def config(self) -> dict[str, Any]:
        return {**asdict(self), "resolved_device": pick_device(self.device).type,
                "model_files": recorded_model_files(self),
                "rendering": model_rendering(self.model)}

    def check_unchanged(self) -> None:
        check_model_unchanged(self)

    def fit(self, target: Corpus, pool: Corpus | None = None, runner: Runner = default_runner
            ) -> Bads:
        if pool is None:
            raise InputError("BADS learns the weights of the pool: fit needs the pool")
        self.model_files_ = None
        self.model_files_ = recorded_model_files(self)  # before the model is read
        started = time.perf_counter()
        config = self.sgld_config()
        device = pick_device(self.device)
        tokenizer = load_tokenizer(self.model)
        meta = self._meta_set(target, tokenizer)
        sizes, blank = _pool_sizes(pool)
        n_train = sum(sizes)
        if n_train == 0:
            raise EmptyCorpusError("pool holds no records", where=", ".join(pool.files))
        if blank == n_train:
            raise EmptyCorpusError(
                f"every row of the pool ({blank}) is blank (nothing visible: whitespace, "
                "zero-width or other invisible characters only), and blank rows are never "
                "trained on; give a pool with text",
                where=", ".join(pool.files))
        torch.manual_seed(self.seed)
        model = load_causal_lm(self.model, device).train()
        table = model.get_input_embeddings().weight.detach().clone()
        if self.weights == "network":
            weight_model: torch.nn.Module = WeightNetwork(table.shape[1], self.beta)
        else:
            weight_model = FreeWeights(n_train, self.beta)
        weight_model.to(device)
        sampler = BadsSampler(list(model.parameters()), weight_model, n_train, meta.num_rows,
                              config)
        rng = np.random.default_rng(self.seed)
        batches = _train_batches(pool, sizes, self.batch_size, rng)
        recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=DIAGNOSTIC_BATCHES)
        skipped = 0
        with step_progress(runner, "fit:bads", config.steps) as advance:
            while sampler.steps_done < config.steps:
                batch, positions = next(batches)
                meta_rows = rng.choice(meta.num_rows, min(self.meta_batch_size, meta.num_rows),
                                       replace=False)
                both = pa.concat_tables([batch, meta.take(pa.array(meta_rows))],
                                        promote_options="permissive")
                tokens = tokenize(tokenizer, both, self.max_length).to(device)
                trained = tokens.has_response[:batch.num_rows]
                skipped += int((~trained).sum())
                if not trained.any():
                    continue
                embedding = mean_token_embedding(table, tokens)[:batch.num_rows][trained]
                index = torch.as_tensor(positions, device=device)[trained.cpu()]
                weights = weight_model(embedding if self.weights == "network" else index)
                train_coefficient, meta_coefficient = sampler.theta_loss_coefficients(
                    weights, both.num_rows - batch.num_rows)
                coefficients = torch.full((both.num_rows,), meta_coefficient, device=device)
                coefficients[:batch.num_rows] = 0.0
                coefficients[:batch.num_rows][trained] = train_coefficient
                sampler.begin_step()
                loss = self._backpropagate_losses(model, tokens, coefficients)
                sampler.step(loss[:batch.num_rows][trained], weights, loss[batch.num_rows:],
                             accumulated=True)
                recent.append((embedding.detach(), index))
                advance(1)
        self._read_off(sampler, pool, sizes)
        final = self._final_weights(recent)
        warnings_found = sampler.diagnose(final)
        self.fit_stats_ = {**sampler.summary(), "meta_rows": meta.num_rows,
                           "train_rows_without_response": skipped,
                           **({"train_rows_blank": blank} if blank else {}),
                           "final_weight_mean": round(float(final.mean()), 5),
                           "final_weight_std": round(float(final.std()), 5),
                           "warnings": warnings_found,
                           "seconds": round(time.perf_counter() - started, 3)}
        digest = hashlib.sha256(repr(self.config()).encode())
        for state in self.network_samples_:
            for key in sorted(state):
                digest.update(state[key].tobytes())
        digest.update(repr(sorted(self.free_weights_.items())).encode())
        self.fingerprint_ = digest.hexdigest()[:16]
        return self

    def _backpropagate_losses(self, model: Any, tokens: TokenBatch, coefficients: torch.Tensor
                              ) -> torch.Tensor:
        """Backpropagate ``Σ coefficient · loss`` over the batch in chunks of at most
        ``max_batch_tokens`` padded tokens (θ's gradients add up across chunks) and return
        the detached per-row losses: the activations of one chunk are alive at a time, so a
        step's memory follows the token budget, not the batch's longest row times its rows."""
        losses = torch.zeros(len(coefficients), device=coefficients.device)
        for rows in token_budget_chunks(tokens.lengths.cpu(), len(coefficients),
                                        self.max_batch_tokens):
            index = torch.as_tensor(rows, device=coefficients.device)
            if not coefficients[index].any():  # rows without response tokens
                continue
            chunk = tokens.select(index)
            logits = model(input_ids=chunk.input_ids, attention_mask=chunk.attention_mask).logits
            loss = per_example_loss(logits, chunk)
            (loss * coefficients[index]).sum().backward()
            losses[index] = loss.detach()
        return losses

    def _meta_set(self, target: Corpus, tokenizer: Any) -> pa.Table:
        parts = []
        for table in target.iter_tables():
            view = target.scoring_view(table, response_spans=True)
            tokens = tokenize(tokenizer, view, self.max_length)
            if not tokens.has_response.all():
                row = int(np.flatnonzero(~tokens.has_response.numpy())[0])
                raise InputError(f"target example has no response tokens within max_length="
                                 f"{self.max_length} (raise max_length)",
                                 where=target.where_in(table)(row))
            parts.append(model_view(view, spans=True))
        if not parts:
            raise EmptyCorpusError("target holds no records", where=", ".join(target.files))
        return pa.concat_tables(parts)

    def _read_off(self, sampler: BadsSampler, pool: Corpus, sizes: list[int]) -> None:
        samples = sampler.weight_samples()
        if self.weights == "network":
            self.network_samples_ = [{k: v.cpu().numpy() for k, v in s.items()}
                                     for s in samples]
            return
        weights = free_read_off(samples)
        ids: list[str] = []
        for index in range(pool.npartitions):
            ids += pool.read_partition(index)["id"].to_pylist()
        self.free_weights_ = dict(zip(ids, weights.astype(float).tolist(), strict=True))

    def _final_weights(self, recent: deque) -> np.ndarray:
        """Read-off weights of the rows of the last training batches (for diagnosis)."""
        if self.weights == "free":
            return np.array(list(self.free_weights_.values()))
        if not recent:
            return np.zeros(0)
        embedding = torch.cat([e for e, _ in recent]).cpu()
        return network_read_off(self.network_samples_, embedding)

    def score_batch(self, batch: pa.Table) -> pa.Table:
        if not self.network_samples_ and not self.free_weights_:
            raise RuntimeError("Bads.score_batch called before fit")
        ids = batch["id"].to_pylist()
        if self.weights == "free":
            score = np.array([self.free_weights_.get(i, 0.0) for i in ids])
            reasons = [None if i in self.free_weights_ else NOT_IN_FIT for i in ids]
            return pa.table({"id": batch["id"], "score": score,
                             FILTERED_BY: pa.array(reasons, pa.string())})
        tokenizer, table = _embedding_table(self)
        scores = []
        for start in range(0, batch.num_rows, 64):
            chunk = model_view(batch.slice(start, 64))
            tokens = tokenize(tokenizer, chunk, self.max_length)
            scores.append(network_read_off(self.network_samples_,
                                           mean_token_embedding(table, tokens)))
        score = np.concatenate(scores) if scores else np.zeros(0)
        return pa.table({"id": batch["id"], "score": score.astype(np.float64)})


def mean_token_embedding(table: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """L2-normalised mean of the embedding rows of each row's tokens (padding excluded)."""
    mask = tokens.attention_mask.to(table.device, table.dtype)
    summed = torch.einsum("bt,bth->bh", mask, table[tokens.input_ids.to(table.device)])
    mean = summed / mask.sum(1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(mean.float(), dim=1)


def _pool_sizes(pool: Corpus) -> tuple[list[int], int]:
    """Rows in each partition of ``pool``, and how many of them are blank
    (:func:`~models.warmup_config.has_text`): those are left out of training."""
    sizes, blank = [], 0
    for index in range(pool.npartitions):
        table = pool.read_partition(index)
        sizes.append(table.num_rows)
        if table.num_rows:
            blank += table.num_rows - pc.sum(has_text(pool.scoring_view(table))).as_py()
    return sizes, blank


def _train_batches(pool: Corpus, sizes: list[int], batch_size: int, rng: np.random.Generator
                   ) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Endless seeded epochs over the pool, one partition in memory at a time: batches of
    rendered rows and their positions in the pool (partition offset + row)."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    while True:
        for part in rng.permutation(len(sizes)):
            if sizes[part] == 0:
                continue
            table = pool.read_partition(int(part))
            view = pool.scoring_view(table, response_spans=True)
            written = has_text(view).to_numpy(zero_copy_only=False)
            view = model_view(view, spans=True)
            order = rng.permutation(table.num_rows)
            order = order[written[order]]  # blank rows are never trained on
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                yield view.take(pa.array(rows)), offsets[part] + rows


class _EmbeddingTable:
    def __init__(self, scorer: Bads):
        self.tokenizer = load_tokenizer(scorer.model)
        model = load_causal_lm(scorer.model, torch.device("cpu"))
        self.table = model.get_input_embeddings().weight.detach().clone()
        del model


def _embedding_table(scorer: Bads) -> tuple[Any, torch.Tensor]:
    loaded = loaded_once(("bads", scorer.model), lambda: _EmbeddingTable(scorer))
    return loaded.tokenizer, loaded.table

