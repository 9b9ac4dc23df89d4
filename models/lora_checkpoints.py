"""LoRA checkpoints that keep their Adam moments, keyed by parameter name.

LESS preconditions every training gradient with the optimizer state of the warmup run at
that checkpoint. The reference code reads it from a Trainer's ``optimizer.bin`` written by
FSDP, where it is keyed by parameter name; a Trainer run without FSDP stores the state by
parameter *position*, and the features silently come out wrong or the lookup fails (the
most common problem its users report). Here a checkpoint is a folder:

    adapter_config.json, adapter_model.safetensors   the LoRA adapter (peft save_pretrained)
    moments.safetensors   exp_avg/<name>, exp_avg_sq/<name> for every LoRA parameter;
                          metadata: beta1, beta2, eps, step
    checkpoint.json       epoch, step, mean learning rate of the epoch (LESS weights
                          each checkpoint's influence by it), settings of the warmup

``<name>`` is the parameter's name with the adapter name removed
(``...q_proj.lora_A.weight``), the same key peft uses in ``adapter_model.safetensors``, so
moments match parameters whatever the adapter is called when loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dataselect.errors import InputError

MOMENTS_FILE = "moments.safetensors"
INFO_FILE = "checkpoint.json"


def canonical_name(name: str, adapter: str) -> str:
    """``...lora_A.<adapter>.weight`` → ``...lora_A.weight``."""
    return name.replace(f".{adapter}.", ".")


@dataclass
class AdamMoments:
    """First and second moments of one checkpoint, by canonical parameter name."""

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    beta1: float
    beta2: float
    eps: float
    step: int

    def to(self, device: torch.device) -> AdamMoments:
        return AdamMoments({k: v.to(device) for k, v in self.exp_avg.items()},
                           {k: v.to(device) for k, v in self.exp_avg_sq.items()},
                           self.beta1, self.beta2, self.eps, self.step)


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    epoch: int
    step: int
    mean_lr: float


def save_checkpoint(model: Any, optimizer: torch.optim.Optimizer, adapter: str, out: str,
                    info: dict[str, Any]) -> None:
    """Write adapter, moments and info to ``out`` atomically (temp folder + rename)."""
    from safetensors.torch import save_file

    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    names = {id(p): canonical_name(n, adapter)
             for n, p in model.named_parameters() if p.requires_grad}
    tensors: dict[str, torch.Tensor] = {}
    step = 0
    for p, state in optimizer.state.items():
        if id(p) not in names or "exp_avg" not in state:
            continue
        key = names[id(p)]
        tensors[f"exp_avg/{key}"] = state["exp_avg"].detach().cpu().contiguous()
        tensors[f"exp_avg_sq/{key}"] = state["exp_avg_sq"].detach().cpu().contiguous()
        step = int(state["step"])
    if len(tensors) != 2 * len(names):
        raise RuntimeError(f"optimizer holds moments for {len(tensors) // 2} of "
                           f"{len(names)} trainable parameters")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=parent)
    try:
        model.save_pretrained(tmp, selected_adapters=[adapter])
        saved = Path(tmp) / adapter if (Path(tmp) / adapter).is_dir() else Path(tmp)
        save_file(tensors, str(saved / MOMENTS_FILE), metadata={
            "beta1": str(beta1), "beta2": str(beta2), "eps": str(group["eps"]),
            "step": str(step)})
        (saved / INFO_FILE).write_text(json.dumps({**info, "step": step}, indent=2,
                                                  sort_keys=True) + "\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(saved, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_checkpoint_json(path: str) -> dict[str, Any] | None:
    """A checkpoint folder's ``checkpoint.json`` as a dict, or None when it has none.

    One reader for every caller: LESS requires the file (:func:`read_info`), TracIn only
    weights members by its ``mean_lr`` when present; both refuse one that is not JSON."""
    info = Path(path) / INFO_FILE
    if not info.is_file():
        return None
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{INFO_FILE} is not readable JSON ({error}); rewrite it with "
                         "`dataselect less warmup`, or remove it", where=str(info)) from error
    if not isinstance(record, dict):
        raise InputError(f"{INFO_FILE} holds no JSON object; rewrite it with `dataselect less "
                         "warmup`, or remove it", where=str(info))
    return record


def read_info(path: str) -> CheckpointInfo:
    folder = Path(path)
    for name in ("adapter_config.json", MOMENTS_FILE, INFO_FILE):
        if not (folder / name).exists():
            hint = (" (LESS needs the warmup run's Adam moments by parameter name: train with"
                    " `dataselect less warmup`, which saves them)" if name == MOMENTS_FILE
                    else "")
            raise InputError(f"not a LoRA checkpoint: {name} is missing{hint}", where=path)
    info = read_checkpoint_json(path) or {}
    for key in ("epoch", "mean_lr"):
        if key not in info:
            raise InputError(f"{INFO_FILE} has no {key!r}", where=path, field=key)
    return CheckpointInfo(str(folder.resolve()), int(info["epoch"]), int(info.get("step", 0)),
                          float(info["mean_lr"]))


def load_moments(path: str) -> AdamMoments:
    from safetensors import safe_open

    file = os.path.join(path, MOMENTS_FILE)
    exp_avg, exp_avg_sq = {}, {}
    with safe_open(file, framework="pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            kind, _, name = key.partition("/")
            (exp_avg if kind == "exp_avg" else exp_avg_sq)[name] = f.get_tensor(key)
    try:
        return AdamMoments(exp_avg, exp_avg_sq, float(meta["beta1"]), float(meta["beta2"]),
                           float(meta["eps"]), int(meta["step"]))
    except KeyError as missing:
        raise InputError(f"moments file has no {missing} in its metadata", where=file) from None
