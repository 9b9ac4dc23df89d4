"""Benchmark: RDS+ embeddings, ``dataselect select --scorer embed`` end to end against the
plain transformers loop a user would write, on a real instruction model.

What is measured
----------------
The pool is the first ``--rows`` (300) chat records of ``data/instructions/train.jsonl``,
the target ``data/instructions/targets/define.jsonl``; the model SmolLM2-135M-Instruct
(``--model``, default ``/work/models/smollm2``, a local Hugging Face folder such as
``dataselect model import smollm2`` writes). Both sides embed the pool and the target rows
and score every pool row by its largest cosine to a target row.

* **reference** (a child of this script, one process, torch's default thread count): for
  each row, batch size 1, ``torch.no_grad()``, ``model(input_ids, output_hidden_states=True)``,
  the position-weighted mean of ``hidden_states[-1]`` (token ``t`` of ``n`` weighs
  ``t / (1 + ... + n)``), L2-normalised. Its tokens come from ``models.lm.tokenize`` on the
  same scoring view, so the model's chat template renders both sides' rows identically.
  Timed from loading the model to the last score (imports excluded).
* **ours**: ``dataselect select --scorer embed --pool POOL --target TARGET --text-field
  messages -p model=MODEL --k 10 --out OUT --workers W`` as a subprocess, timed from
  start to exit: interpreter start-up, the local Dask cluster, the model loaded in every
  worker, embedding the target (fit) and the pool, selection and writing are all charged
  to it. ``--workers`` defaults to the cores (``--ours-workers 1`` adds a run with one
  worker, which gets all cores' threads); ``--reference-threads 1`` runs the reference
  with one thread.

Figures, medians of ``--runs`` (3) alternating runs: wall time of each and the ratio,
tokens/s (real tokens: pool + target, after truncation at 512, no padding), and achieved
FLOP/s = 2 x parameters x real tokens / time, against this machine's float32 matmul peak
(a child: best of 10 ``torch.mm`` of 2048 x 2048 at torch's default thread count). Ours
also runs padding (printed: padded tokens of its length-sorted batches, which depend on the
partition plan); the reference runs none. Peak RSS is summed over each process tree.

Agreement: per pool row, the cosine between the reference's embedding and ``Embed.embed``'s
(the function our workers run, called in a further child on the same rows; goal at least
0.9999), and the largest difference between the reference's scores and those in our score
store.

Prints ``embed: ours <x> s, reference <y> s, ratio <y/x>, peak RSS ours <m> MB, ...`` and
the details. Run from the repository root (the machine's load average is printed: on a
shared machine, note it with the figures)::

    .venv/bin/python benchmarks/bench_embed.py --rows 300 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    cores,
    dataselect_command,
    figure_line,
    fmt,
    run_child,
    run_monitored,
    select_env,
    workdir_for,
    write_result,
)

DEFAULT_MODEL = "/work/models/smollm2"
INSTRUCTIONS = ROOT / "data" / "instructions"
MAX_LENGTH, BATCH_SIZE = 512, 16  # Embed's defaults
MATMUL = 2048


# ----------------------------------------------------------------------------- children


def _views(spec: dict[str, Any]) -> tuple[Any, Any]:
    from dataselect import read_corpus

    views = []
    for path in (spec["pool"], spec["target"]):
        corpus = read_corpus(path, text="messages")
        views.append(corpus.scoring_view(corpus.to_table()))
    return views[0], views[1]


def reference_child(spec: dict[str, Any], result: str) -> int:
    """The plain loop: one row per forward pass, the whole causal LM, every hidden state."""
    import torch
    from transformers import AutoModelForCausalLM

    from models.lm import load_tokenizer, model_view, tokenize

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    pool, target = _views(spec)
    start = time.perf_counter()
    tokenizer = load_tokenizer(spec["model"])  # AutoTokenizer, with a pad token
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()

    def embed(view: Any) -> tuple[np.ndarray, list[int]]:
        vectors, lengths = [], []
        for i in range(view.num_rows):
            ids = tokenize(tokenizer, model_view(view.slice(i, 1)), MAX_LENGTH).input_ids
            with torch.no_grad():
                states = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            n = states.shape[0]
            weights = torch.arange(1, n + 1, dtype=torch.float32) / (n * (n + 1) / 2)
            vector = (weights[:, None] * states).sum(0)
            vectors.append((vector / vector.norm()).numpy())
            lengths.append(n)
        return np.stack(vectors), lengths

    targets, target_lengths = embed(target)
    vectors, lengths = embed(pool)
    scores = (vectors @ targets.T).max(1)
    seconds = time.perf_counter() - start
    np.save(spec["out"], vectors)
    write_result(result, {
        "seconds": seconds, "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "embedding_params": model.get_input_embeddings().weight.numel(),
        "ids": pool["id"].to_pylist(), "scores": scores.tolist(),
        "pool_lengths": lengths, "target_lengths": target_lengths})
    return 0


def embed_child(spec: dict[str, Any], result: str) -> int:
    """Our ``Embed.embed`` on the pool rows, in one process, for the agreement check."""
    from scorers.embed import Embed

    pool, _ = _views(spec)
    start = time.perf_counter()
    vectors = Embed(spec["model"]).embed(pool)
    seconds = time.perf_counter() - start
    np.save(spec["out"], vectors)
    write_result(result, {"seconds": seconds})
    return 0


def peak_child(spec: dict[str, Any], result: str) -> int:
    """float32 ``torch.mm`` of MATMUL x MATMUL: best of 10 at torch's default threads, and
    best of 10 at one thread (x cores: what one-thread processes on every core reach)."""
    import torch

    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    found = {}
    for label in ("flops", "flops_one_thread"):
        if label == "flops_one_thread":
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
        best = float("inf")
        for _ in range(10):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        found[label] = 2 * MATMUL**3 / best
    write_result(result, {**found, "threads": threads})
    return 0


CHILDREN = {"reference": reference_child, "embed": embed_child, "peak": peak_child}


# ----------------------------------------------------------------------------- runs


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    lines = (INSTRUCTIONS / "train.jsonl").read_text().splitlines(keepends=True)[:args.rows]
    pool = workdir / "pool.jsonl"
    pool.write_text("".join(lines))
    return {"model": args.model, "pool": str(pool),
            "target": str(INSTRUCTIONS / "targets" / "define.jsonl")}


def child(name: str, spec: dict[str, Any], workdir: Path, timeout: float | None
          ) -> dict[str, Any]:
    spec = {**spec, "out": str(workdir / f"{name}.npy")}
    command = [sys.executable, str(Path(__file__).resolve()), "--child",
               json.dumps({**spec, "tool": name.split("-")[0]})]
    run = run_child(command, workdir, name, timeout)
    if run.error:
        raise SystemExit(run.error)
    return {**run.result, "peak_rss_mb": run.stats.peak_rss_mb,
            "process_seconds": run.stats.wall_seconds, "out": spec["out"]}


def ours(args: argparse.Namespace, spec: dict[str, Any], workdir: Path, workers: int,
         run: int) -> dict[str, Any]:
    out = workdir / f"ours-w{workers}-{run}"
    command = [dataselect_command(args.dataselect), "select", "--scorer", "embed",
               "--pool", spec["pool"], "--target", spec["target"], "--text-field", "messages",
               "-p", f"model={spec['model']}", "--k", "10", "--out", str(out),
               "--workers", str(workers)]
    stats = run_monitored(command, workdir / f"ours-w{workers}-{run}", args.timeout,
                          env=select_env())
    if stats.returncode != 0 or stats.timed_out:
        raise SystemExit(f"dataselect select failed:\n{stats.stderr[-3000:]}")
    parts = sorted((out / ".scores" / "embed").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    manifest = json.loads((out / ".manifest.json").read_text())
    stages = {s["stage"]: s["seconds"] for s in manifest["timings"]["stages"]}
    return {"seconds": stats.wall_seconds, "peak_rss_mb": stats.peak_rss_mb,
            "partitions": len(parts), "stages": stages,
            "scores": dict(zip(table["id"].to_pylist(), table["score"].to_pylist()))}


def padded_tokens(spec: dict[str, Any], lengths: dict[str, int], target_lengths: list[int]
                  ) -> int:
    """Tokens our batches run, padding included: the pool as the job plans it, each
    partition's rows in :func:`scorers.embed.length_batches`, and the target."""
    from dataselect import read_corpus
    from dataselect.scoring import plan_pool
    from scorers.embed import Embed, length_batches

    pool = plan_pool(read_corpus(spec["pool"], text="messages"), [Embed])
    groups = [np.array([lengths[i] for i in pool.read_partition(p)["id"].to_pylist()])
              for p in range(pool.npartitions)] + [np.array(target_lengths)]
    return int(sum(group[rows[0]] * len(rows) for group in groups
                   for rows in length_batches(group, BATCH_SIZE)))


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Peak before, ``--runs`` rounds of reference then ours (each worker count), the
    agreement child, peak again; every run notes the load average it started at."""
    spec = prepare(args, workdir)
    peaks = [child("peak-0", spec, workdir, args.timeout)]
    workers = [args.workers, *[w for w in args.ours_workers if w != args.workers]]
    references: list[dict[str, Any]] = []
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
    for run in range(args.runs):
        load = os.getloadavg()[0]
        references.append({**child(f"reference-{run}", {**spec,
                                                         "threads": args.reference_threads},
                                   workdir, args.timeout), "load": load})
        for w in workers:
            load = os.getloadavg()[0]
            runs[w].append({**ours(args, spec, workdir, w, run), "load": load})
    embedded = child("embed", spec, workdir, args.timeout)
    peaks.append(child("peak-1", spec, workdir, args.timeout))
    return report(args, spec, references, runs, embedded, peaks)


def report(args: argparse.Namespace, spec: dict[str, Any], references: list[dict[str, Any]],
           runs: dict[int, list[dict[str, Any]]], embedded: dict[str, Any],
           peaks: list[dict[str, Any]]) -> dict[str, Any]:
    ref = references[0]
    lengths = dict(zip(ref["ids"], ref["pool_lengths"]))
    tokens = sum(ref["pool_lengths"]) + sum(ref["target_lengths"])
    padded = padded_tokens(spec, lengths, ref["target_lengths"])
    flop = 2 * ref["params"] * tokens
    pool_flop = 2 * ref["params"] * sum(ref["pool_lengths"])  # the score stage's share
    # what our passes execute: no LM head (the tied embedding matrix), padding included
    executed = 2 * (ref["params"] - ref["embedding_params"]) * padded
    peak = max(p["flops"] for p in peaks)
    peak_one = max(p["flops_one_thread"] for p in peaks) * cores()
    loads = [r["load"] for r in references] + [r["load"] for w in runs for r in runs[w]]
    print(f"machine: {cores()} cores, load average {min(loads):.1f}-{max(loads):.1f} at the "
          f"runs' starts; matmul peak {peak / 1e9:.1f} GFLOP/s ({MATMUL}x{MATMUL} float32, "
          f"{peaks[0]['threads']} threads, best of before/after), one thread x {cores()} "
          f"cores {peak_one / 1e9:.1f} GFLOP/s")
    print(f"data: {args.rows} pool rows + {len(ref['target_lengths'])} target rows, {tokens} "
          f"tokens ({padded} in our padded batches); {ref['params'] / 1e6:.1f}M parameters "
          f"({ref['embedding_params'] / 1e6:.1f}M in the tied embedding / LM head); reference "
          f"threads {ref['threads']}")
    ref_seconds = statistics.median(r["seconds"] for r in references)
    ref_rss = statistics.median(r["peak_rss_mb"] for r in references)
    print(f"reference: {ref_seconds:.1f} s, {tokens / ref_seconds:.0f} tokens/s, "
          f"{flop / ref_seconds / 1e9:.1f} GFLOP/s = {flop / ref_seconds / peak:.0%} of peak; "
          f"times {_runs(references)}")
    summary: dict[str, Any] = {"reference": references, "ours": runs, "peaks": peaks,
                               "tokens": tokens, "padded_tokens": padded}
    for w, mine in runs.items():
        seconds = statistics.median(r["seconds"] for r in mine)
        rss = statistics.median(r["peak_rss_mb"] for r in mine)
        score = statistics.median(r["stages"].get("score:embed", float("nan")) for r in mine)
        worst = max(abs(r["scores"][i] - s) for r in mine
                    for i, s in zip(ref["ids"], ref["scores"]))
        print(figure_line(f"embed workers={w}", seconds, ref_seconds, rss,
                          f", reference {ref_rss:.0f} MB; {tokens / seconds:.0f} tokens/s, "
                          f"{flop / seconds / 1e9:.1f} GFLOP/s = {flop / seconds / peak:.0%} "
                          f"of peak (executed {executed / seconds / 1e9:.1f}); "
                          f"{mine[0]['partitions']} partitions; score stage {fmt(score, '.1f')} "
                          f"s = {pool_flop / score / peak:.0%} of peak; max |score - reference| "
                          f"{worst:.1e}; times {_runs(mine)}"))
        summary[f"max_score_diff_w{w}"] = worst
    first = next(iter(runs.values()))[0]["scores"]
    across = max(abs(r["scores"][i] - s) for mine in runs.values() for r in mine
                 for i, s in first.items())
    print(f"our runs ({', '.join(f'{w} workers' for w in runs)}): largest score difference "
          f"between any two {across:.1e}")
    ours_vectors, ref_vectors = np.load(embedded["out"]), np.load(ref["out"])
    cosine = (ours_vectors * ref_vectors).sum(1) / (
        np.linalg.norm(ours_vectors, axis=1) * np.linalg.norm(ref_vectors, axis=1))
    print(f"agreement: min per-row cosine of Embed.embed against the reference "
          f"{cosine.min():.8f} (goal >= 0.9999); Embed.embed alone in one process "
          f"{embedded['seconds']:.1f} s")
    summary.update(max_score_diff_across_runs=across, min_cosine=float(cosine.min()))
    return summary


def _runs(runs: list[dict[str, Any]]) -> str:
    """``[412.3 s at load 3.1, ...]``: each run's time and the load it started at."""
    return "[" + ", ".join(f"{r['seconds']:.1f} s at load {r['load']:.1f}" for r in runs) + "]"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL if os.path.isdir(DEFAULT_MODEL)
                        else None, help=f"local model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=cores(),
                        help="our local workers (default: the cores)")
    parser.add_argument("--ours-workers", type=int, nargs="*", default=[],
                        help="further worker counts to run ours with (e.g. 1)")
    parser.add_argument("--reference-threads", type=int, default=None,
                        help="torch threads of the reference (default: torch's own choice)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--dataselect", default=None, help="path of the dataselect script")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None and not args.model:
        parser.error(f"--model is required ({DEFAULT_MODEL} does not exist)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        return CHILDREN[spec["tool"]](spec, args.result)
    with workdir_for(args, "bench_embed_") as workdir:
        summary = benchmark(args, workdir)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), **summary}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
