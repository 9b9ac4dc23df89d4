"""Round 2 of the no-traceback, no-hang promise: scheduler addresses that are malformed,
unreachable or silent; resource limits (file size, address space); pools too small for
``--scorer auto``; plug-in scorers that return the wrong scores; and what every scorer does
with empty or whitespace-only text. Each case is one line on stderr with exit status 2, or
a correct result, never a traceback or a hang."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TARGETS, write_jsonl

from pipelines.cli import main
from pipelines.progress import LOST_AFTER_VARIABLE

# a rich progress bar as it is left on a non-terminal stderr ends in its elapsed or
# remaining time: "score:dsir  ━━━  1/2 0:00:00", "warmup  0% -:--:--"
PROGRESS_END = re.compile(r"(\d+:\d\d:\d\d|-:--:--)$")


def _error_lines(stderr: str) -> list[str]:
    """stderr's non-blank lines that are not progress bars."""
    return [line for line in stderr.splitlines()
            if line.strip() and not PROGRESS_END.search(line.rstrip())]


def _one_error_line(stderr: str) -> str:
    """The single ``dataselect: error:`` line a failure prints; fails on a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = _error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("dataselect: error: "), stderr
    return lines[0]


def _dsir_argv(tmp_path: Path, *extra: str) -> list[str]:
    records = [{"id": f"r{i}", "text": f"record {i} about licenses and terms " * 4}
               for i in range(50)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target",
            str(TARGETS / "licenses.jsonl"), "--k", "5", "--out", str(tmp_path / "out"),
            *extra]


# --- scheduler addresses -----------------------------------------------------------------

class _Server:
    """A TCP server on 127.0.0.1 that accepts connections and then does ``behaviour``
    with each: ``silent`` keeps it open and never writes, ``close`` closes it at once,
    ``garbage`` writes bytes that are not Dask's protocol."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.kept: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            if self.behaviour == "close":
                conn.close()
                continue
            if self.behaviour == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
            self.kept.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.kept:
            conn.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[_Server]:
    srv = _Server(request.param)
    yield srv
    srv.close()


def _timed_main(argv: list[str]) -> tuple[int, float]:
    start = time.monotonic()
    code = main(argv)
    return code, time.monotonic() - start


@pytest.mark.parametrize("server", ["silent", "close", "garbage"], indirect=True)
def test_a_scheduler_that_accepts_but_never_answers_is_one_line_in_time(
        tmp_path, monkeypatch, capsys, server):
    """A port that accepts connections and never speaks Dask's protocol waited forever in
    Dask's handshake (more than 400 s); now it stops after the no-workers timeout."""
    monkeypatch.setenv(LOST_AFTER_VARIABLE, "2")
    code, seconds = _timed_main(_dsir_argv(tmp_path, "--scheduler", server.address))
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert server.address in line
    assert seconds < 10


