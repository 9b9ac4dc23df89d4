"""Causal language models for the model-based scorers (LESS, RDS+ embeddings, BADS).

One place loads a Hugging Face model from a local folder, picks the device, and turns a
batch of rendered texts into padded token tensors with a mask of the tokens a model is
trained to produce (the response spans of :class:`dataselect.textspec.TextSpec`). Every
model-based scorer goes through it, so they all see the same tokens for the same record.

Nothing here downloads: paths must be local folders (``save_pretrained`` output).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dataselect import checks, storage
from dataselect.corpus import RESPONSE_SPANS
from dataselect.errors import InputError, os_error_line, os_errors_named
from dataselect.fingerprint import file_fingerprint
from dataselect.outdir import MARKER as OWNERSHIP_MARKER
from dataselect.textspec import CHAT_COLUMN, RESPONSE_ROLE
from models.templates import render_template

# Reason recorded in ``filtered_by`` for a row whose response was cut off entirely.
NO_RESPONSE_TOKENS = "no_response_tokens"

_LOADED: dict[tuple, Any] = {}
_LOADED_LOCK = threading.Lock()


def loaded_once(key: tuple, load: Callable[[], Any]) -> Any:
    """The model set for ``key`` in this process, loading it on first use, so a Dask
    worker loads a model once and not per partition. One set is kept at a time: a worker
    moving to another model frees the previous one."""
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = load()
        return _LOADED[key]


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if device:
        return torch.device(checks.check_device(device))
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_folder(path: str | os.PathLike, what: str = "model") -> str:
    """Fail early, in the client, on a path that cannot hold a saved model. A GGUF file
    (or a wheel holding one) is converted once and its cached folder used instead
    (:mod:`models.importer`), so every ``model=`` setting accepts a GGUF directly."""
    from models.importer import resolve_model_path

    # model=file:///abs and model=~/lm (quoted, or from a recipe) as select's paths
    path = resolve_model_path(storage.home_expanded(storage.local_form(path)))
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{what} folder not found (give a local save_pretrained folder)",
                         where=str(path))
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise InputError(f"{what} folder has no config.json", where=str(path))
    for entry in folder.iterdir():  # transformers opens its JSON files, safetensors, ...
        checks.check_regular_file(entry)
        if entry.suffix in MODEL_FILE_SUFFIXES and entry.is_dir():
            raise InputError(f"{what} folder holds a folder named {entry.name}, where the "
                             "model's file of that name belongs: replace it with the file",
                             where=str(path))
    if (folder / "config.json").exists():
        _check_architecture(folder / "config.json", what)
    return str(folder.resolve())


def _check_architecture(config: Path, what: str) -> None:
    """Refuse, before any work, a config whose architecture transformers does not have
    built in: loading it would need the folder's own Python code (``auto_map``, run only
    with ``trust_remote_code``, which dataselect never sets: it runs whatever the folder
    holds), and transformers refuses it with a traceback from deep inside a worker."""
    import json

    from transformers import CONFIG_MAPPING

    try:
        settings = json.loads(config.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{what} config.json is not valid JSON ({exc})",
                         where=str(config)) from None
    if not isinstance(settings, dict):
        raise InputError(f"{what} config.json must hold a JSON object", where=str(config))
    model_type = settings.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        # transformers' own classes load it; an auto_map beside them is not used
        _check_sizes(CONFIG_MAPPING[model_type], settings, config, what)
        return
    if settings.get("auto_map"):
        raise InputError(f"the {what} asks to run its own Python code (auto_map in "
                         "config.json); dataselect never runs code from a model folder "
                         "(trust_remote_code): use a model whose architecture transformers "
                         "has built in", where=str(config.parent))
    if model_type is not None:
        raise InputError(f"{what} config.json names the architecture {str(model_type)[:80]!r}, "
                         "which the installed transformers does not know: use a model "
                         "transformers has built in, or a newer transformers",
                         where=str(config.parent))


# The sizes every causal LM's config has (transformers maps other spellings, n_embd, n_layer,
# onto them): each builds a tensor dimension or a loop count, so an integer >= 1.
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "max_position_embeddings")


def _check_sizes(config_class: Any, settings: dict[str, Any], config: Path, what: str) -> None:
    """Build the folder's config as transformers will (its own type checks, by class: a
    strict config's field errors, a plain one's TypeError or ValueError), then require the
    sizes it resolves to be integers >= 1: a config.json edited to ``hidden_size: "big"``
    would otherwise fail with a traceback from inside transformers or torch, in a worker."""
    read = _read_keys(config_class, settings)
    _check_finite({key: value for key, value in settings.items() if key in read}, config, what)
    try:
        built = config_class.from_dict(settings)
    except (*_config_errors(), TypeError, ValueError) as exc:
        named = re.search(r"field '(\w+)'", str(exc))  # a strict config names it
        raise InputError(f"{what} config.json cannot make a {settings['model_type']} model: "
                         f"{_first_sentence(str(exc.__cause__ or exc))}",
                         where=str(config.parent),
                         field=named.group(1) if named else None) from None
    for name in SIZE_FIELDS:
        value = getattr(built, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            key = getattr(built, "attribute_map", {}).get(name, name)  # as the file has it
            raise InputError(f"{what} config.json: {key} must be an integer >= 1, got "
                             f"{checks.shown(value)}", where=str(config.parent), field=key)
    _check_weights(built, config, what)


def _read_keys(config_class: Any, settings: dict[str, Any]) -> set[str]:
    """The keys of config.json that the architecture's config class reads: those its
    ``__init__`` (or a base class's) takes, their aliases (``attribute_map``: ``n_embd``),
    and those it turns into others (``rope_theta``, ``rope_scaling``: into
    ``rope_parameters``). transformers only stores any other key (a user's ``my_note``),
    and the model's code, written for its class, reads none of them; so a value there that
    float32 cannot hold changes nothing the model computes, and refusing it refused a
    working model. What a key outside the class does all the same (modeling code reading
    one it does not declare) is met by the checks on what the model computes: the probe
    of :func:`load_causal_lm` and the NaN checks of its outputs. Every key, when the config
    cannot be built (its own error follows, after the keys are checked)."""
    import inspect
    import warnings

    from dataselect.output import same_json

    declared: set[str] = set()
    for cls in config_class.__mro__[:-1]:  # not object: its (*args, **kwargs)
        declared |= set(getattr(cls, "__dataclass_fields__", {}))
        init = cls.__dict__.get("__init__")
        with contextlib.suppress(TypeError, ValueError):
            declared |= set(inspect.signature(init).parameters) if init else set()
    aliases = getattr(config_class, "attribute_map", None) or {}
    declared |= set(aliases) | set(aliases.values())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = config_class.from_dict(settings).to_dict()
    except Exception:  # any fault: check every key; the build then names it
        return set(settings)
    return {key for key in settings if key in declared or key not in stored
            or not same_json(stored[key], settings[key])}


# the largest float32: the dtype load_causal_lm runs every model in
FLOAT32_MAX = 3.4028234663852886e38


def _check_finite(settings: Any, config: Path, what: str, prefix: str = "") -> None:
    """Refuse a NaN or infinite number in a key of config.json the model reads
    (:func:`_read_keys`: ``rms_norm_eps``,
    ``rope_theta``, ``rope_scaling.factor``...): Python's JSON reader accepts ``NaN`` and
    ``Infinity``, transformers takes them, and the model then computes NaN for every row,
    which would score every row alike rather than fail.

    A number beyond float32's range (``rms_norm_eps: 1e39``, or ``1e308``) is finite in
    JSON but infinite in the float32 the model runs in: an infinite epsilon makes every
    normalised hidden state zero, so every embedding was zero and every score 0.0."""
    items = settings.items() if isinstance(settings, dict) else enumerate(
        settings if isinstance(settings, list) else [])
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(settings, dict) else f"{prefix}[{key}]"
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{what} config.json: {name} must be a finite number, got "
                             f"{value}", where=str(config.parent), field=name)
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise InputError(f"{what} config.json: {name} = {value:g} is beyond float32's "
                             f"range (±{FLOAT32_MAX:.4g}), the precision the model runs in, "
                             "where it is infinite: use a value within that range",
                             where=str(config.parent), field=name)
        if isinstance(value, dict | list):
            _check_finite(value, config, what, f"{name}." if isinstance(value, dict)
                          else name)


# float32: load_causal_lm loads every model so unless asked otherwise
BYTES_PER_PARAMETER = 4
# submodules the exact count may build on the meta device: SmolLM2 has about 300, a
# model of 126 layers about 1,300; each costs about 0.1 ms, so this bounds it to ~2 s
COUNT_MODULES = 20_000
# the sizes that bound a causal LM's parameters from below, each with about the largest
# value a real model has (Llama 3.1 405B's widths and layers, Gemma 3's vocabulary): one
# above it is named as the field at fault
ESTIMATE_FIELDS = {"vocab_size": 262_144, "hidden_size": 16_384, "num_hidden_layers": 128,
                   "intermediate_size": 65_536}


def _check_weights(built: Any, config: Path, what: str) -> None:
    """Refuse a config whose weights cannot fit in this machine's memory: sizes that are
    valid integers (``hidden_size: 2**40``, ``vocab_size: 10**12``, ``num_hidden_layers:
    10**7``) pass the checks above and would end in a MemoryError, or an overflow
    traceback from torch, while the model is built, in a worker, after the job started.

    The parameters are counted exactly by building the model on torch's ``meta`` device
    (shapes only: it allocates nothing, and takes tens of milliseconds for a model of
    SmolLM2's size). That build is itself bounded: it runs only if a cheap lower bound
    (:func:`_parameters_estimate`, from four sizes) already fits, since 10**7 layers on
    meta would take hours, and it stops past ``COUNT_MODULES`` submodules (thousands of
    layers or experts), leaving the estimate as the count. An architecture that cannot
    be built from its config alone also leaves the estimate; its own error comes when it
    is loaded. float32 is what dataselect loads a model in."""
    import psutil

    estimate, field = _parameters_estimate(built)
    memory = psutil.virtual_memory().total
    count = estimate
    if estimate * BYTES_PER_PARAMETER <= memory:
        count = _parameters_on_meta(built) or estimate
    if count * BYTES_PER_PARAMETER > memory:
        key = field and getattr(built, "attribute_map", {}).get(field, field)  # as written
        beyond = f" ({key} = {checks.shown(getattr(built, field))} is larger than any " \
            f"real model's {ESTIMATE_FIELDS[field]:,})" if field else ""
        raise InputError(
            f"{what} config.json asks for a model of about {count:,} parameters: "
            f"{count * BYTES_PER_PARAMETER / 1e9:,.1f} GB of weights in float32, more "
            f"than this machine's {memory / 1e9:,.1f} GB of memory{beyond}; fix the sizes "
            "or use a smaller model", where=str(config.parent), field=key)


def _parameters_estimate(built: Any) -> tuple[int, str | None]:
    """A lower bound on a causal LM's parameters, in Python integers (so it cannot
    overflow or allocate): the embedding (vocab_size x hidden_size), and per layer at
    least one hidden_size square (attention) and one hidden_size x intermediate_size
    matrix (the MLP). Also the size furthest above the largest real model's, if one is."""
    sizes = {name: getattr(built, name, None) for name in ESTIMATE_FIELDS}
    sizes = {name: value if isinstance(value, int) and value >= 1 else 1
             for name, value in sizes.items()}
    hidden = sizes["hidden_size"]
    total = hidden * (sizes["vocab_size"] + sizes["num_hidden_layers"] * (
        hidden + sizes["intermediate_size"]))
    field = max(ESTIMATE_FIELDS, key=lambda name: sizes[name] / ESTIMATE_FIELDS[name])
    return total, field if sizes[field] > ESTIMATE_FIELDS[field] else None


class _TooManyModules(Exception):
    pass


def _parameters_on_meta(built: Any) -> int | None:
    """The exact parameter count of ``AutoModelForCausalLM.from_config(built)``, built on
    the meta device; None if it cannot be built so, or has more than COUNT_MODULES
    submodules."""
    from torch.nn.modules.module import register_module_module_registration_hook
    from transformers import AutoModelForCausalLM

    modules = 0

    def counted(module: Any, name: str, submodule: Any) -> None:
        nonlocal modules
        modules += 1
        if modules > COUNT_MODULES:
            raise _TooManyModules

    hook = register_module_module_registration_hook(counted)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(built)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # any architecture's failure to build from its config alone
        return None
    finally:
        hook.remove()


def _config_errors() -> tuple[type[Exception], ...]:
    """What a strict (huggingface_hub dataclass) config raises for a value of the wrong
    type or range; not every version has them."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


# the files of a model folder that transformers reads (and a model's fingerprint covers)
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".jinja")

# Files dataselect writes into a model folder (models.importer's manifest, the
# ownership marker of dataselect.outdir): not part of the model.
BOOKKEEPING_FILES = ("dataselect-model.json", OWNERSHIP_MARKER)


def model_fingerprint(path: str) -> list[dict[str, Any]]:
    """Fingerprints of a model folder's config and weight files (a changed model must not
    reuse stored scores or features). dataselect's own bookkeeping in the folder (the
    import manifest, with its conversion time, and the ownership marker) is left out, so
    re-importing the same GGUF keeps stored results valid."""
    return [file_fingerprint(str(p)) for p in _model_files(path)]


def _model_files(path: str) -> list[Path]:
    """A model folder's config and weight files, by their names in the folder, sorted."""
    return sorted(p for p in Path(path).iterdir()
                  if p.suffix in MODEL_FILE_SUFFIXES and p.name not in BOOKKEEPING_FILES)


