"""Benchmark: attribution quality (LDS) of our gradient features against TRAK and TracIn,
on scikit-learn's bundled digits (no download).

Protocol (TRAK paper style, Park et al. 2023)
---------------------------------------------
* Data: ``sklearn.datasets.load_digits`` (1,797 8x8 images, 10 classes), pixels / 16; a
  seeded split into ``--train`` (1,000) training rows and ``--queries`` (200) test queries.
* Models: ``logreg`` (multinomial logistic regression, one ``nn.Linear``) and ``mlp``
  (Linear-ReLU-Linear, ``--hidden`` 64 units). Full-batch Adam, ``--steps`` (500) steps at
  ``--lr-logreg`` 0.05 / ``--lr-mlp`` 0.02 with weight decay ``--weight-decay`` (1e-3), init
  seeded; checkpoints at every quarter of training (parameters and Adam's
  ``exp_avg``/``exp_avg_sq``). (At 500 steps logistic regression is at the loss 2,000 steps
  reach; the MLP within 0.001 of it.)
* Ground truth: ``--subsets`` (100) seeded random halves of the training rows; a model is
  retrained on each (same recipe, init seed = subset number) and its output on every query
  is recorded: the correct-class margin, logit of the true class minus the logsumexp of
  the others.
* Score: ``dataselect.metrics.lds`` (Spearman, across the retrained models, between the
  sum of the attribution scores of a subset's rows and that model's margin, per query);
  mean ± standard deviation over the queries (``lds_per_query``).

Methods (each in its own child process: time covers the attribution only, the models
being trained beforehand; peak RSS is the child's, imports included — see ``baseline``)
------------------------------------------------------------------------------------------
* ``less_cosine`` (ours): per-example loss gradients of the final model with
  ``models.gradients.LinearGradients``; training rows Adam-preconditioned from the
  optimizer's moments (``adam_precondition``), queries plain; both projected with
  ``RademacherProjection`` to ``--proj-dim`` (512); served through
  ``FeatureIndex.build(kind="flat")`` and ``attribute(k=all training rows)``: the cosine.
* ``less_cosine_4ckpt`` (ours): the same at the four checkpoints, views combined with
  ``combine_views`` (equal learning rates, so equal weights), one index search: LESS's
  checkpoint-summed cosine.
* ``less_cosine_eps_in_sqrt``: as ``less_cosine`` but preconditioned as LESS's own code
  does it, ``m' / sqrt(v' + eps)`` (``adam_precondition`` computes ``m' / (sqrt(v') + eps)``).
* ``less_inner`` (ours): the same projected features as ``less_cosine``, plain inner
  product (no normalisation; TracIn-style, keeps the magnitude LDS rewards).
* ``trak_1`` / ``trak_5`` (reference, written here): TRAK with 1 or 5 models (init seeds
  0-4, each its own projection seed): ``phi`` = per-example gradients of the margin,
  Gaussian-projected to ``--proj-dim``; scores ``phi_q (phi^T phi)^-1 phi^T diag(1 - p)``,
  ``p`` the probability of the correct class; kernel terms averaged over models, then
  multiplied by the averaged ``1 - p`` (as in the paper).
* ``tracin`` (reference, written here): ``sum_c lr * grad_loss(train) . grad_loss(query)``
  over the four checkpoints, exact (unprojected) gradients via ``torch.func``.
* ``dattri_trak_1`` / ``dattri_trak_5`` / ``dattri_tracin``: dattri's ``TRAKAttributor``
  and ``TracInAttributor`` on the same models, checkpoints and margin function, run by
  ``--dattri-python`` (a separate venv with ``dattri``), projection dim ``--proj-dim``.
* ``ds_trak_1`` / ``ds_trak_5`` (ours): ``attribution.trak.Trak`` with ``kernel="trak"``
  (TRAK's own kernel), on ``output_gradients`` (``LinearGradients`` margin gradients,
  sparse projection to ``--proj-dim``, one seed per model), ridge ``--trak-ridge``
  relative to the kernel's mean diagonal; scores from the folded features through
  ``dense_scores`` (the dense attribution path).
* ``ds_gn_1`` / ``ds_gn_5`` (ours, dataselect's default): the same with the Gauss-Newton
  kernel ``Phi^T diag(p(1-p)) Phi`` (``kernel="gauss_newton"``); ``ds_gn_5`` also serves
  the top 10 through ``inner_product_index`` + ``attribute_inner`` and records how far the
  index's scores are from the dense ones.
* ``ds_bif`` (ours): ``attribution.bif.bif`` at the final model, ``BifConfig()`` defaults.
* ``random``: seeded Gaussian scores (LDS ~ 0).

Every method's JSON record carries ``"ours": true|false``; each child computes its
matrix ``--repeats`` times and reports the median time (and all of them).

Run from the repository root::

    .venv/bin/python benchmarks/bench_lds.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# This file also runs under another venv (dattri's), which has torch and numpy but not our
# dependencies: everything else is imported inside the functions that need it.

MODELS = ("logreg", "mlp")
OURS = ("less_cosine", "less_cosine_4ckpt", "less_cosine_eps_in_sqrt", "less_inner")
REFERENCES = ("trak_1", "trak_5", "tracin")
DATASELECT = ("ds_trak_1", "ds_trak_5", "ds_gn_1", "ds_gn_5", "ds_bif")
DATTRI = ("dattri_trak_1", "dattri_trak_5", "dattri_tracin")
ALL_METHODS = ("random", *OURS, *DATASELECT, *REFERENCES, *DATTRI)
DEFAULT_DATTRI_PYTHON = "/tmp/dattri-venv/bin/python"
ENSEMBLE = 5
CHECKPOINTS = 4
CLASSES = 10


# ----------------------------------------------------------------------------- models


def build_model(kind: str, features: int, hidden: int) -> torch.nn.Module:
    if kind == "logreg":
        return torch.nn.Linear(features, CLASSES)
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, CLASSES))


def train(kind: str, x: torch.Tensor, y: torch.Tensor, seed: int, cfg: dict[str, Any],
          keep_checkpoints: bool = False) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Full-batch Adam from a seeded init; with ``keep_checkpoints``, the parameters and
    Adam moments at every quarter of training (the last one is the final model)."""
    torch.manual_seed(seed)
    model = build_model(kind, x.shape[1], cfg["hidden"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"],
                                 weight_decay=cfg["weight_decay"])
    steps = cfg["steps"]
    at = {round(steps * (c + 1) / CHECKPOINTS) for c in range(CHECKPOINTS)}
    names = {id(p): n for n, p in model.named_parameters()}
    checkpoints = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if keep_checkpoints and step in at:
            moments = {names[id(p)]: (s["exp_avg"].clone(), s["exp_avg_sq"].clone())
                       for p, s in optimizer.state.items()}
            checkpoints.append({"step": step, "lr": cfg["lr"],
                                "state": copy.deepcopy(model.state_dict()),
                                "adam": moments})
    return model, checkpoints


def margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the logsumexp of the other logits, per row."""
    with torch.no_grad():
        return margin_of(model(x), y)


def margin_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_true = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
    others = logits.masked_fill(is_true, float("-inf"))
    return true - torch.logsumexp(others, dim=-1)


def loaded(setup: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(setup["kind"], setup["x_train"].shape[1], setup["cfg"]["hidden"])
    model.load_state_dict(state)
    return model.eval()


# ----------------------------------------------------------------------------- ours


def ours_features(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, projection: Any,
                  adam: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                  eps_in_sqrt: bool = False) -> np.ndarray:
    """Projected per-example loss gradients (LinearGradients), Adam-preconditioned when
    ``adam`` is given."""
    from models.gradients import LinearGradients, adam_precondition

    grads = LinearGradients(model)
    per_example = grads.per_example(
        len(x), lambda: F.cross_entropy(model(x), y, reduction="none"))
    pieces = []
    for name in grads.names:
        g = per_example[name]
        if adam is not None:
            m, v = adam[name]
            if eps_in_sqrt:  # LESS's obtain_gradients_with_adam
                m2, v2 = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g.square()
                g = m2 / torch.sqrt(v2 + 1e-8)
            else:
                g = adam_precondition(g, m, v)
        pieces.append(g.reshape(len(x), -1))
    return projection.project(pieces).numpy()


def ours_method(setup: dict[str, Any], method: str, cfg: dict[str, Any],
                checks: dict[str, float]) -> np.ndarray:
    from attribution.index import FeatureIndex
    from attribution.output import attribute
    from dataselect.features import combine_views, normalize_rows
    from models.projection import RademacherProjection

    checkpoints = setup["checkpoints"] if method == "less_cosine_4ckpt" else \
        setup["checkpoints"][-1:]
    train_views, query_views = [], []
    for ckpt in checkpoints:
        model = loaded(setup, ckpt["state"])
        sizes = [p.numel() for p in model.parameters()]
        projection = RademacherProjection(sizes, cfg["proj_dim"], seed=cfg["seed"])
        train_views.append(ours_features(model, setup["x_train"], setup["y_train"], projection,
                                         ckpt["adam"], method == "less_cosine_eps_in_sqrt"))
        query_views.append(ours_features(model, setup["x_query"], setup["y_query"],
                                         projection))
    if method == "less_inner":
        return query_views[0] @ train_views[0].T
    weights = np.array([c["lr"] for c in checkpoints])
    train = combine_views(normalize_rows(np.stack(train_views, 1)), weights)
    query = combine_views(normalize_rows(np.stack(query_views, 1)), weights)
    n_train, n_query = len(train), len(query)
    index = FeatureIndex.build([([str(i) for i in range(n_train)], train)], train.shape[1])
    table = attribute(index, [str(q) for q in range(n_query)], query, k=n_train,
                      scale=float(weights.sum()))
    scores = np.full((n_query, n_train), np.nan, dtype=np.float64)
    rows = table["query_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    cols = table["train_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    scores[rows, cols] = table["score"].to_numpy()
    if np.isnan(scores).any():
        raise RuntimeError("attribute() did not return every (query, train) pair")
    direct = (query.astype(np.float64) @ train.astype(np.float64).T) * weights.sum()
    checks["index_vs_direct_max_abs_diff"] = float(np.abs(scores - direct).max())
    return scores


def dataselect_method(setup: dict[str, Any], method: str, cfg: dict[str, Any],
                      checks: dict[str, float]) -> np.ndarray:
    from attribution.bif import bif
    from attribution.output import attribute_inner, dense_scores, inner_product_index
    from attribution.output_gradients import ClassifierOutput, output_gradients
    from attribution.trak import Trak

    output = ClassifierOutput()
    train = [(setup["x_train"], setup["y_train"])]
    queries = [(setup["x_query"], setup["y_query"])]
    if method == "ds_bif":
        return bif(loaded(setup, setup["checkpoints"][-1]["state"]), output, train,
                   queries).T
    kernel, models = method.split("_")[1:]
    train_grads, query_grads = [], []
    for m, state in enumerate(setup["ensemble"][:int(models)]):
        model = loaded(setup, state)
        seed = cfg["seed"] * 1000 + m
        train_grads.append(output_gradients(model, train, output, cfg["proj_dim"], seed))
        query_grads.append(output_gradients(model, queries, output, cfg["proj_dim"], seed))
    trak = Trak(cfg["trak_ridge"], "gauss_newton" if kernel == "gn" else "trak"
                ).fit(train_grads)
    train_features, query_features = trak.train_features(), trak.query_features(query_grads)
    scores = dense_scores(train_features, query_features).T
    if checks.get("measure_index"):
        ids = [str(i) for i in range(len(train_features))]
        index, norm = inner_product_index(ids, train_features)
        table = attribute_inner(index, norm, [str(q) for q in range(len(query_features))],
                                query_features, k=10)
        rows = table["query_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        cols = table["train_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        top = np.sort(scores, axis=1)[:, ::-1][:, :10].reshape(-1)
        checks["index_top10_vs_dense_max_abs_diff"] = float(
            np.abs(table["score"].to_numpy() - scores[rows, cols]).max())
        checks["index_top10_vs_dense_rank_score_max_abs_diff"] = float(
            np.abs(table["score"].to_numpy() - top).max())
    return scores


# ----------------------------------------------------------------------------- references


def per_example_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      function: str) -> torch.Tensor:
    """``(rows, params)`` gradients of the per-row loss or margin, by ``torch.func``."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def value(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        if function == "margin":
            return margin_of(logits, yi.unsqueeze(0))[0]
        return F.cross_entropy(logits, yi.unsqueeze(0))

    g = torch.func.vmap(torch.func.grad(value), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[n].reshape(len(x), -1) for n in params], 1)