@pytest.mark.slow
def test_a_silent_scheduler_fails_within_the_promised_15_s(tmp_path, capsys):
    srv = _Server("silent")
    try:
        code, seconds = _timed_main(_dsir_argv(tmp_path, "--scheduler", srv.address))
    finally:
        srv.close()
    assert code == 2
    assert "did not answer for 15 s" in _one_error_line(capsys.readouterr().err)
    assert seconds < 20


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line_fast(tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    code, seconds = _timed_main(_dsir_argv(tmp_path, "--scheduler", address))
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert address in line and "cannot reach a Dask scheduler" in line
    assert seconds < 8  # was 30 s, then a traceback


@pytest.mark.parametrize("address", ["tcp://", "foo", "tcp://host:notaport", "http://host:8786",
                                     "tcp://127.0.0.1:70000", "tcp://:8786", " ",
                                     "tcp://host:1/path"])
@pytest.mark.parametrize("command", ["select", "score"])
def test_a_malformed_scheduler_address_is_refused_before_any_work(tmp_path, capsys, address,
                                                                  command):
    argv = _dsir_argv(tmp_path, "--scheduler", address)
    if command == "score":
        argv = ["score", *[a for a in argv[1:] if a not in ("--k", "5")]]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--scheduler" in err and "tcp://host:8786" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["foo", "http://h:1", "tcp://h:0"])
def test_a_malformed_scheduler_is_refused_by_the_api_and_recipes(tmp_path, address):
    from dataselect.errors import InputError
    from pipelines.cluster import dask_client
    from pipelines.jobs import SelectJob
    from pipelines.recipe import ClusterSpec

    with pytest.raises(InputError, match="scheduler"):
        SelectJob("dsir", ["p"], ["t"], str(tmp_path), k=1, scheduler=address).validate()
    with pytest.raises(InputError, match="Dask scheduler address"), dask_client(address):
        pass
    with pytest.raises(ValueError, match="Dask scheduler address"):
        ClusterSpec(scheduler=address)


# --- auto on tiny pools and targets -------------------------------------------------------

def _pool_of(tmp_path: Path, rows: int) -> Path:
    return write_jsonl(tmp_path / f"pool{rows}.jsonl",
                       [{"id": f"p{i}", "text": f"pool row {i} about software licenses"}
                        for i in range(rows)])


@pytest.mark.slow
@pytest.mark.parametrize(("rows", "candidates", "used"), [
    (1, None, "zipfit"), (2, None, "zipfit"), (3, None, "zipfit"), (9, None, "zipfit"),
    (1, "dsir,fasttext", "dsir")])
def test_auto_on_a_pool_too_small_to_validate_uses_one_scorer_and_says_so(
        tmp_path, capsys, rows, candidates, used):
    """A 1-row pool left auto's candidates nothing to fit on (a traceback); a pool of a few
    rows cannot measure anything. auto uses one candidate, unvalidated, and says which."""
    import json

    out = tmp_path / "out"
    params = ["-p", f"candidates={candidates}"] if candidates else []
    argv = ["select", "--scorer", "auto", *params, "--pool", str(_pool_of(tmp_path, rows)),
            "--target", str(TARGETS / "licenses.jsonl"), "--k", "1", "--out", str(out),
            "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = " ".join((captured.out + captured.err).split())  # the summary wraps long notes
    assert "Traceback" not in err
    said = (f"too few to validate candidates on (auto needs at least 10), so it used {used} "
            "without validation")
    assert f"so it used {used}" in err and "without validation" in err
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["counts"]["selected"] == 1
    assert said in manifest["fit"]["validation"]["fallback"]
    assert manifest["fit"]["chosen"] == {used: 1.0}


def test_auto_with_a_one_row_target_is_one_line(tmp_path, capsys):
    target = write_jsonl(tmp_path / "t.jsonl", [{"id": "t0", "text": "one target row"}])
    argv = ["select", "--scorer", "auto", "--pool", str(_pool_of(tmp_path, 1)),
            "--target", str(target), "--k", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "at least 2 target rows" in _one_error_line(capsys.readouterr().err)


# --- plug-in scorers that break score_batch's contract ------------------------------------

BROKEN_PLUGIN = '''
import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from dataselect.scoring import Scorer


@dataclass
class Length(Scorer):
    """Scores that break the contract in the way ``how`` names."""

    name: ClassVar[str] = "length"
    how: str = field(default_factory=lambda: os.environ.get("PLUG_HOW", "fine"))
    kind: str = "threads"

    @property
    def local_workers(self) -> str:
        return self.kind

    def fit(self, target, pool=None, runner=None):
        self.fingerprint_ = self.how
        if self.how == "fit_raises":
            raise KeyError("vocabulary")
        return self

    def score_batch(self, batch):
        ids, n = batch["id"], batch.num_rows
        if self.how == "raises":
            raise ValueError("the plug-in's own bug")
        score = np.arange(n, dtype=np.float64)
        how = self.how
        if how == "one_more":
            return pa.table({"id": pa.concat_arrays([ids.combine_chunks(), pa.array(["x"])]),
                             "score": np.arange(n + 1, dtype=np.float64)})
        if how == "one_fewer":
            return pa.table({"id": ids.slice(1), "score": score[1:]})
        if how == "strings":
            return pa.table({"id": ids, "score": [str(s) for s in score]})
        if how == "none":
            return pa.table({"id": ids, "score": pa.array([None] * n, pa.float64())})
        if how == "nan":
            return pa.table({"id": ids, "score": np.full(n, np.nan)})
        if how in ("inf", "neg_inf"):
            return pa.table({"id": ids, "score": np.full(n, np.inf if how == "inf" else -np.inf)})
        if how == "no_score":
            return pa.table({"id": ids, "value": score})
        if how == "no_id":
            return pa.table({"score": score})
        if how == "other_ids":
            return pa.table({"id": [f"other{i}" for i in range(n)], "score": score})
        if how == "reversed_ids":
            return pa.table({"id": ids.to_pylist()[::-1], "score": score})
        if how == "int_ids":
            return pa.table({"id": np.arange(n), "score": score})
        if how == "list":
            return list(score)
        if how == "ints":
            return pa.table({"id": ids, "score": np.arange(n)})
        return pa.table({"id": ids, "score": score})

    def config(self):
        return {"how": self.how}
'''

BREAKAGES = {
    "one_more": "returned 51 scores for 50 rows",
    "one_fewer": "returned 49 scores for 50 rows",
    "strings": "returned scores of type string, not numbers",
    "none": "returned None as the score of id 'r0'",
    "nan": "returned nan as the score of id 'r0'",
    "inf": "returned inf as the score of id 'r0'",
    "neg_inf": "returned -inf as the score of id 'r0'",
    "no_score": "returned no 'score' column (columns: id, value)",
    "no_id": "returned no 'id' column (columns: score)",
    "other_ids": "returned id 'other0' for row 0, whose id is 'r0'",
    "reversed_ids": "returned id 'r49' for row 0, whose id is 'r0'",
    "int_ids": "returned id 0 for row 0, whose id is 'r0'",
    "list": "returned a list, not a pyarrow Table",
}


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from test_plugins import install_plugin

    from scorers import SCORERS

    root = tmp_path / "plugin"
    root.mkdir()
    install_plugin(root, monkeypatch)  # registered as "length"; its module replaced here
    (root / "plug_scorer.py").write_text(BROKEN_PLUGIN)
    SCORERS.refresh()
    yield
    SCORERS.refresh()


@pytest.mark.parametrize("how", sorted(BREAKAGES))
@pytest.mark.parametrize("command", ["select", "score"])
def test_a_plugin_breaking_the_score_contract_is_one_line_naming_it(
        tmp_path, capsys, broken_plugin, how, command):
    argv = _dsir_argv(tmp_path, "--workers", "1")
    argv[argv.index("dsir")] = "length"
    argv[3:3] = ["-p", f"how={how}"]
    if command == "score":
        argv = ["score", *[a for a in argv[1:] if a not in ("--k", "5")]]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"dataselect: error: scorer 'length' {BREAKAGES[how]}; "
                           "score_batch must return"), line


PLUGIN_RAISES = {
    "raises": "scorer 'length' (plug_scorer.Length, a plug-in) raised ValueError in "
              "score_batch: the plug-in's own bug; the fault is in the plug-in",
    "fit_raises": "scorer 'length' (plug_scorer.Length, a plug-in) raised KeyError in fit: "
                  "'vocabulary'; the fault is in the plug-in",
}


@pytest.mark.parametrize("how", sorted(PLUGIN_RAISES))
def test_a_plugins_own_exception_is_one_line_naming_the_plugin(tmp_path, capsys,
                                                              broken_plugin, how):
    argv = _dsir_argv(tmp_path, "--workers", "1")
    argv[argv.index("dsir")] = "length"
    argv[3:3] = ["-p", f"how={how}"]
    assert main(argv) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(
        f"dataselect: error: {PLUGIN_RAISES[how]}")
    assert main(["--verbose", *argv]) == 2  # the plug-in's traceback, for its author
    err = capsys.readouterr().err
    assert "Traceback" in err and 'plug_scorer.py", line' in err


def test_a_plugins_own_exception_reaches_the_api_as_a_plugin_error_with_its_cause(
        tmp_path, broken_plugin):
    from dataselect.errors import PluginError
    from scorers import SCORERS

    pool = _pool_of(tmp_path, 50)
    with pytest.raises(PluginError, match="raised ValueError in score_batch") as raised:
        SCORERS["length"](how="raises").fit(pool).score(pool).partition(0)
    assert isinstance(raised.value.__cause__, ValueError)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["one_more", "strings", "raises"])
def test_the_score_contract_holds_in_worker_processes(tmp_path, capsys, broken_plugin, how):
    argv = _dsir_argv(tmp_path, "--workers", "1")
    argv[argv.index("dsir")] = "length"
    argv[3:3] = ["-p", f"how={how}", "-p", "kind=processes"]
    assert main(argv) == 2
    assert {**BREAKAGES, **PLUGIN_RAISES}[how] in _one_error_line(capsys.readouterr().err)
    if how == "raises":  # its traceback came back from the worker process as text
        assert main(["--verbose", *argv]) == 2
        assert 'plug_scorer.py", line' in capsys.readouterr().err


def test_a_plugins_integer_scores_are_numbers(tmp_path, broken_plugin):
    import pyarrow.parquet as pq

    argv = _dsir_argv(tmp_path, "--workers", "1")
    argv[argv.index("dsir")] = "length"
    argv[3:3] = ["-p", "how=ints"]
    assert main(argv) == 0
    chosen = pq.read_table(tmp_path / "out")
    assert chosen.schema.field("score").type == "double"
    assert sorted(chosen["score"].to_pylist()) == [45.0, 46.0, 47.0, 48.0, 49.0]


@pytest.mark.slow
def test_the_score_contract_holds_for_auto_candidates_and_recipes(tmp_path, capsys,
                                                                   monkeypatch, broken_plugin):
    import yaml
    from conftest import instruction_recipe

    argv = _dsir_argv(tmp_path, "--workers", "1")
    argv[argv.index("dsir")] = "auto"
    argv[3:3] = ["-p", "candidates=length,dsir"]
    monkeypatch.setenv("PLUG_HOW", "one_fewer")  # auto builds candidates with defaults
    assert main(argv) == 2
    assert re.search(r"scorer 'length' returned \d+ scores for \d+ rows",
                     _one_error_line(capsys.readouterr().err))
    recipe = instruction_recipe(tmp_path / "rout", ("define",), {"length": {"how": "nan"}},
                                k=5)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 2
    assert "returned nan as the score of id" in _one_error_line(capsys.readouterr().err)


# --- model folders that ask for their own code, or cannot be loaded ----------------------

def _remote_code_model(folder: Path) -> Path:
    """A model folder whose config maps the Auto classes to Python files beside it, as a
    Hub repository with custom code does; the code would leave a file behind if run."""
    import json

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom_xyz", "architectures": ["CustomModel"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomModel"}}))
    ran = folder.parent / "the_folders_code_ran"
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(f"open({str(ran)!r}, 'w').close()\n")
    return folder