def model_digest(path: str) -> str:
    """One digest of a model folder's config and weight files' names, sizes and content
    hashes (:func:`model_fingerprint` without the folder's path): the same model copied
    elsewhere has the same digest. Recorded by the LoRA warmup in each checkpoint, so a
    checkpoint given with another base model is refused (pass 18, g11)."""
    # each file by its name in the folder, not the path its fingerprint resolves to: in a
    # Hugging Face cache layout the files are links to blobs/<hash>, and a copy made with
    # `cp -rL` was refused as another model (pass 19, g04)
    files = _model_files(path)
    entries = [[p.name, f["bytes"], f["xxh3_128"]]
               for p, f in zip(files, (file_fingerprint(str(p)) for p in files))]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def recorded_model_files(scorer: Any) -> list[dict[str, Any]]:
    """The model's fingerprint a scorer's fit took (``model_files_``), or the folder's now
    for a scorer not fitted yet (a recipe checks its settings before any fit).

    Why once: a job records the config several times (the fit's digest, the score store,
    the feature store, the manifest), and each took the fingerprint anew, so a model
    replaced between two of them was recorded as two models in one job."""
    taken = getattr(scorer, "model_files_", None)
    return taken if taken is not None else model_fingerprint(scorer.model)


def check_model_unchanged(scorer: Any) -> None:
    """Refuse to finish a job whose model folder changed since the fit fingerprinted it
    (``model_files_``): the target and the pool, or two partitions of the pool, may have
    been run through two models, under one recorded identity."""
    taken = getattr(scorer, "model_files_", None)
    if taken is not None and model_fingerprint(scorer.model) != taken:
        raise InputError("changed while the job ran (model); the scores are incomplete: "
                         "rerun with --overwrite once the model stays put",
                         where=str(scorer.model), field="model")