def trak(setup: dict[str, Any], models: int, cfg: dict[str, Any]) -> np.ndarray:
    kernels, one_minus_p = [], []
    for m, state in enumerate(setup["ensemble"][:models]):
        model = loaded(setup, state)
        g_train = per_example_grads(model, setup["x_train"], setup["y_train"], "margin")
        g_query = per_example_grads(model, setup["x_query"], setup["y_query"], "margin")
        generator = torch.Generator().manual_seed(cfg["seed"] * 1000 + m)
        proj = torch.randn(g_train.shape[1], cfg["proj_dim"], generator=generator)
        phi, phi_q = (g_train @ proj).double(), (g_query @ proj).double()
        xtx = phi.T @ phi
        xtx.diagonal().add_(cfg["trak_ridge"] * xtx.diagonal().mean())
        kernels.append(phi_q @ torch.linalg.solve(xtx, phi.T))
        with torch.no_grad():
            probs = F.softmax(model(setup["x_train"]), -1)
        one_minus_p.append(1 - probs.gather(1, setup["y_train"][:, None])[:, 0].double())
    return (torch.stack(kernels).mean(0) * torch.stack(one_minus_p).mean(0)[None]).numpy()


def tracin(setup: dict[str, Any]) -> np.ndarray:
    total = 0
    for ckpt in setup["checkpoints"]:
        model = loaded(setup, ckpt["state"])
        g_train = per_example_grads(model, setup["x_train"], setup["y_train"], "loss")
        g_query = per_example_grads(model, setup["x_query"], setup["y_query"], "loss")
        total = total + ckpt["lr"] * (g_query.double() @ g_train.double().T)
    return total.numpy()


