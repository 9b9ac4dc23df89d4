"""Benchmark: LESS-style LoRA gradient features, our batched per-example gradients
(``models.gradients.LinearGradients``) against LESS's one-example-at-a-time loop.

What is measured
----------------
A small Llama (``models.lm.build_tiny_causal_lm``: byte-level BPE tokenizer trained on the
texts, ``--hidden`` wide, ``--layers`` deep, random weights) is wrapped with peft LoRA on
q/k/v/o (rank ``--rank``, dropout 0, eval mode). peft starts ``lora_B`` at zero, which makes
every ``lora_A`` gradient zero; here ``lora_B`` gets small seeded random values instead (as
after some training), so both halves of every adapter carry signal.

* **reference**: what ``less/data_selection/collect_grad_reps.py`` (princeton-nlp/LESS)
  does: batch size 1, ``loss = model(**batch).loss`` (labels = the input ids, -100 where a
  token is not scored), ``loss.backward()``, concatenate ``p.grad`` of the trainable
  parameters, ``model.zero_grad()``; one example at a time.
* **ours**: ``LinearGradients(model).per_example(batch_size, run_forward)`` on right-padded
  batches of ``--batch-sizes`` (8, 16, 32), ``run_forward`` returning
  ``per_example_loss(logits, tokens)``; the per-parameter gradients are concatenated in the
  same order.

Both see the same ``--examples`` texts (a seeded sample of ``--texts``), tokenized once before
the clock starts (LESS's data loader also tokenizes beforehand) and truncated to
``--max-length`` tokens. Each runs in its own child process (own peak RSS, polled over its
process tree), with the same torch thread count (``--threads``, default 1); its time covers
the gradient loop only, after one untimed warm-up batch (model loading, tokenization and
imports excluded). Projected cosines are skipped where the projection matrix is too large to
cache (every call would regenerate it: minutes per call on a CPU); the raw cosine stands.

Agreement: the maximum over examples of ``|ours - ref| / |ref|`` (vector norms), the largest
element-wise difference relative to the largest reference element, and, after projecting
both with the same ``RademacherProjection`` to ``--proj-dim`` (8192) dimensions, the
smallest per-example cosine between them (goal: at least 0.9999).

Projection-only timing: ``RademacherProjection.project`` on our features in LESS's projector
batches of 16, cold (the random blocks generated on the way) and warm (cached blocks).

Prints one line per figure:
``gradients bs=<b>: ours <x> s, reference <y> s, ratio <y/x>, peak RSS ours <m> MB, ...``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_gradients.py
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import add_child_run_arguments, figure_line, fmt, run_child, workdir_for, write_result

from models.gradients import LinearGradients
from models.lm import (
    TokenBatch,
    build_tiny_causal_lm,
    load_causal_lm,
    load_tokenizer,
    per_example_loss,
    tokenize,
)
from models.projection import RademacherProjection

DEFAULT_TEXTS = "data/pool/*.parquet"
LESS_PROJECTOR_BATCH = 16  # collect_grad_reps.py: projector_batch_size


# ----------------------------------------------------------------------------- setup


def read_texts(pattern: str) -> list[str]:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"no files match {pattern!r}")
    texts: list[str] = []
    for path in paths:
        texts.extend(t for t in pq.read_table(path, columns=["text"])["text"].to_pylist() if t)
    return texts


def lora_model(spec: dict[str, Any]) -> Any:
    """The saved tiny Llama with LoRA on q/k/v/o, eval mode, seeded non-zero ``lora_B``."""
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(spec["model"], torch.device("cpu"))
    config = LoraConfig(r=spec["rank"], lora_alpha=4 * spec["rank"], lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model.eval()


def trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def token_table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})


# ----------------------------------------------------------------------------- children


def reference_features(model: Any, examples: list[TokenBatch]) -> torch.Tensor:
    """LESS's ``obtain_gradients`` loop: one example per backward pass."""
    params = [p for _, p in trainable(model)]
    rows = []
    for tokens in examples:
        labels = tokens.input_ids.masked_fill(~tokens.loss_mask, -100)
        loss = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                     labels=labels).loss
        loss.backward()
        rows.append(torch.cat([p.grad.view(-1) for p in params if p.grad is not None]))
        model.zero_grad()
    return torch.stack(rows)