@pytest.mark.parametrize("command", [
    ["select", "--scorer", "embed", "-p", "model={model}", "--k", "1"],
    ["select", "--scorer", "bads", "-p", "model={model}", "--k", "1"],
    ["select", "--scorer", "auto", "-p", "model={model}", "--k", "1"],
    ["score", "--scorer", "embed", "-p", "model={model}"],
    ["warmup", "--model", "{model}"],
    ["attribute", "--method", "trak", "-p", "model={model}", "--queries", "{pool}"],
])
def test_a_model_folder_asking_for_its_own_code_is_one_line_naming_it(tmp_path, capsys,
                                                                      command):
    model = _remote_code_model(tmp_path / "custom-model")
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"p{i}", "text": f"row {i} " * 5}
                                                 for i in range(40)])
    argv = [a.format(model=model, pool=pool) for a in command] + ["--pool", str(pool)]
    if command[0] in ("select", "score"):
        argv += ["--target", str(TARGETS / "licenses.jsonl")]
    argv += ["--out", str(tmp_path / ("out.parquet" if command[0] == "attribute" else "out"))]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"dataselect: error: {model}: ") and "own Python code" in line
    assert "trust_remote_code" in line
    assert not (tmp_path / "the_folders_code_ran").exists()


def test_an_unknown_architecture_or_bad_config_is_one_line(tmp_path):
    from dataselect.errors import InputError
    from models.lm import check_model_folder

    for name, config in (("unknown", '{"model_type": "not_an_architecture"}'),
                         ("broken", '{"model_type": '), ("list", "[1, 2]")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        with pytest.raises(InputError) as raised:
            check_model_folder(folder)
        assert str(folder) in str(raised.value)


def test_a_folder_transformers_cannot_load_from_is_one_line(tmp_path):
    """A known architecture without tokenizer files, or without weights."""
    import torch

    from dataselect.errors import InputError
    from models.lm import check_model_folder, load_causal_lm, load_tokenizer

    (tmp_path / "config.json").write_text(  # llama's default sizes are a 7B model
        '{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, '
        '"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}')
    path = check_model_folder(tmp_path)
    with pytest.raises(InputError, match="cannot load the tokenizer from this folder"):
        load_tokenizer(path)
    with pytest.raises(InputError, match="cannot load the model from this folder"):
        load_causal_lm(path, torch.device("cpu"))
    (tmp_path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": '
        '["tokenization_custom.CustomTokenizer", null]}}')
    with pytest.raises(InputError, match="own Python code"):
        load_tokenizer(path)


# --- empty and whitespace-only text --------------------------------------------------------

BLANKS = ["", " ", "\n\n", "\t \r\n", "\u00a0", "\u3000\u2003", "\u200b", "\ufeff", "\x00"]


def _pool_with_blanks(tmp_path: Path, records: list[dict]) -> Path:
    rows = [{"id": r["id"], "text": r["text"]} for r in records]
    rows[5:5] = [{"id": f"blank{i}", "text": text} for i, text in enumerate(BLANKS)]
    return write_jsonl(tmp_path / "pool.jsonl", rows)


@pytest.mark.parametrize("scorer", [["dsir"], ["zipfit", "-p", "mode=fast"],
                                    ["zipfit", "-p", "mode=exact"], ["fasttext"]])
@pytest.mark.parametrize("budget", [["--k", "5"], ["--fraction", "1"],
                                    ["--threshold=-1e300"]])
def test_blank_rows_are_never_selected_and_are_counted(tmp_path, small_records, scorer,
                                                       budget):
    """ZIP-FIT's fast mode ranked every empty row first and DSIR scored them 0, above most
    documents; now a blank row (empty, whitespace, no-break or zero-width spaces, a BOM,
    control characters) is filtered as ``empty_text`` by every scorer."""
    import json

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    argv = ["select", "--scorer", *scorer, "--pool", str(_pool_with_blanks(tmp_path,
            small_records[:30])), "--target", str(TARGETS / "python_docs.jsonl"), *budget,
            "--out", str(out), "--workers", "1"]
    assert main(argv) == 0
    chosen = pq.read_table(out)["id"].to_pylist()
    assert not [i for i in chosen if i.startswith("blank")]
    counts = json.loads((out / ".manifest.json").read_text())["counts"]
    assert counts["filtered"] == {"empty_text": len(BLANKS)}
    assert counts["eligible"] == 30 and counts["rows_in"] == 30 + len(BLANKS)
    if budget[0] == "--k":
        assert len(chosen) == 5
    if budget[0] == "--fraction" or budget[0].startswith("--threshold"):
        assert len(chosen) == 30


def test_a_pool_without_blank_rows_keeps_its_score_columns():
    """The ``filtered_by`` column appears only where a row is blank, so score stores of
    other pools keep their bytes; a scorer's own reason is kept over ``empty_text``."""
    import pyarrow as pa

    from dataselect.scoring import with_text_columns

    scores = pa.table({"id": ["a", "b"], "score": [1.0, 2.0]})
    assert with_text_columns(scores, pa.array(["x", " y "])).column_names == [
        "id", "score", "text_bytes"]
    marked = with_text_columns(
        pa.table({"id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0],
                  "filtered_by": pa.array([None, "dsir_min_length", None], pa.string())}),
        pa.array(["", " ", "text"]))
    assert marked["filtered_by"].to_pylist() == ["empty_text", "dsir_min_length", None]


@pytest.mark.slow
def test_model_scorers_filter_blank_rows_too(tmp_path, instruction_lm):
    """RDS+ embeddings (through its pool feature store) and BADS (through score_batch)."""
    import pyarrow.parquet as pq

    from dataselect import read_corpus

    rows = [{"id": f"r{i}", "text": f"row {i} explains how to define a word"} for i in range(6)]
    rows += [{"id": f"blank{i}", "text": text} for i, text in enumerate(BLANKS[:3])]
    pool = read_corpus(str(write_jsonl(tmp_path / "pool.jsonl", rows)))
    target = read_corpus(str(write_jsonl(tmp_path / "t.jsonl", rows[:3])))
    from scorers import SCORERS

    embed = SCORERS["embed"](model=instruction_lm, features=str(tmp_path / "feats"))
    scores = embed.fit(target, pool).score(pool).write(str(tmp_path / "scores"))
    table = pq.read_table(tmp_path / "scores")
    reasons = dict(zip(table["id"].to_pylist(), table["filtered_by"].to_pylist()))
    assert {i for i, r in reasons.items() if r == "empty_text"} == {"blank0", "blank1",
                                                                    "blank2"}
    assert scores.stats["rows"] == 9


# --- ZIP-FIT's default mode ---------------------------------------------------------------

def test_zipfit_defaults_to_fast_mode_and_exact_is_one_flag_away(tmp_path):
    """Exact mode was the default: 4-8x slower than fast on a newcomer's pool, and no more
    precise. A job without -p mode now scores in fast mode, and says so in its manifest."""
    import json

    from scorers import ZipFit

    assert ZipFit().mode == "fast"
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"p{i}", "text": f"permission is hereby granted, free of charge, copy {i} " * 3}
        for i in range(20)])
    for mode, params in (("fast", []), ("exact", ["-p", "mode=exact"])):
        out = tmp_path / mode
        assert main(["select", "--scorer", "zipfit", *params, "--pool", str(pool),
                     "--target", str(TARGETS / "licenses.jsonl"), "--k", "3",
                     "--out", str(out)]) == 0
        config = json.loads((out / ".manifest.json").read_text())["scores"]["config"]
        assert config["mode"] == mode
        assert config["compressor"] == {"fast": "zstd", "exact": "deflate"}[mode]