_RENDERINGS: dict[str, dict[str, Any]] = {}


def model_rendering(path: str) -> dict[str, Any]:
    """:func:`rendering` of the tokenizer saved in ``path`` (loaded once per process), for
    the settings a scorer records in its manifest and feature descriptions."""
    if path not in _RENDERINGS:
        _RENDERINGS[path] = rendering(load_tokenizer(path))
    return _RENDERINGS[path]


def load_tokenizer(path: str) -> Any:
    """A fast tokenizer (offsets are needed to find response tokens) with a pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        if not is_folder_fault(exc):
            raise
        raise _unloadable("tokenizer", path, exc) from exc
    if not tokenizer.is_fast:
        raise InputError("the tokenizer must be a fast (Rust) tokenizer: character offsets "
                         "are needed to find response tokens", where=path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise InputError("the tokenizer has neither a pad nor an eos token", where=path)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """The model in eval mode on ``device`` (float32 on CPU unless asked otherwise)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype or torch.float32
        )
    except Exception as exc:
        if not is_folder_fault(exc):
            raise
        raise (_refused_pickle_weights(path, exc) or _unloadable("model", path, exc)) from exc
    model = model.to(device).eval()
    _check_computes(model, path)
    return model


# tokens of the probe input :func:`_check_computes` runs (distinct ids from 0)
PROBE_TOKENS = 8


