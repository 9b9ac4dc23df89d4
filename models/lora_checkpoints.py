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

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from typing_extensions import Required, TypedDict

from dataselect import checks, storage
from dataselect.errors import InputError, first_names, os_errors_named
from dataselect.records import check_record

MOMENTS_FILE = "moments.safetensors"
INFO_FILE = "checkpoint.json"
ADAPTER_CONFIG = "adapter_config.json"
# the adapter's weights as peft saves them (safetensors, or a pickle from older versions)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# how a user makes a checkpoint folder
WARMUP_HINT = "write it with `dataselect warmup`"


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


class CheckpointRecord(TypedDict, total=False):
    """The shape of ``checkpoint.json`` (:func:`dataselect.records.check_record`; the
    record's other keys are not read). LESS and TracIn weight each checkpoint by its
    ``mean_lr``: a rate edited to ``1e400`` (JSON's infinity) made every TracIn score NaN,
    and NaN, 0, -1 or ``"x"`` silently gave equal weights, so a learning rate is a finite
    number above 0. The warmup always writes ``epoch`` and ``mean_lr``: a record without
    one was edited too. Defined here, not with the other records, because pydantic's field
    constraints load pydantic, which a job without a model never needs."""

    epoch: Required[Annotated[int, Field(ge=1)]]
    step: Annotated[int, Field(ge=0)]
    mean_lr: Required[Annotated[float, Field(gt=0, allow_inf_nan=False)]]
    # models.lm.model_digest of the model the warmup trained on (absent in checkpoints
    # written before it was recorded, or by other tools: then nothing is compared)
    base_model: str


