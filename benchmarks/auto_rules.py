"""Study: which rule should ``auto`` use to turn its validation into weights (issue 29)?

Run after ``bench_auto.py --workdir W --scorers dsir "dsir top_k" fasttext "zipfit fast"``
has kept the single scorers' runs of some tasks in ``W``. For each task folder given, this
script

1. runs auto's validation in this process (``Auto(k=K, seed=S).validate``: the folds,
   the pool sample sized to the share, every candidate's fold fits and scores) and keeps
   the scores (``<task>/auto_rules.npz``; ``--reuse`` reads them back);
2. reads each single run's score store (``dsir_top_k``, ``fasttext``, ``zipfit_fast``):
   auto refits a chosen candidate exactly as that run fitted it, with the same seed;
3. applies every rule in :data:`RULES` to the validation, and scores the pool as auto
   would with the weights the rule gives (the weighted sum of scores standardised on the
   validation sample), and measures the precision of its top k.

It prints, per task, each rule's weights and precision, each single scorer's precision
(and DSIR's importance-resampling run's), and per rule: the mean precision, the worst gap
to the hindsight-best single scorer, and how many tasks were more than 0.01 below it.

    .venv/bin/python benchmarks/auto_rules.py W/python_docs@0.001 W/fortunes@0.01 ...
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from common import read_scores

from dataselect import read_corpus
from scorers.auto.scorer import Auto
from scorers.auto.validation import (
    FoldScores,
    combine_margin,
    criterion,
    measure,
    row_criteria,
    tied_with_best,
    weight_grid,
)

CANDIDATES = ("dsir", "fasttext", "zipfit")
RUN_FOLDERS = {"dsir": "dsir_top_k", "fasttext": "fasttext", "zipfit": "zipfit_fast"}
INSTRUCTIONS = Path(__file__).resolve().parent.parent / "data" / "instructions"


def _single(candidates: int, index: int) -> np.ndarray:
    return np.eye(candidates)[index]


def _grid_or_best(folds: list[FoldScores], share: float) -> np.ndarray:
    """The best single candidate unless a grid mix validates better by the margin."""
    weights = weight_grid(len(CANDIDATES))
    results = [(w, criterion(*measure(folds, w, share))) for w in weights]
    best_single = max(results[:len(CANDIDATES)], key=lambda r: r[1])
    best = max(results, key=lambda r: r[1])
    held = sum(f.held_out.shape[1] for f in folds)
    return best[0] if best[1] - best_single[1] > combine_margin(held) else best_single[0]


def _best(folds: list[FoldScores], share: float, key: Callable[[float, float], float],
          among: list[int]) -> np.ndarray:
    scored = [(key(*measure(folds, _single(len(CANDIDATES), i), share)), i) for i in among]
    return _single(len(CANDIDATES), max(scored, key=lambda s: (s[0], -s[1]))[1])


def rule(name: str, folds: list[FoldScores], share: float) -> np.ndarray:
    """The weights rule ``name`` gives (see :data:`RULES`)."""
    n = len(CANDIDATES)
    everyone = list(range(n))
    if name == "best single":
        return _best(folds, share, criterion, everyone)
    if name == "grid":
        return _grid_or_best(folds, share)
    tied = tied_with_best(folds, n, share)
    if len(tied) == 1:
        return _grid_or_best(folds, share)
    equal = np.zeros(n)
    equal[tied] = 1 / len(tied)
    if name == "average ties":
        return equal
    if name == "ties by AUC":
        return _best(folds, share, lambda auc, recall: auc, tied)
    if name == "ties by recall":
        return _best(folds, share, lambda auc, recall: recall, tied)
    if name == "ties weighted":
        values = np.zeros(n)
        for i in tied:
            values[i] = max(criterion(*measure(folds, _single(n, i), share)) - 0.5, 1e-9)
        return values / values.sum()
    if name == "average ties if better":
        single = _best(folds, share, criterion, tied)
        held = sum(f.held_out.shape[1] for f in folds)
        gain = criterion(*measure(folds, equal, share)) - criterion(
            *measure(folds, single, share))
        return equal if gain > combine_margin(held) else single
    if name == "average ties unless worse":
        single = _best(folds, share, criterion, tied)
        held = sum(f.held_out.shape[1] for f in folds)
        loss = criterion(*measure(folds, single, share)) - criterion(
            *measure(folds, equal, share))
        return single if loss > combine_margin(held) else equal
    if name == "ties by probability":
        rows = [row_criteria(folds, _single(n, i), share) for i in range(n)]
        best = max(tied, key=lambda i: (rows[i].mean(), -i))
        values = np.zeros(n)
        for i in tied:
            gap = rows[best] - rows[i]
            error = float(gap.std(ddof=1)) / np.sqrt(len(gap)) or 1e-12
            values[i] = math.erfc(float(gap.mean()) / error / math.sqrt(2)) / 2 * 2
        return values / values.sum()
    raise ValueError(name)


def task_files(folder: Path) -> tuple[str, str, str, str, int]:
    """(pool glob, target path, text field, label column, k) of a task folder."""
    task = json.loads((folder / "task.json").read_text()) if (folder / "task.json").exists() \
        else None
    if task is not None:
        return str(folder / "pool.jsonl"), str(folder / "target.jsonl"), "text", "domain", \
            int(task["k"])
    label = folder.name.removeprefix("instructions_")
    pool = INSTRUCTIONS / "train.jsonl"
    labels = [json.loads(line)["task"] for line in pool.read_text().splitlines() if line]
    return str(pool), str(INSTRUCTIONS / "targets" / f"{label}.jsonl"), "messages", "task", \
        labels.count(label)


def validation(folder: Path, seed: int, reuse: bool) -> tuple[list[FoldScores], float, list]:
    kept = folder / "auto_rules.pickle"
    if reuse and kept.exists():
        folds, share, ids = pickle.loads(kept.read_bytes())
        return folds, share, ids
    pool_glob, target, text, _, k = task_files(folder)
    v = Auto(k=k, seed=seed).validate(read_corpus(target, text), read_corpus(pool_glob, text))
    assert v.compared == list(CANDIDATES), v.left_out
    ids = v.validation["id"].to_pylist()
    kept.write_bytes(pickle.dumps((v.fold_scores, v.share, ids)))
    return v.fold_scores, v.share, ids


def pool_table(folder: Path) -> pd.DataFrame:
    """Every pool row's label and each candidate's score (from the single runs)."""
    pool_glob, _, text, column, _ = task_files(folder)
    table = None
    for name in CANDIDATES:
        scores = read_scores(folder / RUN_FOLDERS[name] / "out", name).rename(
            columns={"score": name})
        table = scores if table is None else table.merge(scores, on="id")
    pool = read_corpus(pool_glob, text)
    labels = pa.concat_tables([t.select(["id", column]) for t in pool.iter_tables()])
    labels = labels.to_pandas().rename(columns={column: "label"})
    merged = table.merge(labels, on="id")
    assert len(merged) == len(labels) == len(table), (len(merged), len(labels), len(table))
    return merged


def top_k_precision(table: pd.DataFrame, weights: np.ndarray, ids: list, label: str,
                    k: int) -> float:
    """auto's score with these weights: z-scores on the validation sample, summed."""
    reference = table[table["id"].isin(set(ids))]
    total = np.zeros(len(table))
    for weight, name in zip(weights, CANDIDATES):
        if weight:
            values = table[name].to_numpy(np.float64)
            spread = float(reference[name].std(ddof=0)) or 1.0
            total += weight * (values - float(reference[name].mean())) / spread
    order = np.lexsort((table["id"].to_numpy(), -total))[:k]
    return float((table["label"].to_numpy()[order] == label).mean())