def _check_computes(model: Any, path: str) -> None:
    """Refuse a model whose last hidden state is the same at every position of a short
    probe input of distinct tokens: it computes nothing from its input (a checkpoint
    with a zeroed final norm weight; a config setting that zeroes every normalised
    state). Such a model ran without error: every embedding zero, every loss the same
    log(vocabulary) and every gradient zero, so embed, LESS and BADS scored every row
    alike (0.0) and picked arbitrarily, with exit 0. Any working model's states differ
    between positions. One forward pass of ``PROBE_TOKENS`` tokens, once per load.

    A NaN or infinite state is refused here too, at every place a model is loaded (bads,
    eval, warm-up and attribute as well as embed and less, which check their outputs):
    config.json's keys are checked only where the config class reads them
    (:func:`_read_keys`), so what any other setting or weight does is met here."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 2:
        return
    ids = torch.arange(min(PROBE_TOKENS, vocab), device=model.device)[None, :]
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       output_hidden_states=True).hidden_states[-1]
    if not bool(torch.isfinite(hidden).all()):
        raise InputError("the model computed NaN or infinite values for a short probe input "
                         "(a NaN weight, a diverged checkpoint or a non-finite setting in "
                         "config.json): use a model whose outputs are finite", where=path)
    if bool((hidden == hidden[:, :1]).all()):
        state = "zero" if not bool(hidden.any()) else "the same at every position"
        raise InputError(f"the model computes nothing from its input: its last hidden "
                         f"state is {state} (a zeroed weight such as the final norm's, or "
                         "a config.json setting that zeroes every state): use a model "
                         "that computes something", where=path)


def _weight_file_errors() -> tuple[type[Exception], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # an older safetensors names it elsewhere; RuntimeError covers it
        return ()
    return (SafetensorError,)


# What transformers, tokenizers, safetensors and peft raise, by class, for a file of a model
# folder whose content they cannot use: a key missing (KeyError), a value of the wrong type
# (TypeError, AttributeError: `{"model": 5}` in tokenizer.json, `"max_new_tokens": "x"` in
# generation_config.json), a bad value (ValueError), a cut-short weight file
# (SafetensorError), a config whose sizes make no model (torch's RuntimeError), a pickle
# torch refuses. A model folder is input, so each is one line naming it, not a traceback.
_FOLDER_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
                  RuntimeError, pickle.UnpicklingError)


def is_folder_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a library loaded a model, tokenizer or adapter folder,
    is that folder's fault (:data:`_FOLDER_ERRORS`, a strict config's field error, or the
    plain ``Exception`` the tokenizers library raises for a tokenizer.json it cannot parse)
    and not the machine's: running out of memory stays itself."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return False
    return (isinstance(exc, (*_FOLDER_ERRORS, *_config_errors(), *_weight_file_errors()))
            or type(exc) is Exception)


def _unloadable(what: str, path: str, exc: Exception) -> Exception:
    """One line for a folder transformers cannot load from (files missing, a tokenizer it
    cannot build, code it would have to run), naming the folder and, when one of its files
    fails on its own, that file; an OS error of the machine (permissions, a full disk)
    stays itself for the command line's own line."""
    if isinstance(exc, OSError) and os_error_line(exc) is not None:
        return exc
    if "trust_remote_code" in str(exc):
        return InputError(f"the {what} asks to run the folder's own Python code; dataselect "
                          "never runs code from a model folder (trust_remote_code): use a "
                          "model whose architecture transformers has built in", where=path)
    culprit = _file_at_fault(Path(path), what)
    if culprit is None:
        read = f" (its {', '.join(_files_read(Path(path), what))})"
        return InputError(f"cannot load the {what} from this folder{read}: "
                          f"{failure_reason(exc)}", where=path)
    name, reason = culprit
    return InputError(f"cannot load the {what}: {name} is damaged ({reason}); restore the "
                      "folder's files (save the model again with save_pretrained)",
                      where=str(Path(path) / name))


