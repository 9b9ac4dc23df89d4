"""Probe round L (issue 28, the seventh probe): model folders, LoRA checkpoints and
attribution methods are inputs.

- A model folder whose tokenizer or generation settings are damaged is one line naming
  the folder and the file, never a traceback from inside transformers.
- Every reader of LoRA checkpoints (attribute's trak/tracin/bif, LESS, the warmup's own
  resume) checks a checkpoint folder the same way: a path that is no checkpoint, a
  damaged ``adapter_config.json`` or an edited ``checkpoint.json`` is one line naming it.
- What an attribution method returns (built-in or plug-in) is checked where the attribute
  job receives it: the ids given, in order, a score per pair, every score finite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, install_distribution
from fault_helpers import (  # noqa: F401 (private_fingerprint_cache: autouse fixture)
    private_fingerprint_cache,
    refused_run,
)

from pipelines.cli import main

TRAIN = DATA / "instructions" / "train.jsonl"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained chat-less model (tokenizer, config, generation config, weights)."""
    from models.lm import build_tiny_causal_lm

    rows = [json.loads(line) for line in TRAIN.open()]
    texts = [m["content"] for r in rows for m in r["messages"]]
    root = tmp_path_factory.mktemp("tiny_lm")
    return Path(build_tiny_causal_lm(texts, root / "lm", vocab_size=300, hidden_size=32,
                                     layers=1))


def _copy(model: Path, tmp_path: Path, name: str = "m") -> Path:
    folder = tmp_path / name
    shutil.copytree(model, folder)
    return folder


def _features(model: Path, tmp_path: Path) -> list[str]:
    return ["features", "--scorer", "embed", "-p", f"model={model}", "--input", str(TRAIN),
            "--text-field", "messages", "--out", str(tmp_path / "feats"), "--workers", "1"]


# --- g07: a model folder's tokenizer and generation settings are inputs ------------------

def _set_key(file: Path, key: str, value: object) -> None:
    content = json.loads(file.read_text())
    content[key] = value
    file.write_text(json.dumps(content))


