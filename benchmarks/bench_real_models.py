"""Benchmark: selection precision per instruction task with a real pretrained model
(SmolLM2-135M-Instruct) against DSIR and against the tiny model a recipe trains itself.

What is measured
----------------
* Pool: ``--per-task`` rows of each of the four tasks of ``data/instructions/train.jsonl``
  (a seeded sample), so each task is a known quarter of the pool. Targets: the shipped
  ``data/instructions/targets/<task>.jsonl`` (10 chat records each).
* For every task and method, ``dataselect select`` picks ``k = --per-task`` rows, top-k for
  every method (DSIR's default, importance resampling, samples: noisier at this size and
  not what is compared here); precision = share of picks
  whose ``task`` is the target task. Every run is the command a user types, one process
  tree, its wall time (model loading included) and peak RSS polled.
* Methods:
  - ``dsir``: hashed n-grams, no model (``--scorer dsir``);
  - ``rds_tiny``: RDS+ (``--scorer embed``) on the 64-wide, 2-layer Llama that recipes
    build and train on the pool itself (``models.base.build`` of ``embed.yaml``: 1,000-token
    BPE, 200 steps); built once, timed separately (``build_tiny``);
  - ``rds_smollm2``: RDS+ on SmolLM2-135M-Instruct, chat template rendering;
  - ``less_smollm2``: LESS on SmolLM2 after one LoRA warmup on ``--warmup-fraction`` of the
    pool (q/k/v/o, rank ``--rank``, ``--epochs`` checkpoints), ``--proj-dim`` dimensions;
    the warmup runs once (``warmup_smollm2``, timed separately) and serves every task, and
    so does the pool's feature store (the first task's time includes computing it);
  - ``bads_smollm2``: BADS on SmolLM2, ``--bads-steps`` SGLD steps.
* The model comes from ``--model`` (a converted folder) or ``dataselect model import
  smollm2``'s cache.

Prints one line per (task, method) and a precision table; writes the JSON to ``--json``.
Run from the repository root::

    .venv/bin/python benchmarks/bench_real_models.py --per-task 25
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from common import cores, dataselect_command, fresh_dir, run_monitored, select_env

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = ROOT / "data" / "instructions"
TASKS = ("code", "define", "summarize", "translate")
METHODS = ("dsir", "rds_tiny", "rds_smollm2", "less_smollm2", "bads_smollm2")


def write_pool(folder: Path, per_task: int, seed: int) -> Path:
    rows = [json.loads(line) for line in (INSTRUCTIONS / "train.jsonl").open()]
    random.Random(seed).shuffle(rows)
    picked = [r for task in TASKS for r in [r for r in rows if r["task"] == task][:per_task]]
    path = folder / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path


def build_tiny(pool: Path, folder: Path) -> str:
    """The model recipes build (embed.yaml's ``models.base.build``), trained on the pool."""
    from dataselect import read_corpus
    from models.lm import build_tiny_causal_lm, train_causal_lm

    rows = [json.loads(line) for line in pool.open()]
    texts = [m["content"] for r in rows for m in r["messages"]]
    blank = build_tiny_causal_lm(texts, folder / "blank", vocab_size=1000, hidden_size=64)
    corpus = read_corpus(str(pool), text="messages")
    view = corpus.scoring_view(corpus.to_table("pool"), response_spans=True)
    return train_causal_lm(blank, view, folder / "trained", steps=200, max_length=256)


def smollm2_folder(explicit: str | None) -> str:
    if explicit:
        return explicit
    from models.importer import import_model

    return import_model("smollm2")


def run(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command; raises on failure."""
    stats = run_monitored(command, log, timeout=None, env=select_env())
    if stats.returncode != 0:
        raise SystemExit(f"failed ({stats.returncode}): {' '.join(command)}\n"
                         f"{stats.stderr[-2000:]}")
    return stats.wall_seconds, stats.peak_rss_mb


def precision_of(out: Path, task: str) -> float:
    picked = pq.read_table(sorted(out.glob("part-*.parquet")), columns=["task"])
    tasks = picked["task"].to_pylist()
    return sum(t == task for t in tasks) / max(len(tasks), 1)


def method_params(method: str, args: argparse.Namespace, models: dict[str, Any]) -> list[str]:
    length = ["-p", f"max_length={args.max_length}"]
    if method == "dsir":
        return ["--scorer", "dsir", "--policy", "top_k"]
    if method == "rds_tiny":
        return ["--scorer", "embed", "-p", f"model={models['tiny']}", *length,
                "--policy", "top_k"]
    if method == "rds_smollm2":
        return ["--scorer", "embed", "-p", f"model={models['smollm2']}", *length,
                "--policy", "top_k"]
    if method == "less_smollm2":
        return ["--scorer", "less", "-p", f"model={models['smollm2']}", "-p",
                "checkpoints=" + ",".join(models["checkpoints"]), "-p",
                f"proj_dim={args.proj_dim}", "-p", f"features={models['less_features']}",
                *length, "--policy", "top_k"]
    if method == "bads_smollm2":
        return ["--scorer", "bads", "-p", f"model={models['smollm2']}", "-p",
                f"steps={args.bads_steps}", *length, "--policy", "top_k"]
    raise ValueError(method)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--model", default=None, help="converted SmolLM2 folder")
    parser.add_argument("--max-length", type=int, default=512)  # code targets need > 256
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--proj-dim", type=int, default=1024)
    parser.add_argument("--bads-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/bench_real_models")
    parser.add_argument("--dataselect", default=None)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods, tasks = args.methods.split(","), args.tasks.split(",")
    work = fresh_dir(Path(args.workdir))
    dataselect = dataselect_command(args.dataselect)
    pool = write_pool(work, args.per_task, args.seed)
    models: dict[str, Any] = {}
    setup: dict[str, float] = {}
    if "rds_tiny" in methods:
        started = time.perf_counter()
        models["tiny"] = build_tiny(pool, work / "tiny")
        setup["build_tiny"] = time.perf_counter() - started
    if any(m.endswith("smollm2") for m in methods):
        models["smollm2"] = smollm2_folder(args.model)
    if "less_smollm2" in methods:
        warm = work / "warm"
        seconds, _ = run([dataselect, "warmup", "--model", models["smollm2"], "--pool",
                          str(pool), "--text-field", "messages", "--out", str(warm),
                          "-p", f"fraction={args.warmup_fraction}", "-p",
                          f"epochs={args.epochs}", "-p", f"rank={args.rank}", "-p",
                          f"alpha={4 * args.rank}", "-p", f"max_length={args.max_length}",
                          "-p", f"seed={args.seed}"], work / "warmup")
        setup["warmup_smollm2"] = seconds
        models["checkpoints"] = sorted(str(p) for p in warm.glob("epoch-*"))
        # the pool's gradient features are computed once and serve every task, as in a recipe
        models["less_features"] = str(work / "less_features")
    results: list[dict[str, Any]] = []
    for task in tasks:
        target = INSTRUCTIONS / "targets" / f"{task}.jsonl"
        for method in methods:
            out = work / f"{method}-{task}"
            command = [dataselect, "select", "--pool", str(pool), "--target", str(target),
                       "--text-field", "messages", "--k", str(args.per_task), "--seed",
                       str(args.seed), "--out", str(out), *method_params(method, args, models)]
            seconds, peak = run(command, work / f"{method}-{task}")
            found = precision_of(out, task)
            results.append({"task": task, "method": method, "precision": round(found, 3),
                            "seconds": round(seconds, 1), "peak_rss_mb": round(peak)})
            print(f"{task:10s} {method:14s} precision {found:.3f}  {seconds:7.1f} s  "
                  f"peak {peak:6.0f} MB", flush=True)
    print("\nprecision at k = rows of the task in the pool "
          f"({args.per_task} of {args.per_task * len(TASKS)}), {cores()} cores")
    print("| task | " + " | ".join(methods) + " |")
    print("| --- |" + " ---: |" * len(methods))
    for task in tasks:
        row = {r["method"]: r for r in results if r["task"] == task}
        print(f"| {task} | " + " | ".join(f"{row[m]['precision']:.2f}" for m in methods) + " |")
    print("| seconds (sum over tasks) | " + " | ".join(
        f"{sum(r['seconds'] for r in results if r['method'] == m):.0f}" for m in methods) + " |")
    for name, seconds in setup.items():
        print(f"setup {name}: {seconds:.1f} s")
    summary = {"args": vars(args), "cores": cores(), "setup_seconds": setup,
               "results": results, "load_average": os.getloadavg()}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