def _files_read(folder: Path, what: str) -> list[str]:
    """The files of ``folder`` the loader of ``what`` reads, as the folder has them."""
    weights = sorted(p.name for p in folder.glob("*")
                     if p.suffix in (".safetensors", *PICKLE_WEIGHTS)) if what == "model" else []
    return [name for name, _ in _FILE_LOADERS[what] if (folder / name).is_file()] + weights


def failure_reason(exc: BaseException) -> str:
    """What a loader's exception says, in a few words (a KeyError's text is just the key)."""
    if isinstance(exc, KeyError) and exc.args:
        return f"no {exc.args[0]!r} in it"
    return _first_sentence(str(exc)) or type(exc).__name__


def _file_at_fault(folder: Path, what: str) -> tuple[str, str] | None:
    """The first of the folder's files for ``what`` (the tokenizer, the model) that fails
    to load on its own, and why; None when each loads (the fault is in how they combine,
    or in the weights)."""
    for name, load in _FILE_LOADERS[what]:
        if not (folder / name).is_file():
            continue
        try:
            load(folder / name)
        except Exception as exc:
            if not is_folder_fault(exc):
                raise
            return name, failure_reason(exc)
    return None


def _load_tokenizer_file(file: Path) -> None:
    """tokenizer.json as the tokenizers library builds it, with the ``added_tokens`` list
    transformers takes out of it first."""
    import json

    from tokenizers import Tokenizer

    content = json.loads(file.read_bytes())
    if not isinstance(content, dict) or not isinstance(content.get("added_tokens"), list):
        raise ValueError("a tokenizer.json is a JSON object with an 'added_tokens' list")
    Tokenizer.from_str(json.dumps(content))


def _load_json_object(file: Path) -> None:
    """A settings file transformers reads as a JSON object of keys."""
    import json

    if not isinstance(json.loads(file.read_bytes()), dict):
        raise ValueError("it must hold a JSON object")


def _load_tokenizer_settings(file: Path) -> None:
    """tokenizer_config.json with its ``added_tokens_decoder``: token ids as keys, each
    entry the mapping transformers builds an AddedToken from."""
    import json

    _load_json_object(file)
    decoder = json.loads(file.read_bytes()).get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise ValueError("its added_tokens_decoder must be a JSON object")
    for token_id, token in decoder.items():
        int(token_id)
        if not isinstance(token, dict):
            raise TypeError(f"its added_tokens_decoder entry {token_id!r} must be a JSON "
                            "object, not " + type(token).__name__)