def dattri_method(setup: dict[str, Any], method: str, cfg: dict[str, Any]) -> np.ndarray:
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    model = loaded(setup, setup["checkpoints"][-1]["state"])

    def logits_of(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (x.unsqueeze(0),))

    def margin(params: dict[str, torch.Tensor], data: tuple) -> torch.Tensor:
        x, y = data
        return margin_of(logits_of(params, x), y.unsqueeze(0))[0]

    def correct_probability(params: dict[str, torch.Tensor], data: tuple) -> torch.Tensor:
        x, y = data
        return F.softmax(logits_of(params, x), -1)[0, y]

    def loss(params: dict[str, torch.Tensor], data: tuple) -> torch.Tensor:
        x, y = data
        return F.cross_entropy(logits_of(params, x), y.unsqueeze(0))

    def loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
        return DataLoader(TensorDataset(x, y), batch_size=cfg["dattri_batch"], shuffle=False)

    train_loader = loader(setup["x_train"], setup["y_train"])
    query_loader = loader(setup["x_query"], setup["y_query"])
    projector = {"proj_dim": cfg["proj_dim"], "proj_max_batch_size": 32,
                 "proj_seed": cfg["seed"], "device": "cpu"}
    if method.startswith("dattri_trak"):
        models = int(method.rsplit("_", 1)[1])
        task = AttributionTask(loss_func=margin, model=model,
                               checkpoints=setup["ensemble"][:models])
        attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability,
                                    projector_kwargs=projector, device="cpu",
                                    regularization=cfg["dattri_regularization"])
        attributor.cache(train_loader)
        scores = attributor.attribute(query_loader)
    else:
        task = AttributionTask(loss_func=loss, model=model,
                               checkpoints=[c["state"] for c in setup["checkpoints"]])
        attributor = TracInAttributor(
            task=task, weight_list=torch.tensor([c["lr"] for c in setup["checkpoints"]]),
            normalized_grad=False, projector_kwargs=projector, device="cpu")
        scores = attributor.attribute(train_loader, query_loader)
    return scores.T.double().numpy()  # dattri: (train, test)