@pytest.mark.parametrize(("name", "damage"), [
    ("tokenizer.json", '{"version": "1.0", "model": 5}'),
    ("tokenizer.json", "[]"),
    ("tokenizer.json", "null"),
    ("tokenizer.json", '{"version": "1.0", "model": {"type": "BPE", "vocab": 5}, '
                       '"added_tokens": []}'),
    ("tokenizer.json", '{"version": "1.0", "model": {"type": "Nope"}, "added_tokens": [5]}'),
    ("tokenizer_config.json", "[]"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": 5}}),
    ("tokenizer_config.json", {"added_tokens_decoder": {"0": 5}}),
    ("tokenizer_config.json", {"added_tokens_decoder": 5}),
    ("special_tokens_map.json", "[]"),
    ("generation_config.json", '{"max_new_tokens": "x", "temperature": -1}'),
    ("generation_config.json", "[]"),
    ("generation_config.json", '"x"'),
])
def test_damaged_model_file_is_one_line_naming_folder_and_file(
        tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str,
        damage: str | dict) -> None:
    model = _copy(tiny_lm, tmp_path)
    if isinstance(damage, dict):
        for key, value in damage.items():
            _set_key(model / name, key, value)
    else:
        (model / name).write_text(damage)
    refused_run(_features(model, tmp_path), capsys, str(model / name))


@pytest.mark.parametrize(("key", "value"), [("tokenizer_class", 5), ("pad_token", 5)])
def test_tokenizer_setting_of_the_wrong_type_is_one_line(
        tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture, key: str,
        value: object) -> None:
    model = _copy(tiny_lm, tmp_path)
    _set_key(model / "tokenizer_config.json", key, value)
    refused_run(_features(model, tmp_path), capsys, str(model), "tokenizer_config.json")


# --- g10, g15, g12: every reader of LoRA checkpoints checks them the same way -------------

QUERIES = DATA / "instructions" / "eval" / "code.jsonl"


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 12 chat records of the instruction set."""
    path = tmp_path_factory.mktemp("pool") / "tr.jsonl"
    path.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:12]))
    return path


def _warmup_argv(model: Path, pool: Path, out: Path) -> list[str]:
    return ["warmup", "--model", str(model), "--pool", str(pool), "--text-field", "messages",
            "--out", str(out), "-p", "epochs=2", "-p", "fraction=1.0", "-p", "max_length=64",
            "-p", "rank=2", "-p", "batch_size=4"]


@pytest.fixture(scope="module")
def warmed(tiny_lm: Path, small_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch warmup of the tiny model."""
    out = tmp_path_factory.mktemp("warmup") / "wu"
    assert main(_warmup_argv(tiny_lm, small_pool, out)) == 0
    return out


def _attribute(method: str, model: Path, pool: Path, checkpoints: str, out: Path
               ) -> list[str]:
    return ["attribute", "--method", method, "-p", f"model={model}", "--text-field",
            "messages", "-p", f"checkpoints={checkpoints}", "-p", "max_length=64",
            "--pool", str(pool), "--queries", str(QUERIES), "-k", "3", "--out", str(out)]


@pytest.mark.parametrize("method", ["tracin", "trak", "bif"])
@pytest.mark.parametrize("where", ["missing", "model", "empty", "file"])
def test_attribute_checkpoint_that_is_no_lora_checkpoint_is_one_line(
        tiny_lm: Path, small_pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        method: str, where: str) -> None:
    """As `select --scorer less` says: no traceback from peft, and never a request to the
    Hugging Face hub for a name that is no local folder ("cannot reach the storage")."""
    path = {"missing": tmp_path / "nonexist", "model": tiny_lm, "empty": tmp_path / "empty",
            "file": small_pool}[where]
    (tmp_path / "empty").mkdir()
    line = refused_run(_attribute(method, tiny_lm, small_pool, str(path), tmp_path / "a.parquet"),
                    capsys, str(path), "not a LoRA checkpoint: adapter_config.json is missing")
    assert "storage" not in line and "network" not in line
    assert not (tmp_path / "a.parquet").exists()


def _edited_copy(warmed: Path, tmp_path: Path, epoch: int, name: str, content: str) -> Path:
    out = tmp_path / "wu"
    shutil.copytree(warmed, out)
    (out / f"epoch-{epoch}" / name).write_text(content)
    return out


@pytest.mark.parametrize(("content", "named"), [
    ("garbage", "adapter_config.json"), ("[]", "adapter_config.json"),
    ("{}", "adapter_config.json"), ('{"peft_type": "PREFIX_TUNING"}', "adapter_config.json"),
    ('{"peft_type": "LORA", "r": 2, "target_modules": ["nope"]}', ""),
    ('{"peft_type": "LORA", "r": "x", "target_modules": ["q_proj"]}', ""),
])
def test_damaged_adapter_config_is_one_line_naming_it(
        warmed: Path, tiny_lm: Path, small_pool: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture, content: str, named: str) -> None:
    """Both readers (attribute, LESS): the file when it is no LoRA config, else the
    checkpoint that cannot be loaded onto the model."""
    out = _edited_copy(warmed, tmp_path, 2, "adapter_config.json", content)
    checkpoints = f"{out}/epoch-1,{out}/epoch-2"
    refused_run(_attribute("tracin", tiny_lm, small_pool, checkpoints, tmp_path / "a.parquet"),
             capsys, str(out / "epoch-2" / named))
    refused_run(["select", "--scorer", "less", "-p", f"model={tiny_lm}", "-p",
              f"checkpoints={checkpoints}", "-p", "max_length=64", "-p", "proj_dim=16",
              "--pool", str(small_pool), "--target", str(QUERIES), "--text-field",
              "messages", "--k", "3", "--out", str(tmp_path / "sel"), "--workers", "1"],
             capsys, str(out / "epoch-2" / named))


def test_damaged_adapter_weights_are_one_line_naming_the_checkpoint(
        warmed: Path, tiny_lm: Path, small_pool: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    out = _edited_copy(warmed, tmp_path, 1, "adapter_model.safetensors", "garbage")
    refused_run(_attribute("tracin", tiny_lm, small_pool, f"{out}/epoch-1",
                        tmp_path / "a.parquet"), capsys, str(out / "epoch-1"))


@pytest.mark.parametrize("name", ["adapter_config.json", "checkpoint.json"])
def test_warmup_rerun_trains_a_damaged_checkpoint_again(
        warmed: Path, tiny_lm: Path, small_pool: Path, tmp_path: Path, name: str) -> None:
    """The warmup's own resume: a checkpoint damaged since is computed again (as the same
    run writes it), not resumed from."""
    out = _edited_copy(warmed, tmp_path, 2, name, "garbage")
    assert main(_warmup_argv(tiny_lm, small_pool, out)) == 0
    for file in ("adapter_config.json", "checkpoint.json"):
        assert (out / "epoch-2" / file).read_text() == (warmed / "epoch-2" / file).read_text()


def test_a_checkpoint_names_its_target_modules_in_sorted_order(warmed: Path,
                                                                 tmp_path: Path) -> None:
    """peft writes ``target_modules`` in its set's order, which changes with each
    process's string hashing, so a resumed warmup's checkpoint differed in bytes from the
    first run's; dataselect writes the list sorted, as peft formats the file otherwise."""
    import json

    from models.lora_checkpoints import _sort_target_modules

    for epoch in ("epoch-1", "epoch-2"):
        text = (warmed / epoch / "adapter_config.json").read_text()
        modules = json.loads(text)["target_modules"]
        assert len(modules) > 1 and modules == sorted(modules)
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"r": 2, "target_modules": ["v_proj", "k_proj", "q_proj"]}))
    _sort_target_modules(config)
    assert config.read_text() == json.dumps(
        {"r": 2, "target_modules": ["k_proj", "q_proj", "v_proj"]}, indent=2, sort_keys=True)