def single_precisions(folder: Path) -> dict[str, float]:
    found = {}
    for name in ("dsir", "dsir_top_k", "fasttext", "zipfit_fast"):
        kept = folder / f"{name}.result.json"
        if kept.exists():
            found[name] = json.loads(kept.read_text())["result"]["precision"]
    return found


RULES = ("average ties", "best single", "grid", "ties by AUC", "ties by recall",
         "ties weighted", "average ties if better", "average ties unless worse",
         "ties by probability")


def study(folder: Path, seed: int, reuse: bool) -> dict[str, Any]:
    folds, share, ids = validation(folder, seed, reuse)
    table = pool_table(folder)
    _, _, _, _, k = task_files(folder)
    label = (folder.name.split("@")[0] if "@" in folder.name
             else folder.name.removeprefix("instructions_"))
    singles = single_precisions(folder)
    measured = {name: measure(folds, np.eye(3)[i], share) for i, name in enumerate(CANDIDATES)}
    rules = {}
    for name in RULES:
        weights = rule(name, folds, share)
        rules[name] = {"weights": weights.round(3).tolist(),
                       "precision": top_k_precision(table, weights, ids, label, k)}
    return {"task": folder.name, "share": share, "k": k, "singles": singles,
            "validation": {n: [round(a, 4), round(r, 4), criterion(a, r)]
                           for n, (a, r) in measured.items()},
            "rules": rules}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = []
    for folder in args.folders:
        result = study(Path(folder), args.seed, args.reuse)
        results.append(result)
        best = max(result["singles"].values())
        print(f"{result['task']} (share {result['share']:.4f}, k {result['k']}): singles "
              + ", ".join(f"{n} {p:.3f}" for n, p in result["singles"].items())
              + "; validation " + ", ".join(f"{n} {a:.3f}/{r:.3f}" for n, (a, r, _) in
                                           result["validation"].items()), flush=True)
        for rule, r in result["rules"].items():
            print(f"    {rule:24s} {r['precision']:.3f} ({r['precision'] - best:+.3f}) "
                  f"{r['weights']}", flush=True)
    print("\nrule: mean precision, worst gap to the hindsight best, tasks below it by > 0.01")
    for rule in RULES:
        gaps = [r["rules"][rule]["precision"] - max(r["singles"].values()) for r in results]
        mean = np.mean([r["rules"][rule]["precision"] for r in results])
        print(f"  {rule:24s} {mean:.4f} {min(gaps):+.4f} {sum(g < -0.01 for g in gaps)}")
    for name in ("dsir", "dsir_top_k", "fasttext", "zipfit_fast"):
        values = [r["singles"].get(name) for r in results if name in r["singles"]]
        if values:
            print(f"  single {name:17s} {np.mean(values):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