# --- resource limits ---------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _limited_run(argv: list[str], limit: int, value: int) -> tuple[int, str, float]:
    """The console script run under ``resource.setrlimit(limit, value)``: exit status,
    stderr and seconds."""
    import os
    import resource
    import subprocess
    import sys

    def set_limit() -> None:
        resource.setrlimit(limit, (value, value))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipelines.console", *argv], env=env,
                          preexec_fn=set_limit, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.mark.parametrize("limit", ["RLIMIT_AS", "RLIMIT_DATA"])
def test_an_address_space_limit_too_small_to_start_is_one_line(tmp_path, limit):
    """Under ulimit -v 1 GiB, OpenBLAS gave up while NumPy imported and Polars' allocator
    aborted the process (exit 134); now the limit is checked before they load."""
    import resource

    code, err, seconds = _limited_run(_dsir_argv(tmp_path), getattr(resource, limit), 2**30)
    assert code == 2
    line = _one_error_line(err)
    assert "limit (ulimit -" in line and "is 1024 MiB" in line and "at least 4 GiB" in line
    assert seconds < 10  # before any library loads
    assert not (tmp_path / "out").exists()


def test_a_stack_limit_too_small_for_nested_values_is_one_line(tmp_path):
    """Under ulimit -s 160 (KiB), 63 levels of nested lists crashed the process (exit 139)
    in a native thread whose stack follows the limit; now it is refused before work."""
    import resource

    code, err, _ = _limited_run(_dsir_argv(tmp_path), resource.RLIMIT_STACK, 160 * 1024)
    assert code == 2
    line = _one_error_line(err)
    assert "stack limit (ulimit -s) is 160 KiB" in line and "at least 2 MiB" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_the_rerun_resumes(tmp_path):
    """ulimit -f: a write past the limit fails with EFBIG (Python ignores SIGXFSZ, so the
    process is not killed), and the line says which limit and what to do."""
    import json
    import resource

    argv = _dsir_argv(tmp_path, "--worker-kind", "threads")
    code, err, _ = _limited_run(argv, resource.RLIMIT_FSIZE, 4096)
    assert code == 2, err
    line = _one_error_line(err)
    assert "File too large" in line and "file-size limit (ulimit -f)" in line
    assert main(argv) == 0  # the limit lifted: the same command finishes
    assert json.loads((tmp_path / "out" / ".manifest.json").read_text())["counts"][
        "selected"] == 5