def _refuse_foreign_entries(out: str, ours: set[str]) -> None:
    """Refuse to replace the checkpoint folder ``out`` while it holds anything a checkpoint
    does not (``ours``: the names the new one holds), in one line naming it.

    Why: a checkpoint written again replaced the old folder whole, so a file a user had put
    in it (notes, an adapter of their own) was deleted without a word, as pass 14 found
    for a converted model's folder."""
    if os.path.islink(out) or not os.path.isdir(out):
        raise InputError("is not a checkpoint folder (a link or a file stands there): move "
                         "it away", where=out)
    foreign = sorted(set(os.listdir(out)) - ours)
    if foreign:
        raise InputError(f"holds {first_names(foreign)}, which a LoRA checkpoint does not; "
                         "it is written again here: move those away first", where=out)


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
        with os_errors_named(out):  # safetensors' own error past ulimit -f or a full disk
            model.save_pretrained(tmp, selected_adapters=[adapter])
            saved = Path(tmp) / adapter if (Path(tmp) / adapter).is_dir() else Path(tmp)
            _sort_target_modules(saved / ADAPTER_CONFIG)
            save_file(tensors, str(saved / MOMENTS_FILE), metadata={
                "beta1": str(beta1), "beta2": str(beta2), "eps": str(group["eps"]),
                "step": str(step)})
            _canonical_header(saved / MOMENTS_FILE)
        (saved / INFO_FILE).write_text(json.dumps({**info, "step": step}, indent=2,
                                                  sort_keys=True) + "\n")
        checks.refuse_special_output(out)  # a FIFO there is not deleted without a word
        if os.path.exists(out):
            _refuse_foreign_entries(out, set(os.listdir(saved)))
            shutil.rmtree(out)
        os.replace(saved, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys sorted. Why: safetensors
    keeps the metadata in a hash map, written in an order that changes with each process,
    so a resumed warmup's ``moments.safetensors`` differed in bytes from an uninterrupted
    run's with equal tensors (pass 21, wu01). The header is an 8-byte little-endian length
    and JSON padded with spaces to a multiple of 8; the tensors' offsets count from its
    end, so a header of another length reads back the same."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + length:])


def _sort_target_modules(config: Path) -> None:
    """peft keeps ``target_modules`` as a set and writes it in the set's order, which
    changes with each process's string hashing: a rerun's checkpoint (a resumed warmup)
    then differed in bytes from the first run's. Written sorted, it is the same in every
    process; peft reads it back as a set all the same."""
    settings = json.loads(config.read_text())
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = sorted(settings["target_modules"])
        config.write_text(json.dumps(settings, indent=2, sort_keys=True))  # as peft writes


def read_checkpoint_json(path: str) -> dict[str, Any] | None:
    """A checkpoint folder's ``checkpoint.json`` as a dict, or None when it has none.

    One reader for every caller: LESS requires the file (:func:`read_info`), TracIn only
    weights members by its ``mean_lr`` when present; both refuse one that is not JSON, or
    whose values are not what the warmup writes (:class:`dataselect.records.
    CheckpointRecord`: a learning rate edited to infinity or 0 is refused, not used)."""
    info = Path(path) / INFO_FILE
    if not info.exists():
        return None
    checks.check_regular_file(info)
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise InputError(f"{INFO_FILE} is not readable JSON ({error}); rewrite it with "
                         "`dataselect warmup`, or remove it", where=str(info)) from error
    if not isinstance(record, dict):
        raise InputError(f"{INFO_FILE} holds no JSON object; rewrite it with `dataselect "
                         "warmup`, or remove it", where=str(info))
    check_record(record, CheckpointRecord, info)
    return record


def check_checkpoint(path: str, needs: tuple[str, ...] = ()) -> str:
    """``path`` (a ``file:`` URL as its local path) once it is a LoRA checkpoint folder:
    ``adapter_config.json`` there and a config peft can read, the adapter's weights, each
    of ``needs`` (LESS: the moments and ``checkpoint.json``), and a ``checkpoint.json``
    that holds what the warmup writes, when there is one.

    The one check of every reader (attribute's trak, tracin and bif, LESS, the warmup's
    own resume), made before any model loads: peft takes a path that is no local folder
    for a model on the Hugging Face hub (a missing folder was a ValueError traceback, an
    empty one "cannot reach the storage") and a damaged adapter_config.json was a
    JSONDecodeError traceback. A leading ``~`` is the home folder, as in every path."""
    path = storage.home_expanded(storage.local_form(path))
    folder = Path(path)
    for name in (ADAPTER_CONFIG, *needs):
        if not (folder / name).exists():
            raise InputError(f"not a LoRA checkpoint: {name} is missing"
                             f"{_missing_hint(folder, name)}", where=path)
    read_checkpoint_json(path)
    _check_adapter_config(folder / ADAPTER_CONFIG)
    if not any((folder / name).exists() for name in ADAPTER_WEIGHTS):
        raise InputError(f"not a LoRA checkpoint: {ADAPTER_WEIGHTS[0]} is missing (the "
                         f"adapter's weights); {WARMUP_HINT}", where=path)
    for name in (*ADAPTER_WEIGHTS, *needs):
        checks.check_regular_file(folder / name)
    return path


def _missing_hint(folder: Path, name: str) -> str:
    if name == MOMENTS_FILE:
        return (" (LESS needs the warmup run's Adam moments by parameter name: train with"
                " `dataselect warmup`, which saves them)")
    if not folder.exists():
        return " (no such folder)"
    if not folder.is_dir():
        return " (a file, not a checkpoint folder)"
    return f"; give a checkpoint folder (epoch-N of a warmup), or {WARMUP_HINT}"


def _check_adapter_config(file: Path) -> None:
    """adapter_config.json as peft reads it: a JSON object of a LoRA config's settings
    (every reader trains or reads the ``lora_`` weights: another kind of adapter is no
    LoRA checkpoint)."""
    from peft import LoraConfig

    from models.lm import failure_reason, is_folder_fault

    checks.check_regular_file(file)
    try:
        content = json.loads(file.read_bytes())
        if not isinstance(content, dict):
            raise ValueError("it holds no JSON object")
        if content.get("peft_type") != "LORA":
            raise ValueError(f"its peft_type is {checks.shown(content.get('peft_type'))}, "
                             "not 'LORA'")
        LoraConfig.from_pretrained(str(file.parent))
    except Exception as exc:
        if not is_folder_fault(exc):
            raise
        raise InputError(f"{ADAPTER_CONFIG} is damaged ({failure_reason(exc)}): restore the "
                         f"checkpoint, or {WARMUP_HINT}", where=str(file)) from None


def load_adapter(base: Any, path: str, **options: Any) -> Any:
    """``PeftModel.from_pretrained(base, path, **options)`` for a checked checkpoint
    folder (:func:`check_checkpoint`); an adapter peft cannot load onto ``base`` (its
    weights damaged, made for another model) is one line naming the folder."""
    from peft import PeftModel

    return _loading_adapter(path, lambda: PeftModel.from_pretrained(base, path, **options))


def add_adapter(model: Any, path: str, name: str) -> None:
    """``model.load_adapter(path, adapter_name=name)``, checked as :func:`load_adapter`."""
    _loading_adapter(path, lambda: model.load_adapter(path, adapter_name=name))


@contextlib.contextmanager
def peft_deprecations_quiet() -> Iterator[None]:
    """Hide transformers' FutureWarning that peft's own code raises when it wraps a model
    (it reads the deprecated ``is_gradient_checkpointing``): printed on every LESS and
    BADS run, it told users of a change they cannot make."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


def _loading_adapter(path: str, load: Any) -> Any:
    from models.lm import failure_reason, is_folder_fault

    try:
        with peft_deprecations_quiet():
            return load()
    except Exception as exc:
        if not is_folder_fault(exc) or isinstance(exc, InputError):
            raise
        raise InputError(f"cannot load this LoRA checkpoint onto the model: "
                         f"{failure_reason(exc)}; give a checkpoint trained on this model, or "
                         f"{WARMUP_HINT}", where=path) from exc


def check_checkpoint_set(paths: list[str], model: str) -> None:
    """Refuse a list of checkpoint folders (each already checked, :func:`check_checkpoint`)
    naming one folder twice (by its real path: counted twice, a checkpoint weighed
    double, without a word), or holding one trained on another base model than ``model``
    (:func:`check_base_model`, the model's digest taken once). The one check of LESS's
    ``checkpoints`` and attribution's."""
    real = [os.path.realpath(path) for path in paths]
    if len(set(real)) < len(real):
        twice = next(p for p, r in zip(paths, real, strict=True) if real.count(r) > 1)
        raise InputError("is listed more than once in checkpoints: give each checkpoint "
                         "once", where=twice, field="checkpoints")
    if paths:
        from models.lm import model_digest

        digest = model_digest(model)
        for path in paths:
            check_base_model(path, model, digest)


def check_base_model(path: str, model: str, digest: str | None = None) -> None:
    """Refuse the checkpoint ``path`` when its ``checkpoint.json`` records another base
    model than ``model`` (``digest``: ``model``'s :func:`models.lm.model_digest`, taken
    once for several checkpoints). Why: LoRA weights trained on one model load onto another
    of the same shape without an error, and LESS or TracIn then scored with gradients of
    a model the warmup never saw, exit 0 (pass 18, g11: a model folder edited after the
    warmup, or another one)."""
    from models.lm import model_digest

    recorded = (read_checkpoint_json(path) or {}).get("base_model")
    if not recorded:
        return
    digest = digest or model_digest(model)
    if recorded != digest:
        raise InputError(f"was trained on another base model than {model} (its "
                         f"{INFO_FILE} records model digest {recorded}, the model's files "
                         f"now give {digest}): give the model the warmup trained on, or "
                         f"{WARMUP_HINT}", where=path)


def read_info(path: str) -> CheckpointInfo:
    """A LESS checkpoint's folder and recorded epoch, step and mean learning rate."""
    path = check_checkpoint(path, needs=(MOMENTS_FILE, INFO_FILE))
    info = read_checkpoint_json(path) or {}
    return CheckpointInfo(str(Path(path).resolve()), info["epoch"], info.get("step", 0),
                          float(info["mean_lr"]))


def load_moments(path: str) -> AdamMoments:
    from safetensors import safe_open

    from models.lm import failure_reason, is_folder_fault

    file = os.path.join(path, MOMENTS_FILE)
    exp_avg, exp_avg_sq = {}, {}
    try:
        with safe_open(file, framework="pt") as f:
            meta = f.metadata() or {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                kind, _, name = key.partition("/")
                (exp_avg if kind == "exp_avg" else exp_avg_sq)[name] = f.get_tensor(key)
        return AdamMoments(exp_avg, exp_avg_sq, float(meta["beta1"]), float(meta["beta2"]),
                           float(meta["eps"]), int(meta["step"]))
    except KeyError as missing:
        raise InputError(f"moments file has no {missing} in its metadata", where=file) from None
    except Exception as exc:
        if not is_folder_fault(exc):
            raise
        raise InputError(f"{MOMENTS_FILE} is damaged ({failure_reason(exc)}): restore the "
                         f"checkpoint, or {WARMUP_HINT}", where=file) from None