def _load_generation_config(file: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig.from_pretrained(file.parent, local_files_only=True)


def _load_model_config(file: Path) -> None:
    from transformers import AutoConfig

    AutoConfig.from_pretrained(file.parent, local_files_only=True)


# each file a loader reads, with a function that loads it alone (order: the first that
# fails is named)
_FILE_LOADERS: dict[str, tuple[tuple[str, Callable[[Path], None]], ...]] = {
    "tokenizer": (("tokenizer.json", _load_tokenizer_file),
                  ("tokenizer_config.json", _load_tokenizer_settings),
                  ("special_tokens_map.json", _load_json_object),
                  ("added_tokens.json", _load_json_object)),
    "model": (("config.json", _load_model_config),
              ("generation_config.json", _load_generation_config)),
}


# Weight files that torch.load unpickles; safetensors files hold tensors only.
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def _refused_pickle_weights(path: str, exc: Exception) -> InputError | None:
    """An InputError when ``exc`` is torch or transformers refusing to unpickle the
    folder's weights, else None.

    Why: unpickling runs arbitrary code, so torch.load (``weights_only``) rejects any
    pickle holding more than tensors, and transformers refuses pickles outright with
    torch < 2.6. The fix is a one-time conversion of the weights to safetensors by
    someone who trusts the file; a traceback from deep inside torch does not say so.
    """
    folder = Path(path)
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_WEIGHTS)
    text = str(exc)
    refusal = isinstance(exc, pickle.UnpicklingError) or "torch.load" in text \
        or "weights_only" in text
    if not pickles or any(folder.glob("*.safetensors")) or not refusal:
        return None
    reason = _first_sentence(text.split("WeightsUnpickler error:")[-1])
    source, target = folder / pickles[0], folder / "model.safetensors"
    convert = (f"python -c \"import torch; from safetensors.torch import save_file; "
               f"d = torch.load('{source}', weights_only=False); save_file({{k: v.clone() "
               f"for k, v in d.items() if torch.is_tensor(v)}}, '{target}', "
               "metadata={'format': 'pt'})\"")
    return InputError(
        f"the weights are a pickle file ({', '.join(pickles)}) that torch refuses to load "
        f"safely ({reason}); convert the weights to safetensors, e.g. {convert} (only if "
        "you trust the file: unpickling it runs its code)", where=str(path))


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(". ")
    return (text[:end] if end > 0 else text.rstrip("."))[:200]


@dataclass
class TokenBatch:
    """Right-padded tokens of a batch and the mask of the tokens to score or train on.

    ``loss_mask[i, t]`` is True when token ``t`` of row ``i`` lies in a response span; a
    causal LM predicts it from position ``t - 1``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device),
                          self.loss_mask.to(device))

    def select(self, rows: torch.Tensor) -> TokenBatch:
        """The given rows, cut to the token columns any of them uses: a chunk of short
        rows stops paying for the padding of a long row it was tokenized with."""
        attention = self.attention_mask[rows]
        used = attention.any(0)
        return TokenBatch(self.input_ids[rows][:, used], attention[:, used],
                          self.loss_mask[rows][:, used])

    @property
    def lengths(self) -> torch.Tensor:
        """Real (unpadded) tokens per row."""
        return self.attention_mask.sum(1)

    @property
    def has_response(self) -> torch.Tensor:
        """Rows with at least one scored token after truncation (the first token is never
        scored: nothing precedes it)."""
        return self.loss_mask[:, 1:].any(dim=1)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries the chat format its model was tuned on."""
    return bool(getattr(tokenizer, "chat_template", None))


def rendering(tokenizer: Any) -> dict[str, Any]:
    """How chat records reach this model, for manifests and feature descriptions: its own
    chat template (identified by a hash of the template text) or dataselect's plain
    ``<|role|>`` format, used for models without a template."""
    if not has_chat_template(tokenizer):
        return {"format": "plain"}
    template = tokenizer.chat_template
    if not isinstance(template, str):  # several named templates
        template = repr(sorted(template.items()) if isinstance(template, dict) else template)
    digest = hashlib.sha256(template.encode()).hexdigest()[:16]
    return {"format": "chat_template", "template_sha256": digest}


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]
                ) -> tuple[str, list[tuple[int, int]]]:
    """The conversation in the model's own chat template and the character spans of its
    assistant turns in that string.

    Why: an instruction model's losses, gradients and hidden states are only meaningful
    on the format it was tuned on. A turn's span runs from the start of its reply (looked
    for after the conversation rendered up to the turn with the generation prompt) to the
    end of the conversation rendered through the turn, trailing whitespace cut: the reply
    and the template's end-of-turn marker, which the model is trained to produce.
    Templates whose renderings are not prefixes of each other fall back to finding each
    reply in order. A template that rewrites an earlier reply (some shorten past turns)
    leaves that reply unscored: the model never sees it; one that drops every reply is
    refused.
    """
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = render_template(tokenizer, turns)
    spans: list[tuple[int, int]] = []
    cursor = 0
    replies = 0
    for i, turn in enumerate(turns):
        if turn["role"] != RESPONSE_ROLE:
            continue
        replies += 1
        span = _turn_span(tokenizer, turns, i, text) if i else None
        if span is None:  # not prefix-stable: the reply's own characters, in order
            start = text.find(turn["content"], cursor)
            if start < 0 or not turn["content"]:
                continue
            span = (start, start + len(turn["content"]))
        spans.append(span)
        cursor = span[1]
    if replies and not spans:
        raise InputError("the chat template drops the assistant replies, so their tokens "
                         "cannot be found; use a model whose template keeps them")
    return text, spans