def our_features(model: Any, batches: list[TokenBatch]) -> torch.Tensor:
    grads = LinearGradients(model)
    out = []
    for tokens in batches:
        size = len(tokens.input_ids)

        def run_forward(tokens: TokenBatch = tokens) -> torch.Tensor:
            logits = model(input_ids=tokens.input_ids,
                           attention_mask=tokens.attention_mask).logits
            return per_example_loss(logits, tokens)

        per_param = grads.per_example(size, run_forward)
        out.append(torch.cat([per_param[n].reshape(size, -1) for n in grads.names], 1))
    return torch.cat(out)


def child(spec: dict[str, Any], result_path: str) -> int:
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    if spec["tool"] == "projection":
        write_result(result_path, time_projection(spec))
        return 0
    model = lora_model(spec)
    tokenizer = load_tokenizer(spec["model"])
    texts = json.loads(Path(spec["texts"]).read_text())
    size = spec.get("batch_size", 1)
    batches = [tokenize(tokenizer, token_table(texts[i:i + size]), spec["max_length"])
               for i in range(0, len(texts), size)]
    compute = reference_features if spec["tool"] == "reference" else our_features
    compute(model, batches[:1])  # warm-up, untimed
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    features = compute(model, batches)
    seconds = time.perf_counter() - start
    np.save(spec["out"], features.detach().numpy())
    write_result(result_path, {
        "seconds": seconds, "examples": len(features), "params": features.shape[1],
        "sizes": [p.numel() for _, p in trainable(model)],
        "tokens": int(sum(int(b.attention_mask.sum()) for b in batches)),
        "padded_tokens": int(sum(b.attention_mask.numel() for b in batches)),
        "threads": torch.get_num_threads()})
    return 0


def time_projection(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds to project every feature row in LESS's projector batches of 16, cold (random
    blocks generated on the way) and warm (cached blocks, when they fit the cache)."""
    features = torch.from_numpy(np.load(spec["features"]))
    sizes = spec["sizes"]
    splits = np.cumsum(sizes)[:-1].tolist()
    projection = RademacherProjection(sizes, spec["proj_dim"], seed=spec["seed"])
    if not projection.cache:  # every call regenerates all of R: time one call, scale up
        features = features[:LESS_PROJECTOR_BATCH]
    calls = -(-len(features) // LESS_PROJECTOR_BATCH)
    timings: dict[str, Any] = {"cached": bool(projection.cache), "examples": len(features),
                               "calls": calls}
    for label in ("cold", "warm") if projection.cache else ("cold",):
        start = time.perf_counter()
        for i in range(0, len(features), LESS_PROJECTOR_BATCH):
            rows = features[i:i + LESS_PROJECTOR_BATCH]
            projection.project(list(torch.tensor_split(rows, splits, dim=1)))
        timings[label] = time.perf_counter() - start
    timings.setdefault("warm", timings["cold"])
    return timings


# ----------------------------------------------------------------------------- compare


def agreement(ours: np.ndarray, reference: np.ndarray, sizes: list[int], dim: int, seed: int
              ) -> dict[str, float]:
    """How far our features are from the reference's, raw and after projection."""
    diff = np.linalg.norm(ours - reference, axis=1)
    norms = np.linalg.norm(reference, axis=1)
    result = {"max_rel_diff": float((diff / np.maximum(norms, 1e-30)).max()),
              "max_abs_diff_over_max_abs": float(np.abs(ours - reference).max()
                                                 / np.abs(reference).max()),
              "zero_reference_rows": int((norms == 0).sum()),
              "min_cosine": float(cosines(ours, reference).min())}
    projection = RademacherProjection(sizes, dim, seed=seed) if dim > 0 else None
    if projection is not None and projection.cache:  # uncached, it takes minutes per call
        splits = np.cumsum(sizes)[:-1].tolist()

        def project(matrix: np.ndarray) -> np.ndarray:
            out = []
            for i in range(0, len(matrix), 64):
                rows = torch.from_numpy(matrix[i:i + 64])
                out.append(projection.project(list(torch.tensor_split(rows, splits, dim=1))))
            return torch.cat(out).numpy()

        result["min_projected_cosine"] = float(cosines(project(ours), project(reference)).min())
    return result


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", default=DEFAULT_TEXTS, help="Parquet files with a text column")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--proj-dim", type=int, default=8192,
                        help="projection for the agreement check and timing (0: skip both)")
    parser.add_argument("--skip-reference", action="store_true")
    add_child_run_arguments(parser)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    texts = read_texts(args.texts)
    rng = np.random.default_rng(args.seed)
    picked = [texts[i] for i in np.sort(rng.choice(len(texts), args.examples, replace=False))]
    model = build_tiny_causal_lm(texts, workdir / "model", vocab_size=args.vocab,
                                 hidden_size=args.hidden, layers=args.layers, heads=args.heads,
                                 max_positions=max(1024, args.max_length), seed=args.seed)
    (workdir / "texts.json").write_text(json.dumps(picked))
    return {"model": model, "texts": str(workdir / "texts.json"), "rank": args.rank,
            "seed": args.seed, "max_length": args.max_length, "proj_dim": args.proj_dim,
            "threads": args.threads}


