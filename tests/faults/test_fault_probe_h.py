"""Probe round H (issue 28, the sixth probe's leftovers): a setting given twice, model
folders and chat templates as inputs, query stores of the wrong side, and storage that
cannot be reached.

A scorer setting the job fills from its own (``-p seed=5 --seed 7``, ``-p k=5 --k 10``, a
recipe scorer's ``seed`` beside the recipe's) is refused unless both say the same; so are
model-size settings beside ``eval --model``. A model folder's config.json and chat template
are inputs: a bad one is one line naming the folder, never a traceback or a hang."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DATA, TARGETS, turn_tokenizer, write_jsonl
from fault_helpers import private_fingerprint_cache  # noqa: F401 (autouse fixture)

from dataselect.errors import InputError
from pipelines.cli import main
from pipelines.jobs import SelectJob, run_select_job
from pipelines.recipe import RecipeError, load_recipe

TARGET = str(TARGETS / "python_docs.jsonl")


def _pool(tmp_path: Path, n: int = 40) -> str:
    rows = [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}"}
            for i in range(n)]
    return str(write_jsonl(tmp_path / "pool.jsonl", rows))


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture, *parts: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _select(pool: str, out: Path, *extra: str, scorer: str = "dsir") -> list[str]:
    return ["select", "--scorer", scorer, "--pool", pool, "--target", TARGET, "--out",
            str(out), "--workers", "1", "--worker-kind", "threads", *extra]


# --- W18 / W19: a scorer setting given by -p that a job setting also sets -------------

@pytest.mark.parametrize(("extra", "scorer", "parts"), [
    (("-p", "seed=5", "--seed", "7", "--k", "3"), "dsir", ("-p seed=5", "--seed 7")),
    (("-p", "seed=5", "--seed", "0", "--k", "3"), "dsir", ("-p seed=5", "--seed 0")),
    (("-p", "k=5", "--k", "10"), "auto", ("-p k=5", "--k 10")),
    (("-p", "fraction=0.5", "--k", "3"), "auto", ("-p fraction=0.5", "--k 3")),
    (("-p", "k=3", "--fraction", "0.5"), "auto", ("-p k=3", "--fraction 0.5")),
])
def test_param_contradicting_a_flag_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               extra: tuple[str, ...], scorer: str,
                                               parts: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    _one_line_exit_2(_select(_pool(tmp_path), out, *extra, scorer=scorer), capsys,
                     *parts, "give one")
    assert not out.exists()


def test_param_equal_to_the_flag_or_alone_is_kept(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    assert main(_select(pool, tmp_path / "a", "-p", "seed=7", "--seed", "7", "--k", "3")) == 0
    assert main(_select(pool, tmp_path / "b", "-p", "seed=5", "--k", "3")) == 0
    manifest = json.loads((tmp_path / "b" / ".manifest.json").read_text())
    assert manifest["scores"]["config"]["seed"] == 5
    assert manifest["job"]["seed"] == 0


def test_python_api_seed_contradicting_scorer_seed(tmp_path: Path) -> None:
    job = SelectJob("dsir", [_pool(tmp_path)], [TARGET], str(tmp_path / "o"), k=3, seed=7,
                    scorer_params={"seed": 5}, workers=1, worker_kind="threads")
    with pytest.raises(InputError, match="contradicts --seed 7"):
        run_select_job(job)


def _recipe_file(tmp_path: Path, **changes: object) -> Path:
    recipe = {"pool": {"paths": _pool(tmp_path)}, "targets": {"code": {"paths": TARGET}},
              "scorers": {"dsir": {}}, "selection": {"k": 10},
              "output": {"path": str(tmp_path / "run")}, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(("changes", "key"), [
    ({"seed": 7, "scorers": {"dsir": {"seed": 5}}}, "scorers.dsir.seed"),
    ({"scorers": {"auto": {"k": 5}}}, "scorers.auto.k"),
    ({"scorers": {"auto": {"fraction": 0.5}}}, "scorers.auto.fraction"),
    ({"seed": 7, "scorers": {"less": {"model": "m"}}, "warmup": {"seed": 3}}, "warmup.seed"),
    ({"seed": 7, "targets": {"code": {"paths": TARGET, "eval": TARGET}},
      "attribution": {"method": "trak", "model": "m", "params": {"seed": 3}}},
     "attribution.params.seed"),
])
def test_recipe_scorer_setting_contradicting_recipe(tmp_path: Path, changes: dict,
                                                    key: str) -> None:
    with pytest.raises(RecipeError, match="contradicts") as info:
        load_recipe(_recipe_file(tmp_path, **changes))
    assert info.value.field == key


def test_recipe_scorer_setting_equal_or_alone_is_kept(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe_file(tmp_path, seed=7, scorers={"dsir": {"seed": 7},
                                                                  "auto": {"k": 10}}))
    assert recipe.scorers["dsir"]["seed"] == 7
    assert load_recipe(_recipe_file(tmp_path, scorers={"dsir": {"seed": 5}})).seed == 0


# --- W24: model-size settings beside eval --model -------------------------------------

@pytest.mark.parametrize("pairs", [("hidden_size=128", "layers=7"), ("layers=2",),
                                   ("vocab_size=2000",), ("heads=2",)])
def test_eval_model_with_size_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  pairs: tuple[str, ...]) -> None:
    argv = ["eval", str(tmp_path / "run"), "--model", str(tmp_path / "m"), "--seeds", "0"]
    for pair in pairs:
        argv += ["-p", pair]
    first = pairs[0].partition("=")[0]
    _one_line_exit_2(argv, capsys, f"-p {first}", "--model")


def test_eval_settings_record_only_what_applied() -> None:
    from pipelines.evaluate import MODEL_SHAPE, EvalSettings

    with pytest.raises(InputError, match="hidden_size"):
        EvalSettings(model="m", hidden_size=128).check()
    EvalSettings(model="m", steps=3).check()
    assert not set(MODEL_SHAPE) & set(EvalSettings(model="m").recorded())
    assert EvalSettings(hidden_size=128).recorded()["hidden_size"] == 128


# --- F7: the side of a feature store, checked where it is read --------------------------

def _store(folder: Path, side: str) -> str:
    import numpy as np
    import pyarrow as pa

    from dataselect.features import FeatureStore

    store = FeatureStore.create(folder, {"kind": "x", "dim": 4, "views": 1, "side": side})
    rng = np.random.default_rng(0)
    store.write_part(0, pa.array(["a", "b", "c"], pa.string()),
                     rng.normal(size=(3, 1, 4)).astype(np.float32))
    return str(folder)


def test_search_with_pool_side_queries_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    pool = _store(tmp_path / "pool", "pool")
    assert main(["index", "build", "--features", pool, "--out", str(tmp_path / "idx")]) == 0
    out = tmp_path / "s.parquet"
    _one_line_exit_2(["index", "search", "--index", str(tmp_path / "idx"), "--queries", pool,
                      "-k", "2", "--out", str(out)], capsys, pool, "--side query")
    assert not out.exists()
    queries = _store(tmp_path / "queries", "query")
    assert main(["index", "search", "--index", str(tmp_path / "idx"), "--queries", queries,
                 "-k", "2", "--out", str(out)]) == 0
    _one_line_exit_2(["index", "build", "--features", queries, "--out", str(tmp_path / "i2")],
                     capsys, queries, "--side pool")


# --- T21 / T22: a model folder's config.json is an input --------------------------------

def _features(model: Path, tmp_path: Path) -> list[str]:
    chat = str(DATA / "instructions" / "train.jsonl")
    return ["features", "--scorer", "embed", "-p", f"model={model}", "--input", chat,
            "--text-field", "messages", "--out", str(tmp_path / "feats"), "--workers", "1"]


@pytest.mark.parametrize(("config", "field"), [
    ({"model_type": "llama", "hidden_size": "big"}, "hidden_size"),
    ({"model_type": "llama", "num_hidden_layers": 2.5}, "num_hidden_layers"),
    ({"model_type": "llama", "vocab_size": True}, "vocab_size"),
    ({"model_type": "gpt2", "n_embd": "wide"}, "n_embd"),
    ({"model_type": "gpt2", "n_layer": -2}, "n_layer"),
    ({"model_type": "llama", "hidden_size": 0}, "hidden_size"),
])
def test_model_config_with_bad_sizes_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 config: dict, field: str) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    _one_line_exit_2(_features(model, tmp_path), capsys, str(model), field)


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_model_file_that_is_a_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 name: str) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / name).unlink(missing_ok=True)
    (model / name).mkdir()
    line = _one_line_exit_2(_features(model, tmp_path), capsys, str(model), name)
    assert "--out" not in line and "cannot write" not in line


# --- T24 / T25: a chat template is the model folder's code: bounded, failures one line ---

CHAT = [{"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."}]
GOOD_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")


def _tokenizer_folder(folder: Path, template: str) -> str:
    """A small byte-level BPE tokenizer saved as a model folder's tokenizer files."""
    fast = turn_tokenizer(200, 300, template)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(("template", "parts"), [
    ("{{ raise_exception('boom from template') }}", ("boom from template",)),
    ("{% if %}", ("TemplateSyntaxError",)),
    ("{{ messages | no_such_filter }}", ("no_such_filter",)),
    ("{{ 1 / 0 }}", ("ZeroDivisionError",)),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", ("chat template",)),
])
def test_a_failing_chat_template_is_one_line_naming_the_folder(tmp_path: Path, template: str,
                                                               parts: tuple[str, ...]) -> None:
    from models.lm import load_tokenizer, render_chat

    folder = _tokenizer_folder(tmp_path / "m", template)
    with pytest.raises(InputError) as info:
        render_chat(load_tokenizer(folder), CHAT)
    line = str(info.value)
    assert folder in line and "\n" not in line
    for part in parts:
        assert part in line


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for m in messages %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{{ '' }}{% endfor %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 100000 }}{% endfor %}"
    "{% endfor %}",
])
def test_a_chat_template_without_end_is_stopped(tmp_path: Path, template: str) -> None:
    import time

    from models.lm import load_tokenizer, render_chat

    folder = _tokenizer_folder(tmp_path / "m", template)
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"steps|characters") as info:
        render_chat(load_tokenizer(folder), CHAT)
    assert folder in str(info.value)
    assert time.perf_counter() - started < 30