# ----------------------------------------------------------------------------- child


def child(spec: dict[str, Any], result_path: str) -> int:
    torch.set_num_threads(spec["threads"])
    setup = torch.load(spec["setup"])
    cfg, method = setup["cfg"], spec["method"]
    if method == "baseline":  # what loading costs, for reading the other peaks
        if spec.get("import_ours"):
            import attribution.index  # noqa: F401
            import models.gradients  # noqa: F401
        scores = np.zeros((1, 1))
    checks: dict[str, float] = {}
    times = []
    checks["measure_index"] = False  # the index check runs once more, untimed
    for _ in range(spec.get("repeats", 1) if method != "baseline" else 1):
        start = time.perf_counter()
        if method == "random":
            scores = np.random.default_rng(cfg["seed"]).standard_normal(
                (len(setup["x_query"]), len(setup["x_train"])))
        elif method in OURS:
            scores = ours_method(setup, method, cfg, checks)
        elif method in DATASELECT:
            scores = dataselect_method(setup, method, cfg, checks)
        elif method.startswith("trak_"):
            scores = trak(setup, int(method.split("_")[1]), cfg)
        elif method == "tracin":
            scores = tracin(setup)
        elif method in DATTRI:
            scores = dattri_method(setup, method, cfg)
        times.append(time.perf_counter() - start)
    if method == "ds_gn_5":
        checks["measure_index"] = True
        dataselect_method(setup, method, cfg, checks)
    checks.pop("measure_index", None)
    np.save(spec["out"], np.asarray(scores, dtype=np.float64))
    Path(result_path).write_text(json.dumps({"seconds": float(np.median(times)),
                                             "all_seconds": times, **checks}))
    return 0