def run_tool(spec: dict[str, Any], workdir: Path, name: str, timeout: float | None
             ) -> dict[str, Any]:
    spec = {**spec, "out": str(workdir / f"{name}.npy")}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    run = run_child(command, workdir, name, timeout)
    if run.error:
        raise SystemExit(run.error)
    return {**run.result, "peak_rss_mb": run.stats.peak_rss_mb,
            "process_seconds": run.stats.wall_seconds, "features": spec["out"]}


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = prepare(args, workdir)
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; LoRA "
          f"r={args.rank} on q/k/v/o; {args.examples} examples, max_length {args.max_length}; "
          f"torch threads {args.threads}", flush=True)
    runs: dict[str, Any] = {}
    if not args.skip_reference:
        runs["reference"] = run_tool({**spec, "tool": "reference"}, workdir, "reference",
                                     args.timeout)
    for size in args.batch_sizes:
        runs[f"ours_bs{size}"] = run_tool({**spec, "tool": "ours", "batch_size": size},
                                          workdir, f"ours_bs{size}", args.timeout)
    first = runs[f"ours_bs{args.batch_sizes[0]}"]
    if args.proj_dim > 0:
        runs["projection"] = run_tool({**spec, "tool": "projection", "sizes": first["sizes"],
                                       "features": first["features"]},
                                      workdir, "projection", args.timeout)
    report(runs, args)
    return runs


def report(runs: dict[str, Any], args: argparse.Namespace) -> None:
    reference = runs.get("reference")
    ref_features = np.load(reference["features"]) if reference else None
    for name, run in runs.items():
        if not name.startswith("ours_bs"):
            continue
        ref_seconds = reference["seconds"] if reference else None
        line = figure_line(f"gradients bs={name.removeprefix('ours_bs')}", run["seconds"],
                           ref_seconds, run["peak_rss_mb"],
                           f", reference {fmt(reference and reference['peak_rss_mb'], '.0f')} "
                           f"MB, {run['examples'] / run['seconds']:.1f} examples/s")
        if ref_features is not None:
            run["agreement"] = a = agreement(np.load(run["features"]), ref_features,
                                             run["sizes"], args.proj_dim, args.seed)
            line += (f"; max rel diff {a['max_rel_diff']:.2e}, min cosine "
                     f"{a['min_cosine']:.8f}, min projected cosine "
                     f"{fmt(a.get('min_projected_cosine'), '.8f')}")
        print(line, flush=True)
    first = runs[f"ours_bs{args.batch_sizes[0]}"]
    if reference:
        print(f"reference: {reference['examples'] / reference['seconds']:.1f} examples/s")
    if "projection" in runs:
        p = runs["projection"]
        print(f"projection {first['params']} -> {args.proj_dim} dims, {p['examples']} examples "
              f"in {p['calls']} call(s) of {LESS_PROJECTOR_BATCH}: ours cold {p['cold']:.2f} s, "
              f"warm {p['warm']:.2f} s ({cache_note(p['cached'])}), "
              f"{1000 * p['warm'] / p['examples']:.1f} ms per example warm, "
              f"peak RSS {p['peak_rss_mb']:.0f} MB")
    print(f"trainable LoRA parameters: {first['params']}; tokens {first['tokens']}, padded "
          f"tokens at bs={args.batch_sizes[0]}: {first['padded_tokens']}")


def cache_note(cached: bool) -> str:
    return "blocks cached" if cached else "R regenerated every call"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(json.loads(args.child), args.result)
    with workdir_for(args, "bench_gradients_") as workdir:
        runs = benchmark(args, workdir)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "runs": runs}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