def _turn_span(tokenizer: Any, turns: list[dict[str, Any]], i: int, text: str
               ) -> tuple[int, int] | None:
    before = render_template(tokenizer, turns[:i], add_generation_prompt=True)
    through = render_template(tokenizer, turns[:i + 1])
    if not (text.startswith(through) and through.startswith(before)):
        return None
    end = len(through.rstrip())
    start = through.find(turns[i]["content"], len(before), end)
    if start < 0 or not turns[i]["content"]:
        return None
    return start, end


def model_view(batch: pa.Table, spans: bool = False) -> pa.Table:
    """The columns of a scoring view that :func:`tokenize` reads (``id``, ``text``, the
    conversation when there is one, and with ``spans`` the response spans), in the order
    :meth:`Corpus.scoring_view` gives them, so both concatenate."""
    wanted = ["id", "text"] + ([RESPONSE_SPANS] if spans else []) + [CHAT_COLUMN]
    return batch.select([name for name in wanted if name in batch.column_names])


def tokenize(tokenizer: Any, batch: pa.Table, max_length: int) -> TokenBatch:
    """Tokenize the rows of ``batch``, truncating to ``max_length`` tokens, and mark the
    tokens to score or train on.

    Rows with a conversation (the view's ``messages`` column) are rendered with the
    tokenizer's chat template when it has one (:func:`render_chat`; the template places
    its own special tokens, so none are added); otherwise ``batch['text']`` is used with
    the ``response_spans`` column (every token when the column is absent).
    """
    texts = batch["text"].to_pylist()
    if RESPONSE_SPANS in batch.column_names:
        spans = batch[RESPONSE_SPANS].to_pylist()
    else:
        spans = [[{"start": 0, "end": len(t)}] for t in texts]
    special = True
    if CHAT_COLUMN in batch.column_names and has_chat_template(tokenizer):
        conversations = batch[CHAT_COLUMN].to_pylist()
        if None in conversations:  # e.g. plain-text target rows beside chat pool rows
            raise InputError("a batch mixes chat records and plain text; a model with a chat "
                             "template needs both in one format (give both --text-field "
                             "messages, or neither)")
        rendered = [render_chat(tokenizer, m) for m in conversations]
        texts = [text for text, _ in rendered]
        spans = [[{"start": a, "end": b} for a, b in row] for _, row in rendered]
        special = False
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, padding="longest",
        return_offsets_mapping=True, return_tensors="pt", add_special_tokens=special,
    )
    attention = encoded["attention_mask"].bool()
    offsets = encoded["offset_mapping"]
    loss_mask = torch.zeros_like(attention)
    starts, ends = offsets[..., 0], offsets[..., 1]
    for row, row_spans in enumerate(spans):
        for span in row_spans:
            loss_mask[row] |= (starts[row] < span["end"]) & (ends[row] > span["start"])
    loss_mask &= attention & (ends > starts)  # no padding, no zero-width special tokens
    return TokenBatch(encoded["input_ids"], encoded["attention_mask"], loss_mask)


def token_budget_chunks(lengths: np.ndarray | torch.Tensor, max_rows: int, max_tokens: int
                        ) -> list[np.ndarray]:
    """Row indices in chunks for one forward/backward pass each, shortest rows first: a
    chunk holds at most ``max_rows`` rows and at most ``max_tokens`` padded tokens (its rows
    times its longest row); a row longer than ``max_tokens`` goes alone.

    Why: a backward pass keeps every layer's activations for every padded token (about
    2 MB per token for SmolLM2-135M in float32), so memory follows tokens, not rows. Eight
    rows of 512 tokens took 10.6 GB where eight rows of 60 take 1.3 GB; cutting by tokens
    keeps a worker's memory flat whatever the pool's lengths, and on a CPU a pass of 1,024
    tokens is no slower per token than one of 4,096 (28.8 s against 40.6 s for the same
    eight 512-token rows).

    Rows without a token (an empty text, with a tokenizer that adds no BOS) are in no
    chunk: a chunk of them alone has no token column, and the model fails on it; they
    have no features and are filtered as ``empty_text`` anyway."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    chunks, start = [], 0
    for stop in range(1, len(order) + 1):
        if stop == len(order) or stop + 1 - start > max_rows \
                or (stop + 1 - start) * int(lengths[order[stop]]) > max_tokens:
            chunks.append(order[start:stop])
            start = stop
    return chunks


def per_example_loss(logits: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over each row's response tokens, shape ``(batch,)``.

    Rows without response tokens get 0 (callers filter them out via ``has_response``).
    """
    shifted = logits[:, :-1].float()
    targets = tokens.input_ids[:, 1:]
    mask = tokens.loss_mask[:, 1:].to(shifted.dtype)
    token_loss = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none"
    ).view_as(mask)
    return (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)


