"""Benchmark: attribution quality (LDS) on a causal LM fine-tuned on ``data/instructions/``.

Protocol (the digits benchmark's, ``bench_lds.py``, carried to a language model)
---------------------------------------------------------------------------------
* Rows, all from ``data/instructions/`` and seeded by ``--seed``: ``--base-rows`` training
  rows pre-train the base model; ``--train`` other rows (an equal share per task) are the
  fine-tuning set that attribution explains; ``--queries`` held-out rows of
  ``data/instructions/eval/`` (an equal share per task) are the queries.
* Base model: the tiny Llama that recipes build (``build_tiny_causal_lm``: 1,000-token BPE,
  64 wide, 2 layers), trained ``--base-steps`` AdamW steps on the base rows. Nothing is
  downloaded; a 135M model retrained 50+ times is out of reach of a 2-core machine.
* Fine-tuning recipe: every weight, AdamW, ``--steps`` steps of ``--batch-size`` rows at
  ``--lr`` from the base weights, rows in a seeded order (``fit_causal_lm``).
* Ground truth: ``--subsets`` seeded random halves of the fine-tuning set; a model is
  fine-tuned on each (order seed = 1000 + subset number) and its mean response-token
  log-likelihood on each query (minus its loss) is recorded. Cached in the work folder.
* Score: ``dataselect.metrics.lds_per_query`` (per query, Spearman across the retrained
  models between the summed attribution of a subset's rows and the model's output); mean ±
  std over queries.
* Models that attribution sees: ``--ensemble`` fine-tunes on the whole set, order seeds
  0..E-1; model 0 is "the" trained model of single-model methods. Gradients are taken over
  every Linear weight except the output head (``train_linear_layers``), for every method.

Methods (times in this process, after the models are trained; ``"ours"`` marks dataselect's)
* ``random``: seeded Gaussian scores.
* ``less_cosine`` (ours): cosine of sparse-projected response-loss gradients of model 0
  (LESS's score without its LoRA warmup's Adam preconditioning: the model here is fully
  fine-tuned with AdamW, whose moments the benchmark does not keep).
* ``tracin_1`` / ``tracin_5`` (reference, written here): ``lr`` x exact, unprojected
  loss-gradient inner products at the final model of 1 or E runs (TracIn at final
  checkpoints, the ensemble in place of a run's checkpoints).
* ``trak_1`` / ``trak_5`` (reference, written here): TRAK with 1 or E models, one example
  at a time through ``torch.autograd.grad`` of the response log-odds, a dense Gaussian
  projection to ``--proj-dim``, the kernel ``Phi^T Phi`` ridged by ``--ridge`` x its mean
  diagonal, solved with numpy, times the mean ``1 - p``.
* ``ds_trak_1/5`` (ours): ``attribution.trak.Trak(kernel="trak")`` on ``output_gradients``
  (batched per-example gradients, sparse projection), the same ridge rule.
* ``ds_gn_1/5`` (ours, dataselect's default): the Gauss-Newton kernel
  ``Phi^T diag(p(1-p)) Phi``.
* ``ds_tracin_1/5`` (ours): ``attribution.tracin.TracIn`` (``attribute --method tracin``) on
  ``output_gradients`` of ``NegativeLoss(CausalLMOutput())`` (batched per-example
  response-loss gradients, sparse projection to ``--proj-dim``), equal member weights:
  ``tracin_1/5`` with projected gradients and no ``lr`` factor (a constant).
* ``ds_bif`` (ours): ``attribution.bif.bif`` at model 0 with ``BifConfig()`` defaults.
* ``ds_fisher_1/5`` (an experiment, not a dataselect method): ``Trak(kernel="trak")`` fed
  the gradients of the training objective itself (mean response log-likelihood, ``p`` = 0,
  so no ``1 - p`` factor): an empirical-Fisher influence function in the projected space,
  to tell whether TRAK's log-odds output or its kernel inverse costs LDS here.

Run from the repository root::

    .venv/bin/python benchmarks/bench_lds_lm.py --seed 0 --json /tmp/lds_lm0.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
INSTRUCTIONS = ROOT / "data" / "instructions"
TASKS = ("code", "define", "summarize", "translate")
METHODS = ("random", "less_cosine", "tracin_1", "tracin_5", "trak_1", "trak_5", "ds_trak_1",
           "ds_trak_5", "ds_gn_1", "ds_gn_5", "ds_tracin_1", "ds_tracin_5", "ds_fisher_1",
           "ds_fisher_5", "ds_bif")
OURS = {"less_cosine", "ds_trak_1", "ds_trak_5", "ds_gn_1", "ds_gn_5", "ds_tracin_1",
        "ds_tracin_5", "ds_bif"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-rows", type=int, default=600)
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--ridge", type=float, default=0.1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", default="/tmp/bench_lds_lm")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- data


def split_rows(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    rows = [json.loads(line) for line in (INSTRUCTIONS / "train.jsonl").open()]
    random.Random(args.seed).shuffle(rows)
    per_task = args.train // len(TASKS)
    train = [r for task in TASKS for r in [r for r in rows if r["task"] == task][:per_task]]
    chosen = {r["id"] for r in train}
    base = [r for r in rows if r["id"] not in chosen][:args.base_rows]
    queries = []
    for task in TASKS:
        held = [json.loads(line) for line in (INSTRUCTIONS / "eval" / f"{task}.jsonl").open()]
        random.Random(args.seed).shuffle(held)
        queries += held[:args.queries // len(TASKS)]
    return base, train, queries


def view_of(rows: list[dict], path: Path) -> Any:
    from dataselect import read_corpus

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = read_corpus(str(path), text="messages")
    return corpus.scoring_view(corpus.to_table(), response_spans=True)


# ----------------------------------------------------------------------------- models


def base_model(args: argparse.Namespace, base: list[dict], work: Path) -> str:
    from models.lm import build_tiny_causal_lm, train_causal_lm

    texts = [m["content"] for r in base for m in r["messages"]]
    blank = build_tiny_causal_lm(texts, work / "blank", vocab_size=1000, hidden_size=64,
                                 seed=args.seed)
    return train_causal_lm(blank, view_of(base, work / "base.jsonl"), work / "base",
                           steps=args.base_steps, max_length=args.max_length, seed=args.seed)


def fine_tune(path: str, tokenizer: Any, view: Any, args: argparse.Namespace, seed: int
              ) -> torch.nn.Module:
    from models.lm import fit_causal_lm, load_causal_lm

    torch.manual_seed(seed)
    model = load_causal_lm(path, torch.device("cpu"))
    fit_causal_lm(model, tokenizer, view, args.steps, args.lr, args.batch_size,
                  args.max_length, seed)
    return model.eval()


def batches(tokenizer: Any, view: Any, args: argparse.Namespace, size: int = 16) -> list[Any]:
    from models.lm import tokenize

    return [tokenize(tokenizer, view.slice(s, size), args.max_length)
            for s in range(0, view.num_rows, size)]


def log_likelihoods(model: torch.nn.Module, query_batches: list[Any]) -> np.ndarray:
    from attribution.output_gradients import CausalLMOutput

    with torch.no_grad():
        return -torch.cat([CausalLMOutput().loss(model, b) for b in query_batches]).numpy()


def ground_truth(args: argparse.Namespace, path: str, tokenizer: Any, train_view: Any,
                 query_batches: list[Any], work: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(subsets x train)`` masks and ``(subsets x queries)`` outputs, cached by settings."""
    import pyarrow as pa
    from rich.progress import track

    decides = ("seed", "base_rows", "base_steps", "train", "queries", "subsets", "steps",
               "batch_size", "lr", "max_length")  # what the retrained models depend on
    key = hashlib.sha256(repr({name: getattr(args, name) for name in decides}).encode())
    cache = work.parent / f"truth-v2-{key.hexdigest()[:12]}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["masks"], saved["outputs"]
    rng = np.random.default_rng(args.seed)
    n = train_view.num_rows
    masks = np.zeros((args.subsets, n), np.float32)
    outputs = np.zeros((args.subsets, sum(b.input_ids.shape[0] for b in query_batches)))
    for s in track(range(args.subsets), description="retraining on halves"):
        rows = np.sort(rng.choice(n, n // 2, replace=False))
        masks[s, rows] = 1
        model = fine_tune(path, tokenizer, train_view.take(pa.array(rows)), args, 1000 + s)
        outputs[s] = log_likelihoods(model, query_batches)
    np.savez(cache, masks=masks, outputs=outputs)
    return masks, outputs


# ---------------------------------------------------------------------------- methods


def exact_loss_gradients(model: torch.nn.Module, batch_list: list[Any]) -> torch.Tensor:
    """``(rows, parameters)`` unprojected per-example response-loss gradients."""
    from attribution.output_gradients import CausalLMOutput
    from models.gradients import LinearGradients

    grads = LinearGradients(model)
    out = []
    for b in batch_list:
        rows = b.input_ids.shape[0]
        per = grads.per_example(rows, lambda b=b: CausalLMOutput().loss(model, b))
        out.append(torch.cat([per[n].reshape(rows, -1) for n in grads.names], 1))
    return torch.cat(out)


def naive_trak(models: list[torch.nn.Module], train: list[Any], queries: list[Any],
               args: argparse.Namespace) -> np.ndarray:
    """TRAK written out: one example at a time, dense Gaussian projection, numpy solve."""
    from attribution.output_gradients import CausalLMOutput
    from models.lm import TokenBatch

    def rows_of(batch_list: list[Any]) -> list[TokenBatch]:
        return [TokenBatch(b.input_ids[i:i + 1], b.attention_mask[i:i + 1],
                           b.loss_mask[i:i + 1])
                for b in batch_list for i in range(b.input_ids.shape[0])]

    out = CausalLMOutput()
    kernel_terms, one_minus_p = [], []
    for m, model in enumerate(models):
        params = [p for p in model.parameters() if p.requires_grad]
        size = sum(p.numel() for p in params)
        gen = torch.Generator().manual_seed(10_000 + m)
        projection = torch.randn(size, args.proj_dim, generator=gen) / np.sqrt(args.proj_dim)

        def phi_and_p(batch_list: list[Any], params: list = params,
                      projection: torch.Tensor = projection, model: Any = model
                      ) -> tuple[np.ndarray, np.ndarray]:
            phis, ps = [], []
            for row in rows_of(batch_list):
                f, p = out(model, row)
                grads = torch.autograd.grad(f.sum(), params)
                phis.append((torch.cat([g.flatten() for g in grads]) @ projection).numpy())
                ps.append(float(p[0]))
            return np.stack(phis).astype(np.float64), np.array(ps)

        phi, p = phi_and_p(train)
        phi_q, _ = phi_and_p(queries)
        kernel = phi.T @ phi
        kernel += args.ridge * np.mean(np.diag(kernel)) * np.eye(len(kernel))
        kernel_terms.append(phi_q @ np.linalg.solve(kernel, phi.T))
        one_minus_p.append(1 - p)
    return np.mean(kernel_terms, 0) * np.mean(one_minus_p, 0)[None, :]


def folded_scores(models: list[torch.nn.Module], train: list[Any], queries: list[Any],
                  args: argparse.Namespace, output: Any, method: Any) -> np.ndarray:
    """``(queries, train)`` scores of a folded-feature method (``Trak`` or ``TracIn``)
    fitted on each model's projected gradients of ``output`` (projection seed = the model's
    number, the same on both sides)."""
    from attribution.output_gradients import output_gradients

    def gradients(batches: list[Any]) -> list[Any]:
        return [output_gradients(m, batches, output, args.proj_dim, i)
                for i, m in enumerate(models)]

    method.fit(gradients(train))
    return method.query_features(gradients(queries)) @ method.train_features().T


def ours_trak(models: list[torch.nn.Module], train: list[Any], queries: list[Any],
              args: argparse.Namespace, kernel: str) -> np.ndarray:
    from attribution.output_gradients import CausalLMOutput
    from attribution.trak import Trak

    return folded_scores(models, train, queries, args, CausalLMOutput(),
                         Trak(args.ridge, kernel))


def ours_fisher(models: list[torch.nn.Module], train: list[Any], queries: list[Any],
                args: argparse.Namespace) -> np.ndarray:
    """TRAK's kernel on the training objective's own gradients (output = minus the mean
    response loss, p = 0): an empirical-Fisher influence."""
    from attribution.output_gradients import CausalLMOutput
    from attribution.tracin import NegativeLoss
    from attribution.trak import Trak

    return folded_scores(models, train, queries, args, NegativeLoss(CausalLMOutput()),
                         Trak(args.ridge, "trak"))


def ours_tracin(models: list[torch.nn.Module], train: list[Any], queries: list[Any],
                args: argparse.Namespace) -> np.ndarray:
    from attribution.output_gradients import CausalLMOutput
    from attribution.tracin import NegativeLoss, TracIn

    return folded_scores(models, train, queries, args, NegativeLoss(CausalLMOutput()),
                         TracIn())


def less_cosine(model: torch.nn.Module, train: list[Any], queries: list[Any],
                args: argparse.Namespace) -> np.ndarray:
    from models.projection import make_projection

    g_train, g_query = exact_loss_gradients(model, train), exact_loss_gradients(model, queries)
    project = make_projection("sparse", [g_train.shape[1]], args.proj_dim, 0, "cpu")
    a, b = project.project([g_train]), project.project([g_query])
    a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (b @ a.T).numpy()


def tracin(models: list[torch.nn.Module], train: list[Any], queries: list[Any],
           args: argparse.Namespace) -> np.ndarray:
    total = 0
    for model in models:
        total = total + args.lr * (exact_loss_gradients(model, queries)
                                   @ exact_loss_gradients(model, train).T).numpy()
    return total


def attribute(method: str, models: list[torch.nn.Module], train: list[Any],
              queries: list[Any], args: argparse.Namespace) -> np.ndarray:
    """``(queries, train)`` scores: higher = the row raises the query's log-likelihood."""
    one, all_ = models[:1], models
    if method == "random":
        rows = sum(b.input_ids.shape[0] for b in train)
        cols = sum(b.input_ids.shape[0] for b in queries)
        return np.random.default_rng(args.seed).normal(size=(cols, rows))
    if method == "less_cosine":
        return less_cosine(models[0], train, queries, args)
    if method.startswith("tracin"):
        return tracin(one if method.endswith("_1") else all_, train, queries, args)
    if method.startswith("trak"):
        return naive_trak(one if method.endswith("_1") else all_, train, queries, args)
    if method.startswith("ds_trak") or method.startswith("ds_gn"):
        kernel = "trak" if method.startswith("ds_trak") else "gauss_newton"
        return ours_trak(one if method.endswith("_1") else all_, train, queries, args, kernel)
    if method.startswith("ds_tracin"):
        return ours_tracin(one if method.endswith("_1") else all_, train, queries, args)
    if method.startswith("ds_fisher"):
        return ours_fisher(one if method.endswith("_1") else all_, train, queries, args)
    if method == "ds_bif":
        from attribution.bif import bif
        from attribution.output_gradients import CausalLMOutput

        return bif(models[0], CausalLMOutput(), train, queries).T
    raise ValueError(method)


def main(argv: list[str] | None = None) -> int:
    from attribution.ensemble import train_linear_layers
    from dataselect.metrics import lds_per_query
    from models.lm import load_tokenizer

    args = parse_args(argv)
    work = Path(args.workdir) / f"seed-{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base_rows, train_rows, query_rows = split_rows(args)
    path = base_model(args, base_rows, work)
    tokenizer = load_tokenizer(path)
    train_view = view_of(train_rows, work / "train.jsonl")
    query_view = view_of(query_rows, work / "queries.jsonl")
    train, queries = batches(tokenizer, train_view, args), batches(tokenizer, query_view, args)
    masks, outputs = ground_truth(args, path, tokenizer, train_view, queries, work)
    setup = {"base_and_ground_truth_s": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    models = [fine_tune(path, tokenizer, train_view, args, seed) for seed in range(args.ensemble)]
    for model in models:
        train_linear_layers(model)
    setup["ensemble_s"] = round(time.perf_counter() - started, 1)
    full = np.mean(np.stack([log_likelihoods(m, queries) for m in models]), 0)
    print(f"queries' mean log-likelihood: full set {full.mean():.3f}, halves "
          f"{outputs.mean():.3f}; spread across halves (mean std) {outputs.std(0).mean():.4f}")
    results = []
    for method in args.methods.split(","):
        started = time.perf_counter()
        scores = attribute(method, models, train, queries, args)
        seconds = time.perf_counter() - started
        per_query = lds_per_query(scores, masks, outputs)
        results.append({"method": method, "ours": method in OURS,
                        "lds": round(float(np.nanmean(per_query)), 4),
                        "lds_std": round(float(np.nanstd(per_query)), 4),
                        "seconds": round(seconds, 2)})
        print(f"{method:12s} LDS {np.nanmean(per_query):6.3f} ± {np.nanstd(per_query):.3f}  "
              f"{seconds:7.2f} s{'  (ours)' if method in OURS else ''}", flush=True)
    summary = {"args": vars(args), "setup": setup, "results": results,
               "torch_threads": torch.get_num_threads()}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
