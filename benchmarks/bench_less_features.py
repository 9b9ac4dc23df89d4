"""Benchmark: LESS gradient features at the paper's settings on a real model: our scorer
(batched per-example gradients + sparse JL projection) against LESS's own method.

What is measured
----------------
SmolLM2-135M (``--model``, a local Hugging Face folder) with LoRA rank ``--rank`` (128,
alpha 4 x rank) on q/k/v/o: 14.7 M LoRA parameters, projected to ``--proj-dim`` (8192).
``--examples`` (32) seeded rows of ``--data`` (chat records), rendered by
``read_corpus(path, text="messages").scoring_view(..., response_spans=True)``, truncated to
``--max-length`` (256) tokens. The checkpoint is made once by a child: seeded N(0, 0.02²)
``lora_B`` (as after some training; peft starts it at zero), then two AdamW steps (lr
2e-5) on 16 other rows of the file, saved with ``save_checkpoint`` (adapter + moments).

* **ours**: ``Less(...).featurize_batch(view, "pool")`` (Adam-preconditioned features,
  backward batches of ``--batch-size``, the default sparse projection), timed after one
  untimed batch; the split comes from wrapping, in that child only, ``LinearGradients.
  per_example`` (forward + backward + rebuild), ``_Capture.gradients`` (the per-example
  rebuild), ``adam_precondition`` and the projection's ``project``.
* **reference**: what ``less/data_selection/collect_grad_reps.py`` (princeton-nlp/LESS)
  does: one example per backward pass, ``model(**batch).loss`` with labels (-100 outside
  the response), ``torch.cat`` of every ``p.grad``, Adam preconditioning of the
  concatenated vector (the paper's ``sqrt(v') + eps``, same cost as the code's
  ``sqrt(v' + eps)``, so the features can be compared with ours), 16 full gradients kept
  per projection call. Its projection is trak's ``BasicProjector`` on a CPU (LESS uses it
  when ``fast_jl``'s CUDA kernel is unavailable): for each of ``dim / 128`` column blocks
  it regenerates a ``params x 128`` Rademacher block (``bernoulli_``, ``*2 - 1``) and
  multiplies. At 14.7 M parameters one block is 7.5 GB, so the projection is timed on the
  first ``--slices`` parameters (the real gradients' columns) and extrapolated linearly
  in parameters and blocks; two slice sizes show the linearity.
* **distortion**: full per-example gradients (Adam and plain) of the same rows, exact
  pairwise cosines against those after ``SparseProjection`` with ``s`` in ``--nonzeros``,
  with the time to project. For scale, a dense Gaussian matrix's cosine estimate has
  standard deviation ``(1 - cos²) / sqrt(m)`` per pair (to first order; a dense Rademacher
  matrix's is slightly lower). How spread the gradients are: the largest
  ``|x|_inf / |x|_2`` and the smallest ``|x|_2^4 / |x|_4^4`` (the effective number of
  coordinates) over rows. Then the same sweep on synthetic vectors built to be hard for
  sparse maps (100 x 50,000 projected to 2,048): Gaussian, Student-t with 1.5 degrees of
  freedom (a few coordinates dominate each vector), and rows sharing one heavy-tailed
  profile, each also through the dense ``RademacherProjection``.

Each tool runs ``--repeats`` times (3) in its own child (own peak RSS over its process
tree) with ``--threads`` torch threads (default 1); medians are printed.

Run from the repository root::

    .venv/bin/python benchmarks/bench_less_features.py --model /work/models/smollm2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_gradients import LESS_PROJECTOR_BATCH, cosines
from common import add_child_run_arguments, figure_line, run_child, workdir_for, write_result

DEFAULT_MODEL = "/work/models/smollm2"
DEFAULT_DATA = "data/instructions/train.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAK_BLOCK = 128  # collect_grad_reps.py: block_size


# ----------------------------------------------------------------------------- setup


def view_of(path: str) -> Any:
    from dataselect import read_corpus

    corpus = read_corpus(path, text="messages")
    return corpus.scoring_view(corpus.read_partition(0), response_spans=True)


def make_checkpoint(spec: dict[str, Any]) -> dict[str, Any]:
    """LoRA on q/k/v/o with seeded non-zero ``lora_B``, two AdamW steps, saved with its
    moments in the scorer's checkpoint format."""
    from peft import LoraConfig, get_peft_model

    from models.lm import load_causal_lm, load_tokenizer, per_example_loss, tokenize
    from models.lora_checkpoints import save_checkpoint

    model = load_causal_lm(spec["model"], torch.device("cpu"))
    config = LoraConfig(r=spec["rank"], lora_alpha=4 * spec["rank"], lora_dropout=0.0,
                        target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    tokenizer = load_tokenizer(spec["model"])
    view = view_of(spec["warmup_rows"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5,
                                  weight_decay=0.0)
    model.train()
    for start in (0, 8):
        tokens = tokenize(tokenizer, view.slice(start, 8), spec["max_length"])
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
        per_example_loss(logits, tokens).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    save_checkpoint(model, optimizer, "default", spec["checkpoint"],
                    {"epoch": 1, "mean_lr": 2e-5})
    return {"params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


# ----------------------------------------------------------------------------- ours


def ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Our scorer's pool features, timed and split by wrapping its steps."""
    import models.gradients as gradients_module
    import scorers.less as less_module

    scorer = less_module.Less(spec["model"], [spec["checkpoint"]], proj_dim=spec["proj_dim"],
                              seed=spec["seed"], max_length=spec["max_length"],
                              batch_size=spec["batch_size"], device="cpu")
    worker = less_module._gradient_model(scorer)  # loads the model: not timed
    timers: dict[str, float] = defaultdict(float)

    def timed(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[name] += time.perf_counter() - start
        return wrapper

    gradients_module._Capture.gradients = timed("rebuild", gradients_module._Capture.gradients)
    gradients_module.LinearGradients.per_example = timed(
        "per_example", gradients_module.LinearGradients.per_example)
    less_module.adam_precondition = timed("precondition", less_module.adam_precondition)
    worker.projection.project = timed("projection", worker.projection.project)
    view = view_of(spec["rows"])
    scorer.featurize_batch(view.slice(0, spec["batch_size"]))  # warm-up, builds the indices
    cold = dict(timers)
    timers.clear()
    start = time.perf_counter()
    features = scorer.featurize_batch(view, "pool")
    seconds = time.perf_counter() - start
    np.save(spec["out"], features[:, 0])
    split = {"forward_backward": timers["per_example"] - timers["rebuild"],
             "rebuild": timers["rebuild"], "precondition": timers["precondition"],
             "projection": timers["projection"]}
    split["other"] = seconds - sum(split.values())
    return {"seconds": seconds, "examples": view.num_rows, "split": split,
            "cold_projection": cold.get("projection"), "nonzeros": worker.projection.nonzeros,
            "params": worker.projection.input_dim, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- reference


def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """LESS's loop: one backward per example, concatenated gradient, Adam on the whole
    vector; the dense block projection timed on slices and extrapolated."""
    from peft import PeftModel

    from models.lm import load_causal_lm, load_tokenizer, tokenize
    from models.lora_checkpoints import canonical_name, load_moments
    from models.projection import SparseProjection

    tokenizer = load_tokenizer(spec["model"])
    model = PeftModel.from_pretrained(load_causal_lm(spec["model"], torch.device("cpu")),
                                      spec["checkpoint"]).eval()
    params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for _, p in params:
        p.requires_grad_(True)
    moments = load_moments(spec["checkpoint"])
    avg = torch.cat([moments.exp_avg[canonical_name(n, "default")].view(-1) for n, _ in params])
    avg_sq = torch.cat([moments.exp_avg_sq[canonical_name(n, "default")].view(-1)
                        for n, _ in params])
    view = view_of(spec["rows"])
    examples = [tokenize(tokenizer, view.slice(i, 1), spec["max_length"])
                for i in range(view.num_rows)]
    # the sparse matrix depends on the position in the concatenated vector only, so one
    # piece of all the parameters gives the scorer's projection
    check = SparseProjection([len(avg)], spec["proj_dim"], spec["seed"])

    def gradient(tokens: Any) -> torch.Tensor:
        labels = tokens.input_ids.masked_fill(~tokens.loss_mask, -100)
        loss = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                     labels=labels).loss
        loss.backward()
        g = torch.cat([p.grad.view(-1) for _, p in params if p.grad is not None])
        m = 0.9 * avg + 0.1 * g
        v = 0.999 * avg_sq + 0.001 * g**2
        model.zero_grad()
        return m / (v.sqrt() + 1e-8)

    gradient(examples[0])  # warm-up, untimed
    seconds, full, projected, first_call = 0.0, [], [], None
    for tokens in examples:
        start = time.perf_counter()
        full.append(gradient(tokens))
        seconds += time.perf_counter() - start
        if len(full) == LESS_PROJECTOR_BATCH or tokens is examples[-1]:
            rows = torch.stack(full)
            first_call = rows if first_call is None else first_call
            projected.append(check.project([rows]))  # for the agreement check, untimed
            full = []
    np.save(spec["out"], torch.cat(projected).numpy())
    slices = {}
    for size in spec["slices"]:
        slices[size] = dense_block_seconds(first_call[:, :size], spec["seed"])
    largest = max(spec["slices"])
    blocks = math.ceil(spec["proj_dim"] / TRAK_BLOCK)
    per_call = slices[largest] * (len(avg) / largest) * blocks
    return {"seconds": seconds, "examples": len(examples), "params": len(avg),
            "block_seconds": {str(k): v for k, v in slices.items()},
            "projection_per_call": per_call, "calls": len(projected),
            "projection_per_example": per_call / LESS_PROJECTOR_BATCH,
            "threads": torch.get_num_threads()}


def dense_block_seconds(rows: torch.Tensor, seed: int, repeats: int = 3) -> float:
    """Median seconds for trak's ``BasicProjector`` to generate one ``(columns x 128)``
    Rademacher block and multiply ``rows`` by it (one of its ``dim / 128`` steps)."""
    generator = torch.Generator()
    block = torch.empty((rows.shape[1], TRAK_BLOCK), dtype=torch.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generator.manual_seed(seed)
        block.bernoulli_(p=0.5, generator=generator)
        block *= 2.0
        block -= 1.0
        rows.float() @ block
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- distortion


def distortion(spec: dict[str, Any]) -> dict[str, Any]:
    """Exact cosines of full per-example gradients against projected ones, per ``s``."""
    import scorers.less as less_module
    from models.lm import tokenize
    from models.projection import SparseProjection

    scorer = less_module.Less(spec["model"], [spec["checkpoint"]], proj_dim=spec["proj_dim"],
                              seed=spec["seed"], max_length=spec["max_length"],
                              batch_size=spec["batch_size"], device="cpu")
    worker = less_module._gradient_model(scorer)
    view = view_of(spec["rows"])
    size = spec["batch_size"]
    sizes = worker.projection.sizes
    result: dict[str, Any] = {}
    for kind in ("adam", "sgd"):
        full = torch.empty((view.num_rows, sum(sizes)), dtype=torch.float32)
        for start in range(0, view.num_rows, size):
            tokens = tokenize(worker.tokenizer, view.slice(start, size), spec["max_length"])
            worker._activate(worker.adapters[0])
            pieces = worker._gradients(0, tokens, kind == "adam")
            full[start:start + len(pieces[0])] = torch.cat(pieces, 1)
            del pieces
        exact = gram(full)
        keep = exact.diagonal() > 0  # a row whose response is cut off has no gradient
        if not keep.all():
            full, exact = full[torch.from_numpy(keep)], exact[keep][:, keep]
        norms = np.sqrt(exact.diagonal())
        exact_cos = exact / np.outer(norms, norms)
        upper = np.triu_indices(len(exact), 1)
        dense_rms = (1 - exact_cos[upper] ** 2) / np.sqrt(spec["proj_dim"])
        peak = full.abs().amax(1).double().numpy() / norms
        rows: dict[str, Any] = {"dense_expected_rms": float(np.sqrt((dense_rms**2).mean())),
                                "rows": int(keep.sum()), "max_peak_ratio": float(peak.max()),
                                "min_effective_coordinates": float(
                                    (norms**4 / fourth_powers(full)).min()),
                                "exact_cosine_range": [float(exact_cos[upper].min()),
                                                       float(exact_cos[upper].max())]}
        for s in spec["nonzeros"]:
            projection = SparseProjection(sizes, spec["proj_dim"], spec["seed"], nonzeros=s)
            chunks = list(torch.split(full, size))
            start = time.perf_counter()
            projected = [projection.project(list(chunks[0].split(sizes, 1)))]
            cold = time.perf_counter() - start
            start = time.perf_counter()
            projected += [projection.project(list(c.split(sizes, 1))) for c in chunks[1:]]
            warm = (time.perf_counter() - start) / (len(full) - len(chunks[0]))
            rows[f"s{s}"] = {**errors(torch.cat(projected).double().numpy(), exact),
                             "cold_first_batch": cold, "warm_per_example": warm}
        result[kind] = rows
        del full
    result["synthetic"] = synthetic(spec["nonzeros"], spec["seed"])
    return result


def errors(projected: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Cosine errors over pairs and squared-norm errors over rows, projected vs exact
    (``exact``: the Gram matrix of the original rows)."""
    norms = np.sqrt(exact.diagonal())
    upper = np.triu_indices(len(exact), 1)
    error = np.abs(cosines_matrix(projected) - exact / np.outer(norms, norms))[upper]
    ratio = (projected**2).sum(1) / exact.diagonal()
    return {"max_cos_error": float(error.max()),
            "p99_cos_error": float(np.quantile(error, 0.99)),
            "rms_cos_error": float(np.sqrt((error**2).mean())),
            "max_norm_error": float(np.abs(ratio - 1).max())}


def synthetic(nonzeros: list[int], seed: int, rows: int = 100, columns: int = 50_000,
              dim: int = 2048) -> dict[str, Any]:
    """The distortion sweep on vectors built to be hard for sparse maps, with the dense
    Rademacher matrix alongside."""
    from models.projection import RademacherProjection, SparseProjection

    rng = np.random.default_rng(seed)
    profile = rng.standard_t(1.2, size=columns)
    kinds = {"gaussian": rng.normal(size=(rows, columns)),
             "student_t_1.5": rng.standard_t(1.5, size=(rows, columns)),
             "shared_heavy_profile": profile * rng.normal(size=(rows, columns)) + profile / 2}
    out: dict[str, Any] = {}
    for name, x in kinds.items():
        exact = x @ x.T
        tensor = [torch.tensor(x, dtype=torch.float32)]
        found = {"dense": errors(RademacherProjection([columns], dim, seed + 1)
                                 .project(tensor).double().numpy(), exact)}
        for s in nonzeros:
            found[f"s{s}"] = errors(SparseProjection([columns], dim, seed + 1, nonzeros=s)
                                    .project(tensor).double().numpy(), exact)
        out[name] = found
    return out


def gram(full: torch.Tensor, columns: int = 1 << 20) -> np.ndarray:
    out = torch.zeros((len(full), len(full)), dtype=torch.float64)
    for start in range(0, full.shape[1], columns):
        block = full[:, start:start + columns].double()
        out += block @ block.T
    return out.numpy()


def fourth_powers(full: torch.Tensor, columns: int = 1 << 20) -> np.ndarray:
    out = np.zeros(len(full))
    for start in range(0, full.shape[1], columns):
        out += (full[:, start:start + columns].double() ** 4).sum(1).numpy()
    return out


def cosines_matrix(matrix: np.ndarray) -> np.ndarray:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit @ unit.T


# ----------------------------------------------------------------------------- driver


def child(spec: dict[str, Any], result_path: str) -> int:
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    tool = {"checkpoint": make_checkpoint, "ours": ours, "reference": reference,
            "distortion": distortion}[spec["tool"]]
    write_result(result_path, tool(spec))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="local Hugging Face folder")
    parser.add_argument("--data", default=DEFAULT_DATA, help="JSONL chat records")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--proj-dim", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, nargs="+", default=[1 << 19, 1 << 20],
                        help="parameters the dense projection is timed on")
    parser.add_argument("--nonzeros", type=int, nargs="*", default=[1, 2, 4, 8, 16],
                        help="s values for the distortion sweep (none: skip it)")
    parser.add_argument("--skip-reference", action="store_true")
    add_child_run_arguments(parser)
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    lines = [line for line in Path(args.data).read_text().splitlines() if line.strip()]
    order = np.random.default_rng(args.seed).permutation(len(lines))
    (workdir / "rows.jsonl").write_text(
        "".join(lines[i] + "\n" for i in sorted(order[:args.examples])))
    (workdir / "warmup.jsonl").write_text(
        "".join(lines[i] + "\n" for i in sorted(order[args.examples:args.examples + 16])))
    spec = {"model": os.path.abspath(args.model), "rows": str(workdir / "rows.jsonl"),
            "warmup_rows": str(workdir / "warmup.jsonl"), "rank": args.rank,
            "seed": args.seed, "max_length": args.max_length, "proj_dim": args.proj_dim,
            "batch_size": args.batch_size, "threads": args.threads,
            "checkpoint": str(workdir / "checkpoint"), "slices": args.slices,
            "nonzeros": args.nonzeros}
    run = run_tool({**spec, "tool": "checkpoint"}, workdir, "checkpoint", args.timeout)
    print(f"checkpoint: LoRA r={args.rank} on {'/'.join(TARGETS)}, {run['params']:,} "
          f"parameters ({run['process_seconds']:.0f} s to make)", flush=True)
    return spec


def run_tool(spec: dict[str, Any], workdir: Path, name: str, timeout: float | None
             ) -> dict[str, Any]:
    spec = {**spec, "out": str(workdir / f"{name}.npy")}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    run = run_child(command, workdir, name, timeout)
    if run.error:
        raise SystemExit(run.error)
    return {**run.result, "peak_rss_mb": run.stats.peak_rss_mb,
            "process_seconds": run.stats.wall_seconds, "features": spec["out"]}


def median_of(runs: list[dict[str, Any]], *keys: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    print(f"load average before: {os.getloadavg()}", flush=True)
    spec = prepare(args, workdir)
    runs: dict[str, Any] = {"ours": [], "reference": []}
    for repeat in range(args.repeats):  # interleaved, so drifting load hits both sides
        runs["ours"].append(run_tool({**spec, "tool": "ours"}, workdir, f"ours{repeat}",
                                     args.timeout))
        if not args.skip_reference:
            runs["reference"].append(run_tool({**spec, "tool": "reference"}, workdir,
                                              f"reference{repeat}", args.timeout))
        print(f"repeat {repeat + 1}/{args.repeats} done, load {os.getloadavg()}", flush=True)
    if args.nonzeros:
        runs["distortion"] = run_tool({**spec, "tool": "distortion"}, workdir, "distortion",
                                      args.timeout)
    runs["load_after"] = os.getloadavg()
    report(runs, args)
    return runs


def report(runs: dict[str, Any], args: argparse.Namespace) -> None:
    mine, theirs = runs["ours"], runs["reference"]
    n = mine[0]["examples"]
    per = {k: median_of(mine, "split", k) / n for k in mine[0]["split"]}
    total = median_of(mine, "seconds") / n
    if theirs:
        print("per repeat, gradient loop ours / reference (s per example): " + ", ".join(
            f"{(a['seconds'] - a['split']['projection']) / n:.3f} / {b['seconds'] / n:.3f}"
            for a, b in zip(mine, theirs)))
    print(f"ours per example ({len(mine)} runs, medians, {mine[0]['params']:,} params, "
          f"s={mine[0]['nonzeros']}): total {total:.3f} s = "
          + ", ".join(f"{k} {v:.3f} s ({100 * v / total:.1f} %)" for k, v in per.items())
          + f"; first-call index generation {median_of(mine, 'cold_projection'):.2f} s; "
          f"peak RSS {median_of(mine, 'peak_rss_mb'):.0f} MB")
    if theirs:
        loop = median_of(theirs, "seconds") / n
        projection = median_of(theirs, "projection_per_example")
        blocks = ", ".join(f"{int(k):,} params {v:.3f} s"
                           for k, v in theirs[0]["block_seconds"].items())
        print(f"reference per example: gradient loop {loop:.3f} s + dense projection "
              f"{projection:.2f} s (extrapolated: one 128-column block on {blocks}, x "
              f"{theirs[0]['params']:,} params, x {math.ceil(args.proj_dim / TRAK_BLOCK)} "
              f"blocks, / {LESS_PROJECTOR_BATCH} rows per call); peak RSS "
              f"{median_of(theirs, 'peak_rss_mb'):.0f} MB")
        print(figure_line("less features (per example)", total, loop + projection,
                          median_of(mine, "peak_rss_mb"),
                          f", reference {median_of(theirs, 'peak_rss_mb'):.0f} MB; gradient "
                          f"loop alone {loop / (total - per['projection']):.2f}x"))
        agree = cosines(np.load(mine[0]["features"]), np.load(theirs[0]["features"]))
        scored = np.isfinite(agree)  # rows cut off before their response have no gradient
        print(f"agreement: smallest per-example cosine, ours vs the reference's gradients "
              f"through the same sparse projection: {agree[scored].min():.6f} "
              f"({scored.sum()} of {len(agree)} rows have a gradient)")
    if "distortion" in runs:
        report_distortion(runs["distortion"], args)
    print(f"load average after: {runs['load_after']}")


def error_line(r: dict[str, float]) -> str:
    return (f"cosine error max {r['max_cos_error']:.4f}, p99 {r['p99_cos_error']:.4f}, RMS "
            f"{r['rms_cos_error']:.4f}; norm error max {r['max_norm_error']:.4f}")


def report_distortion(found: dict[str, Any], args: argparse.Namespace) -> None:
    for kind in ("adam", "sgd"):
        rows = found[kind]
        low, high = rows["exact_cosine_range"]
        print(f"distortion, {kind} gradients of {rows['rows']} rows (exact cosines {low:.3f} "
              f"to {high:.3f}; largest |x|_inf/|x|_2 {rows['max_peak_ratio']:.4f}, at least "
              f"{rows['min_effective_coordinates']:,.0f} effective coordinates; a dense "
              f"Gaussian matrix's expected RMS cosine error {rows['dense_expected_rms']:.4f}):")
        for s in args.nonzeros:
            r = rows[f"s{s}"]
            print(f"  s={s:<2}: {error_line(r)}; {1000 * r['warm_per_example']:.0f} ms per "
                  f"example warm, first batch {r['cold_first_batch']:.2f} s")
    for name, rows in found["synthetic"].items():
        print(f"distortion, synthetic {name} (100 x 50,000 -> 2,048):")
        for key, r in rows.items():
            print(f"  {key:<5}: {error_line(r)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(json.loads(args.child), args.result)
    with workdir_for(args, "bench_less_features_") as workdir:
        runs = benchmark(args, workdir)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "runs": runs}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