def test_real_templates_render_as_transformers_renders_them(tmp_path: Path) -> None:
    """The guard changes nothing of a template that ends: the same text, for a long chat
    too, under a template that walks the messages once per message."""
    from models.lm import load_tokenizer
    from models.templates import render_template

    quadratic = ("{% for m in messages %}{% for n in messages %}{% endfor %}"
                 "{{ m['content'] }}\n{% endfor %}")
    long_chat = CHAT * 150
    for template, chat in [(GOOD_TEMPLATE, CHAT), (quadratic, long_chat)]:
        tokenizer = load_tokenizer(_tokenizer_folder(tmp_path / str(len(chat)), template))
        for options in ({}, {"add_generation_prompt": True}):
            assert render_template(tokenizer, chat, **options) == \
                tokenizer.apply_chat_template(chat, tokenize=False, **options)


# --- T19: storage that cannot be reached, whichever client library says so --------------

@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hugging Face Hub at a port where nothing listens: the hf:// filesystem's httpx
    client fails to connect (its ConnectError is no OSError), as on a machine offline."""
    from huggingface_hub import HfFileSystem, constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    HfFileSystem.clear_instance_cache()
    yield
    HfFileSystem.clear_instance_cache()


@pytest.mark.parametrize("where", ["--pool", "--target", "--out"])
def test_hf_url_offline_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                    unreachable_hub: None, where: str) -> None:
    url = "hf://datasets/nobody/none/x.parquet" if where != "--out" else \
        "hf://datasets/nobody/none/x"
    argv = {"--pool": _pool(tmp_path), "--target": TARGET, "--out": str(tmp_path / "o")}
    argv[where] = url
    _one_line_exit_2(["select", "--scorer", "dsir", "--k", "3", "--workers", "1",
                      *(part for pair in argv.items() for part in pair)], capsys, url,
                     "cannot reach")


class _NextLibraryError(Exception):
    """An HTTP client's own exception, of a library dataselect has never heard of."""


def test_a_network_failure_wrapped_by_any_library_is_one_line() -> None:
    import socket

    from dataselect import storage
    from dataselect.errors import network_line

    with pytest.raises(InputError, match="cannot reach") as info, \
            storage.reaching("xx://bucket/key"):
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except OSError as cause:
            raise _NextLibraryError("connect failed") from cause
    assert info.value.where == "xx://bucket/key"
    wrapped = _NextLibraryError("timed out")
    wrapped.__context__ = TimeoutError("read timed out")
    assert "cannot reach the storage" in network_line(wrapped)
    assert network_line(_NextLibraryError("a bug, not the network")) is None
    with pytest.raises(_NextLibraryError), storage.reaching("xx://bucket/key"):
        raise _NextLibraryError("a bug, not the network")