def build_tiny_causal_lm(texts: list[str], out: str | os.PathLike, vocab_size: int = 2000,
                         hidden_size: int = 64, layers: int = 2, heads: int = 4,
                         max_positions: int = 1024, seed: int = 0) -> str:
    """Train a byte-level BPE tokenizer on ``texts`` and save it with a small, randomly
    initialised Llama-architecture model to ``out``.

    Why: tests, the demo and CPU-sized evaluations need a real Hugging Face causal LM and
    nothing can be downloaded, so one is built from a config. The same ``texts`` and
    ``seed`` give the same tokenizer and weights.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        model_max_length=max_positions,
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    save_model(model, tokenizer, out)
    return str(out)


def train_causal_lm(path: str, batch: pa.Table, out: str | os.PathLike, steps: int = 300,
                    lr: float = 3e-3, batch_size: int = 16, max_length: int = 256,
                    seed: int = 0) -> str:
    """Train every weight of the model in ``path`` on the response tokens of ``batch``
    (``text`` + optional ``response_spans``) for ``steps`` AdamW steps, and save it to
    ``out`` with its tokenizer.

    Why: gradient and embedding scorers assume a model that has learned something; tests
    and CPU-sized evaluations build a tiny one from a config and give it a short training
    here, in-process, instead of downloading a pretrained model.
    """
    torch.manual_seed(seed)
    device = pick_device(None)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, device)
    fit_causal_lm(model, tokenizer, batch, steps, lr, batch_size, max_length, seed)
    save_model(model, tokenizer, out)
    return str(out)


def save_model(model: Any, tokenizer: Any, out: str | os.PathLike) -> None:
    """``save_pretrained`` of model and tokenizer into ``out``, never writing into a file
    already there.

    Why: ``save_pretrained`` opens ``config.json``, ``tokenizer.json``, ... in place, so a
    hard link planted at one of those names in a model folder dataselect rebuilds
    (``OUT/.models/<name>/blank``, ``OUT/eval/base-*``) would have its other name, a file
    outside the output folder, overwritten. Both are saved into a fresh folder beside
    ``out`` and each file is renamed into place: a rename replaces the name, never the file
    it named."""
    with staged_folder(out) as staging, os_errors_named(out):
        model.save_pretrained(staging)  # safetensors: past ulimit -f, its own error class
        tokenizer.save_pretrained(staging)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh, empty folder beside ``out`` to write into; when the block ends without an
    error, every file in it is renamed into ``out`` (made if missing), replacing the names
    there, and the staging folder is removed either way."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        yield staging
        names = sorted(os.listdir(staging))
        for name in names:  # a FIFO at one of them is refused, not replaced (atomic_write)
            checks.refuse_special_output(out / name)
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fit_causal_lm(model: Any, tokenizer: Any, batch: pa.Table, steps: int, lr: float,
                  batch_size: int, max_length: int, seed: int) -> list[float]:
    """AdamW on the mean response-token loss of ``batch``, cycling through a seeded
    permutation of its rows; the model is left in eval mode. Returns the loss per step.

    The same rows, steps and seed give the same order of batches, so two training sets of
    the same size are compared on equal terms (``dataselect eval``).

    A batch is at most the rows there are: a ``batch_size`` above them (``eval -p
    batch_size=100000`` on a 30-row task) filled each batch by repeating the rows, a
    100000-row batch of logits that ran for minutes and then ran out of memory.
    """
    if batch.num_rows == 0:
        raise InputError("no rows to train on")
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = np.random.default_rng(seed).permutation(batch.num_rows)
    losses = []
    size = min(batch_size, batch.num_rows)
    for step in range(steps):
        rows = np.take(order, range(step * size, (step + 1) * size), mode="wrap")
        tokens = tokenize(tokenizer, batch.take(pa.array(rows)), max_length).to(device)
        if not bool(tokens.has_response.any()):
            continue
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
        loss = per_example_loss(logits, tokens)[tokens.has_response].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