@pytest.mark.parametrize("value", ["1e400", "NaN", "-Infinity", "-1", "0", '"x"', "null",
                                   "true", ""])
def test_edited_mean_lr_is_refused_as_an_edited_record(tmp_path: Path, value: str) -> None:
    """TracIn and LESS weight checkpoints by mean_lr: infinity made every TracIn score NaN
    (exit 0), and NaN, 0, -1 or text silently gave equal weights."""
    from attribution.ensemble import checkpoint_learning_rate
    from dataselect.errors import InputError
    from models.lora_checkpoints import read_checkpoint_json

    info = tmp_path / "checkpoint.json"
    info.write_text('{"epoch": 1, "step": 3' + (', "mean_lr": ' + value if value else "")
                    + "}")
    for read in (checkpoint_learning_rate, read_checkpoint_json):
        with pytest.raises(InputError, match="mean_lr") as raised:
            read(str(tmp_path))
        assert str(info) in str(raised.value) and "edited" in str(raised.value)


def test_attribute_refuses_a_checkpoint_with_an_infinite_learning_rate(
        warmed: Path, tiny_lm: Path, small_pool: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "wu"
    shutil.copytree(warmed, out)
    info = out / "epoch-1" / "checkpoint.json"
    record = info.read_text()
    start = record.index('"mean_lr": ') + len('"mean_lr": ')
    info.write_text(record[:start] + "1e400" + record[record.index(",", start):])
    refused_run(_attribute("tracin", tiny_lm, small_pool, f"{out}/epoch-1,{out}/epoch-2",
                        tmp_path / "a.parquet"), capsys, str(info), "mean_lr")
    assert not (tmp_path / "a.parquet").exists()


def test_recipe_reuses_a_warmup_only_while_its_checkpoints_pass_the_check(
        warmed: Path, tmp_path: Path) -> None:
    """A recipe's finished warmup is reused only while LESS can read it; a checkpoint
    damaged since sends the recipe back to the warmup, which trains it again."""
    from pipelines.run_recipe import _readable_checkpoints

    out = _edited_copy(warmed, tmp_path, 2, "adapter_config.json", "garbage")
    assert _readable_checkpoints([str(warmed / "epoch-1"), str(warmed / "epoch-2")])
    assert not _readable_checkpoints([str(out / "epoch-1"), str(out / "epoch-2")])


# --- g14: what an attribution method returns is checked where the job receives it -------

BAD_METHOD = '''
import os
from dataclasses import dataclass

import numpy as np

from attribution.base import Attributor, one_table
from attribution.scores import InnerProducts, ScoreMatrix


@dataclass
class S:
    scale: float = 1.0


class Bad(Attributor):
    """Breaks the contract one way per BAD_MODE."""

    name = "badattr"
    settings_class = S

    def attribute(self, train, queries):
        mode = os.environ["BAD_MODE"]
        query = one_table(queries)
        tid, qid = train["id"].to_pylist(), query["id"].to_pylist()
        mat = np.ones((len(tid), len(qid)), np.float32) * np.arange(len(tid))[:, None]
        if mode == "none":
            return None
        if mode == "table":
            return train
        if mode == "nan":
            mat[0, 0] = np.nan
        if mode == "inf":
            mat[:] = np.inf
        if mode == "list":
            mat = mat.tolist()
        if mode == "f64":
            mat = mat.astype(np.float64)
        if mode == "huge64":
            mat = mat.astype(np.float64) * 1e300
        if mode == "text":
            mat = mat.astype(str)
        if mode == "shape":
            mat = mat[:-1]
        if mode == "columns":
            mat = mat[:, :-1]
        if mode == "flat":
            mat = mat.reshape(-1)
        if mode == "dupid":
            tid[1] = tid[0]
        if mode == "foreignid":
            tid = [f"zz{i}" for i in range(len(tid))]
        if mode == "intid":
            tid = list(range(len(tid)))
        if mode == "fewer":
            tid = tid[:-1]
        if mode == "qids":
            qid = qid[::-1]
        if mode == "inner_rows":
            return InnerProducts(np.ones((len(tid) - 1, 4)), np.ones((len(qid), 4)), tid, qid)
        if mode == "inner_dims":
            return InnerProducts(np.ones((len(tid), 4)), np.ones((len(qid), 3)), tid, qid)
        if mode == "inner_nan":
            return InnerProducts(np.full((len(tid), 4), np.nan), np.ones((len(qid), 4)), tid,
                                 qid)
        return ScoreMatrix(mat, tid, qid)
'''

# each way to break it, and a word the error line must hold
BROKEN = {"none": "NoneType", "table": "Table", "nan": "nan", "inf": "inf",
          "huge64": "finite", "text": "not numbers", "shape": "shape", "columns": "shape",
          "flat": "shape", "dupid": "training id", "foreignid": "'zz0'", "intid": "id 0",
          "fewer": "training ids", "qids": "query id", "inner_rows": "shape",
          "inner_dims": "shape", "inner_nan": "nan"}


@pytest.fixture
def bad_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from attribution import ATTRIBUTIONS

    (tmp_path / "dist").mkdir()
    install_distribution(tmp_path / "dist", monkeypatch, "bad_attr", BAD_METHOD,
                         "[dataselect.attribution]\nbadattr = bad_attr:Bad\n")
    ATTRIBUTIONS.refresh()
    yield
    ATTRIBUTIONS.refresh()


def _rows(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": f"text of {i}"}) + "\n"
                            for i in ids))
    return path


