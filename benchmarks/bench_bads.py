"""Benchmark: the cost of a BADS step against a plain training step of the same model.

No reference implementation of BADS exists (the paper has no public code), so the
comparison is the one the paper makes: time and peak memory per step of joint SGLD over
θ and the weights, against ordinary training of the same model with the same optimiser,
train batch size and data. A BADS step also runs the meta batch through the model (in the
same forward pass) and updates the weight model; that is its whole extra cost.

Cases
-----
* ``digits``: the test suite's MLP (64-64-10) on scikit-learn's digits; train batch 64,
  BADS meta batch 16; weight network on penultimate features x one-hot label, and free
  per-example weights. Plain: ``scorers.bads.classifier.train_uniform``.
* ``lm``: a small Llama (``build_tiny_causal_lm``, hidden ``--hidden``, ``--layers`` layers,
  trained tokenizer, random weights) on ``data/instructions/train.jsonl``; train batch 8,
  BADS meta batch 2 (``Bads`` defaults), max length 256. Plain: the same stream of pool
  batches, tokenized the same way, mean response-token loss, Adam.

Each figure is a child process (its own peak RSS, ``ru_maxrss``) with one torch thread.
Time per step is the difference between a run of ``--steps`` and a run of 5 steps divided
by the step difference, so model loading, tokenizer setup and the pool count cancel out.

Prints ``<case>: ours <x> ms/step, plain <y> ms/step, ratio <x/y>, peak RSS ours <m> MB,
plain <n> MB``. Run from the repository root::

    .venv/bin/python benchmarks/bench_bads.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INSTRUCTIONS = ROOT / "data" / "instructions"
SHORT = 5


def _digits_run(kind: str, steps: int, queue: mp.Queue) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from scorers.bads.classifier import fit_classifier, train_uniform
    from scorers.bads.sampler import BadsConfig

    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor((x / 16.0).astype(np.float32)), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10))
    config = BadsConfig(beta=0.6, steps=steps, batch_size=64, meta_batch_size=16)
    start = time.perf_counter()
    if kind == "plain":
        train_uniform(model, x[100:], y[100:], config)
    else:
        fit_classifier(model, x[100:], y[100:], x[:100], y[:100], config, weights=kind)
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def _lm_run(kind: str, steps: int, model_dir: str, queue: mp.Queue) -> None:
    import numpy as np
    import torch

    from dataselect import read_corpus
    from models.lm import load_causal_lm, load_tokenizer, per_example_loss, tokenize
    from scorers.bads.scorer import Bads, _train_batches

    torch.set_num_threads(1)
    pool = read_corpus(str(INSTRUCTIONS / "train.jsonl"), text="messages")
    target = read_corpus(str(INSTRUCTIONS / "targets" / "define.jsonl"), text="messages")
    start = time.perf_counter()
    if kind == "bads":
        Bads(model_dir, steps=steps, max_length=256, beta=0.25, sigma=0.2).fit(target, pool)
    else:
        tokenizer = load_tokenizer(model_dir)
        sizes = [pool.read_partition(i).num_rows for i in range(pool.npartitions)]
        torch.manual_seed(0)
        model = load_causal_lm(model_dir, torch.device("cpu")).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        batches = _train_batches(pool, sizes, 8, np.random.default_rng(0))
        for _ in range(steps):
            batch, _ = next(batches)
            tokens = tokenize(tokenizer, batch, 256)
            logits = model(input_ids=tokens.input_ids,
                           attention_mask=tokens.attention_mask).logits
            loss = per_example_loss(logits, tokens)[tokens.has_response].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def _child(target, *args) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    seconds, max_rss_kb = queue.get()
    process.join()
    return seconds, max_rss_kb / 1024


def _per_step(target, steps: int, *args) -> tuple[float, float]:
    short, _ = _child(target, args[0], SHORT, *args[1:])
    long, rss = _child(target, args[0], steps, *args[1:])
    return (long - short) / (steps - SHORT) * 1000, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--cases", default="digits,lm")
    args = parser.parse_args()
    results = {}
    if "digits" in args.cases:
        plain = _per_step(_digits_run, args.steps, "plain")
        for kind in ("network", "free"):
            ours = _per_step(_digits_run, args.steps, kind)
            results[f"digits {kind}"] = (ours, plain)
    if "lm" in args.cases:
        from models.lm import build_tiny_causal_lm

        rows = [json.loads(line) for line in (INSTRUCTIONS / "train.jsonl").open()]
        texts = [m["content"] for r in rows for m in r["messages"]]
        with tempfile.TemporaryDirectory() as folder:
            model_dir = build_tiny_causal_lm(texts, Path(folder) / "lm", vocab_size=2000,
                                             hidden_size=args.hidden, layers=args.layers)
            plain = _per_step(_lm_run, args.steps, "plain", model_dir)
            ours = _per_step(_lm_run, args.steps, "bads", model_dir)
            results[f"lm hidden={args.hidden} layers={args.layers}"] = (ours, plain)
    for name, ((ours, ours_rss), (plain, plain_rss)) in results.items():
        print(f"{name}: ours {ours:.2f} ms/step, plain {plain:.2f} ms/step, ratio "
              f"{ours / plain:.2f}, peak RSS ours {ours_rss:.0f} MB, plain {plain_rss:.0f} MB",
              flush=True)


if __name__ == "__main__":
    main()