# ----------------------------------------------------------------------------- parent


def prepare(args: argparse.Namespace, kind: str, workdir: Path) -> dict[str, Any]:
    """Split, train the final model (with checkpoints) and the ensemble, retrain on the
    subsets; save what the children need; returns the subsets and their margins."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y_all = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.default_rng(args.seed).permutation(len(x_all))
    train_rows, query_rows = order[:args.train], order[args.train:args.train + args.queries]
    x_train, y_train = x_all[train_rows], y_all[train_rows]
    x_query, y_query = x_all[query_rows], y_all[query_rows]
    cfg = {"hidden": args.hidden, "lr": args.lr_mlp if kind == "mlp" else args.lr_logreg,
           "weight_decay": args.weight_decay, "steps": args.steps, "proj_dim": args.proj_dim,
           "seed": args.seed, "dattri_batch": args.dattri_batch, "trak_ridge": args.trak_ridge}
    start = time.perf_counter()
    final, checkpoints = train(kind, x_train, y_train, args.seed, cfg, keep_checkpoints=True)
    ensemble = [checkpoints[-1]["state"]] + [
        train(kind, x_train, y_train, args.seed + m, cfg)[0].state_dict()
        for m in range(1, ENSEMBLE)]
    rng = np.random.default_rng(args.seed + 1)
    subsets = np.zeros((args.subsets, args.train), dtype=np.int8)
    outputs = np.zeros((args.subsets, args.queries))
    for m in range(args.subsets):
        rows = np.sort(rng.choice(args.train, int(args.train * args.fraction), replace=False))
        subsets[m, rows] = 1
        model, _ = train(kind, x_train[rows], y_train[rows], 10_000 + m, cfg)
        outputs[m] = margins(model, x_query, y_query).numpy()
    trained = time.perf_counter() - start
    with torch.no_grad():
        full_loss = F.cross_entropy(final(x_train), y_train).item()
        accuracy = (final(x_query).argmax(1) == y_query).float().mean().item()
    final.zero_grad()
    F.cross_entropy(final(x_train), y_train).backward()
    grad_norm = float(torch.cat([p.grad.reshape(-1) for p in final.parameters()]).norm())
    setup = {"kind": kind, "cfg": cfg, "x_train": x_train, "y_train": y_train,
             "x_query": x_query, "y_query": y_query, "checkpoints": checkpoints,
             "ensemble": ensemble}
    path = workdir / f"setup_{kind}.pt"
    params = sum(p.numel() for p in final.parameters())
    # dattri's TRAK kernel: margin gradients / sqrt(params), projected by N(0, 1) entries
    # / sqrt(proj_dim), so its mean diagonal is about sum ||g||^2 / (params * proj_dim):
    # the same relative ridge for both
    g = per_example_grads(final, x_train, y_train, "margin")
    cfg["dattri_regularization"] = (args.trak_ridge * float(g.square().sum())
                                    / (params * args.proj_dim))
    torch.save(setup, path)
    print(f"{kind}: {params} parameters; final train loss {full_loss:.4f}, gradient norm "
          f"{grad_norm:.1e}, query accuracy {accuracy:.3f}; {args.subsets} subset models, "
          f"margin std across models (mean over queries) {outputs.std(0).mean():.3f}; "
          f"training {trained:.1f} s", flush=True)
    return {"setup": str(path), "subsets": subsets, "outputs": outputs, "params": params,
            "train_loss": full_loss, "grad_norm": grad_norm, "query_accuracy": accuracy,
            "training_seconds": trained}


def run_method(args: argparse.Namespace, kind: str, method: str, prepared: dict[str, Any],
               workdir: Path) -> dict[str, Any]:
    from common import run_child

    from dataselect.metrics import lds, lds_per_query

    python = args.dattri_python if method.startswith("dattri") else sys.executable
    out = workdir / f"{kind}_{method}.npy"
    spec = {"setup": prepared["setup"], "method": method, "out": str(out),
            "threads": args.threads, "import_ours": True, "repeats": args.repeats}
    command = [python, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    run = run_child(command, workdir, f"{kind}_{method}", args.timeout)
    if run.error:
        return {"error": run.error, "peak_rss_mb": run.stats.peak_rss_mb,
                "ours": method in OURS or method in DATASELECT}
    record = {**run.result, "peak_rss_mb": run.stats.peak_rss_mb,
              "ours": method in OURS or method in DATASELECT}
    if method != "baseline":
        scores = np.load(out)
        per_query = lds_per_query(scores, prepared["subsets"], prepared["outputs"])
        record.update(lds=lds(scores, prepared["subsets"], prepared["outputs"]),
                      lds_std=float(np.nanstd(per_query)),
                      undefined_queries=int(np.isnan(per_query).sum()))
    return record


def dattri_available(python: str) -> str | None:
    """Why dattri cannot run (None when it can)."""
    import subprocess

    if not Path(python).exists():
        return f"{python} not found (make it: see RESULTS.md)"
    done = subprocess.run([python, "-c", "import dattri, torch; print(torch.__version__)"],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from common import add_child_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS),
                        choices=ALL_METHODS)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--subsets", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr-logreg", type=float, default=0.05)
    parser.add_argument("--lr-mlp", type=float, default=0.02)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--dattri-batch", type=int, default=64)
    parser.add_argument("--dattri-python", default=DEFAULT_DATTRI_PYTHON)
    parser.add_argument("--trak-ridge", type=float, default=0.1,
                        help="TRAK's ridge relative to the kernel's mean diagonal, for the "
                             "naive TRAK, dattri's and ours (default 0.1: dataselect's rule; "
                             "0 is the paper's and dattri's)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per method (in one child); the median is reported")
    add_child_run_arguments(parser)
    return parser.parse_args(argv)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    methods = list(args.methods)
    missing = dattri_available(args.dattri_python) if any(
        m in DATTRI for m in methods) else None
    if missing:
        print(f"dattri skipped: {missing}")
        methods = [m for m in methods if m not in DATTRI]
    records: dict[str, Any] = {}
    for kind in args.models:
        prepared = prepare(args, kind, workdir)
        runs = {m: run_method(args, kind, m, prepared, workdir)
                for m in ("baseline", *methods)}
        records[kind] = {**{k: v for k, v in prepared.items()
                            if k not in ("subsets", "outputs")}, "methods": runs}
        for method, r in runs.items():
            if "error" in r:
                print(f"{kind} {method}: FAILED\n    " + r["error"].replace("\n", "\n    "))
            elif method == "baseline":
                print(f"{kind} baseline (load setup, import ours): peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB")
            else:
                print(f"{kind} {method}: LDS {r['lds']:.4f} ± {r['lds_std']:.4f}, "
                      f"{r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB"
                      + (f", {r['undefined_queries']} undefined queries"
                         if r["undefined_queries"] else "")
                      + (f"; index scores vs direct cosine: max abs diff "
                         f"{r['index_vs_direct_max_abs_diff']:.1e}"
                         if "index_vs_direct_max_abs_diff" in r else ""), flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:  # also under dattri's venv, which cannot import common
        inner = argparse.ArgumentParser()
        inner.add_argument("--child", required=True)
        inner.add_argument("--result", required=True)
        known = inner.parse_args(argv)
        return child(json.loads(known.child), known.result)
    from common import workdir_for

    args = parse_args(argv)

    with workdir_for(args, "bench_lds_") as workdir:
        records = benchmark(args, workdir)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("child", "result")}
        Path(args.json).write_text(json.dumps({"config": config, "models": records},
                                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