@pytest.mark.parametrize("k", ["3", "all"])
@pytest.mark.parametrize("mode", sorted(BROKEN))
def test_attribution_method_breaking_its_contract_is_one_line_naming_it(
        bad_method: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, mode: str, k: str) -> None:
    pool = _rows(tmp_path / "pool.jsonl", [f"p{i}" for i in range(8)])
    queries = _rows(tmp_path / "q.jsonl", ["q0", "q1", "q2"])
    monkeypatch.setenv("BAD_MODE", mode)
    out = tmp_path / ("a.parquet" if k != "all" else "a")  # -k all writes a folder
    refused_run(["attribute", "--method", "badattr", "--pool", str(pool), "--queries",
              str(queries), "-k", k, "--out", str(out)], capsys,
             "attribution method 'badattr' (bad_attr.Bad, a plug-in)", BROKEN[mode])
    assert not out.exists()


def test_attribution_method_keeping_its_contract_still_writes(
        bad_method: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 scores within float32's range are fine (written as float32), and so is a
    matrix given as nested lists."""
    import numpy as np
    import pyarrow.parquet as pq

    from attribution.output import read_attribution_matrix

    pool = _rows(tmp_path / "pool.jsonl", [f"p{i}" for i in range(8)])
    queries = _rows(tmp_path / "q.jsonl", ["q0", "q1"])
    for mode in ("ok", "f64", "list"):
        monkeypatch.setenv("BAD_MODE", mode)
        out = tmp_path / f"{mode}.parquet"
        assert main(["attribute", "--method", "badattr", "--pool", str(pool), "--queries",
                     str(queries), "-k", "2", "--out", str(out)]) == 0
        rows = pq.read_table(out).to_pylist()
        assert [(r["query_id"], r["train_id"], r["score"]) for r in rows[:2]] == [
            ("q0", "p7", 7.0), ("q0", "p6", 6.0)]
        assert main(["attribute", "--method", "badattr", "--pool", str(pool), "--queries",
                     str(queries), "-k", "all", "--out", str(tmp_path / mode)]) == 0
        matrix, train_ids, _ = read_attribution_matrix(tmp_path / mode)
        assert matrix.dtype == np.float32 and matrix[7, 1] == 7.0 and train_ids[7] == "p7"
