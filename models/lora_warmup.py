"""LESS step 1: a short LoRA warmup on a random sample of the pool.

The paper trains LoRA adapters (r=128, alpha=512, dropout 0.1, on q/k/v/o projections) for
4 epochs on 5 % of the pool with AdamW at lr 2e-5, a linear schedule with 3 % warmup, and
keeps one checkpoint per epoch. Those are the defaults here; tiny CPU models need a higher
learning rate and a smaller rank (the tests use lr 1e-3, r 8).

Each epoch's checkpoint is saved with its Adam moments keyed by parameter name and the
epoch's mean learning rate (:mod:`models.lora_checkpoints`), which is what the gradient
features need. The sample is a seeded Bernoulli draw by id (independent of file order and
partitioning); epoch ``e`` shuffles with seed ``(seed, e)``. A rerun reuses finished
epochs: it loads the last one's adapter and moments and goes on from there, and ends with
the same checkpoints an uninterrupted run writes.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dataselect.corpus import Corpus
from dataselect.errors import InputError
from dataselect.outdir import OutputFolder
from dataselect.output import write_json
from models.lm import (
    check_model_folder,
    load_causal_lm,
    load_tokenizer,
    model_digest,
    pick_device,
    tokenize,
)
from models.lora_checkpoints import (
    INFO_FILE,
    MOMENTS_FILE,
    canonical_name,
    check_checkpoint,
    load_adapter,
    load_moments,
    peft_deprecations_quiet,
    save_checkpoint,
)
from models.warmup_config import WarmupConfig, sample_pool

ADAPTER = "default"
SETTINGS_FILE = "warmup.json"


def learning_rate(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warmup for ``ceil(warmup_ratio * total)`` steps, then linear decay to 0 (the
    Hugging Face "linear" schedule LESS trains with); ``step`` counts from 0."""
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def warmup(model: str, pool: Corpus, out: str, config: WarmupConfig | None = None,
           device: str | None = None, progress: Any = None) -> list[str]:
    """Train LoRA on a sample of ``pool``; return the checkpoint folders, one per epoch."""
    from peft import LoraConfig, get_peft_model

    config = config or WarmupConfig()
    config.check()
    model = check_model_folder(model)
    settings = {"model": model, "pool": pool.fingerprint(), **asdict(config)}
    settings["target_modules"] = list(config.target_modules)
    _claim(out, settings)
    base_digest = model_digest(model)  # in each checkpoint: readers refuse another model
    sample, blank = sample_pool(pool, config.fraction, config.seed)
    torch_device = pick_device(device)
    tokenizer = load_tokenizer(model)
    torch.manual_seed(config.seed)  # LoRA's initial weights
    base = load_causal_lm(model, torch_device)
    done = _finished_epochs(out, config.epochs)
    if done:
        net = load_adapter(base, _epoch_dir(out, done), is_trainable=True)
    else:
        with peft_deprecations_quiet():
            net = get_peft_model(base, LoraConfig(
                r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                target_modules=list(config.target_modules), task_type="CAUSAL_LM"))
    net.to(torch_device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(sample.num_rows / config.batch_size)
    total = steps_per_epoch * config.epochs
    if done:
        _restore_moments(net, optimizer, _epoch_dir(out, done))
    step = done * steps_per_epoch
    for epoch in range(done + 1, config.epochs + 1):
        order = np.random.default_rng([config.seed, epoch]).permutation(sample.num_rows)
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout: same masks after a resume
        rates = []
        for start in range(0, sample.num_rows, config.batch_size):
            batch = sample.take(pa.array(order[start:start + config.batch_size]))
            tokens = tokenize(tokenizer, batch, config.max_length).to(torch_device)
            rate = learning_rate(step, total, config.lr, config.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = rate
            rates.append(rate)
            logits = net(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
            loss = _batch_loss(logits, tokens)
            if loss is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            step += 1
            if progress is not None:
                progress(1)
        save_checkpoint(net, optimizer, ADAPTER, _epoch_dir(out, epoch), {
            "epoch": epoch, "base_model": base_digest,
            "mean_lr": float(np.mean(rates)), "lr_first": rates[0],
            "lr_last": rates[-1], "sample_rows": sample.num_rows,
            **({"blank_rows_left_out": blank} if blank else {}), **settings})
    return [_epoch_dir(out, e) for e in range(1, config.epochs + 1)]


def _batch_loss(logits: torch.Tensor, tokens: Any) -> torch.Tensor | None:
    """Mean cross-entropy over all response tokens of the batch (Hugging Face's loss)."""
    mask = tokens.loss_mask[:, 1:]
    if not mask.any():
        return None
    token_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        tokens.input_ids[:, 1:].reshape(-1), reduction="none")
    return token_loss[mask.reshape(-1)].mean()


def _epoch_dir(out: str, epoch: int) -> str:
    return os.path.join(out, f"epoch-{epoch}")


def _finished_epochs(out: str, epochs: int) -> int:
    """How many epochs, from the first, have a checkpoint that passes the readers' check
    (:func:`models.lora_checkpoints.check_checkpoint`): one whose adapter_config.json or
    checkpoint.json was damaged since is trained again, with every epoch after it, rather
    than resumed from or handed on."""
    done = 0
    for epoch in range(1, epochs + 1):
        try:
            check_checkpoint(_epoch_dir(out, epoch), needs=(MOMENTS_FILE, INFO_FILE))
        except InputError:
            break
        done = epoch
    return done


def _claim(out: str, settings: dict[str, Any]) -> None:
    """Claim ``out`` (new, empty or a warmup folder of dataselect's) and record the settings
    in it; refuse a folder trained with other settings rather than mix two runs."""
    claimed = OutputFolder.claim(out, "warmup", settings, overwrite=None)
    if not claimed.resumed:
        write_json(settings, claimed.join(SETTINGS_FILE))


def _restore_moments(net: Any, optimizer: torch.optim.Optimizer, path: str) -> None:
    """Put a finished epoch's Adam state back into ``optimizer`` to continue training."""
    moments = load_moments(path)
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        key = canonical_name(name, ADAPTER)
        optimizer.state[param] = {
            "step": torch.tensor(float(moments.step)),
            "exp_avg": moments.exp_avg[key].to(param.device).clone(),
            "exp_avg_sq": moments.exp_avg_sq[key].to(param.device).clone(),
        }