def test_an_open_file_limit_too_small_is_one_line_or_raised(tmp_path):
    import resource

    code, err, _ = _limited_run(_dsir_argv(tmp_path), resource.RLIMIT_NOFILE, 12)
    assert code == 2
    assert "open-file limit (ulimit -n) is 12" in _one_error_line(err)


def test_a_refused_thread_is_one_line_naming_the_limits(tmp_path, monkeypatch, capsys):
    """The system refusing a thread (ulimit -v or -u reached) in Arrow's reader was
    reported as a corrupt Parquet file; in Python's threading it was a traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataselect.errors import resource_line

    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one text", "another text"]}), pool)

    def no_thread(*args: object, **kwargs: object) -> None:
        raise pa.ArrowException("Unknown error: Failed to launch worker thread: Resource "
                                "temporarily unavailable")

    monkeypatch.setattr(pq.ParquetFile, "__init__", no_thread)
    argv = _dsir_argv(tmp_path)
    argv[argv.index("--pool") + 1] = str(pool)
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "refused to start a thread" in line and "corrupt" not in line
    assert "ulimit -u" in resource_line(RuntimeError("can't start new thread"))


def test_out_of_memory_names_the_address_space_limit(monkeypatch):
    import resource

    from pipelines.cluster import worker_failure_line

    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (5 * 2**30, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which)))
    line = worker_failure_line(MemoryError())
    assert line.startswith("out of memory (ulimit -v is 5120 MiB); rerun with a smaller "
                           "--partition-mb")


def test_rows_without_tokens_get_no_model_pass():
    """An empty text tokenizes to no token with a tokenizer that adds no BOS; a chunk of
    such rows alone had no token column and the model failed on it (RDS+ embeddings)."""
    import numpy as np

    from models.lm import token_budget_chunks
    from scorers.embed import length_batches

    lengths = np.array([0, 5, 0, 3, 0])
    chunks = token_budget_chunks(lengths, 2, 100)
    assert sorted(np.concatenate(chunks).tolist()) == [1, 3]
    assert token_budget_chunks(np.zeros(3, int), 2, 100) == []
    widths = [int(lengths[rows[0]]) for rows in length_batches(lengths, 8)]
    assert widths[-1] == 0  # embed skips this batch


def test_zipfit_fast_does_not_rank_texts_under_8_bytes_first(pool_table):
    """zstd ignores a dictionary under 8 bytes and then compresses the target 10 % smaller
    than with any dictionary, so "ok" or "Thanks!" outscored 98.6 % of real documents in
    fast mode (exact mode put them below 97 %). Now they rank with unrelated text."""
    import pyarrow as pa

    from dataselect import read_corpus
    from scorers import ZipFit

    real = pool_table.slice(0, 300)
    short = ["a", "ok", "Thanks!", "x = 1", "Thanks!!"]
    batch = pa.table({"id": real["id"].to_pylist() + [f"s{i}" for i in range(len(short))],
                      "text": real["text"].to_pylist() + short})
    scorer = ZipFit(mode="fast").fit(read_corpus(str(TARGETS / "python_docs.jsonl")))
    scores = scorer.score_batch(batch)["score"].to_numpy()
    real_scores = scores[:real.num_rows]
    for value in scores[real.num_rows:]:
        assert (real_scores > value).mean() > 0.9
