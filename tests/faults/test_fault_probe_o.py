"""Probe round 8 (issue 28), fixes of g02, g04 and g07, and FIFOs at listed names.

- A recipe mapping with two merge keys (``<<``) is refused like any other repeated key,
  also where the mapping is only reached through a merge (an anchor of an anchor, a map
  in a merge's list); merges otherwise mean what YAML says, whatever the key's length.
- ``index search --out``/``attribute --out`` at a FIFO is one line, never a hang.
- A FIFO, device or socket at a name a job lists is refused in one line, never replaced.
- A plug-in value dataselect records as JSON (``config()``, ``fit_stats_``) that JSON
  cannot hold is one line naming the plug-in and the method, never a traceback."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import TARGETS, install_distribution, write_jsonl
from fault_helpers import (
    dsir_select,
    private_fingerprint_cache,  # noqa: F401 (autouse fixture)
    ran_ok,
    refused_run,
    within,
)

from dataselect.errors import InputError
from dataselect.outdir import check_output_file
from dataselect.output import atomic_write
from pipelines.recipe_errors import RecipeError
from pipelines.recipe_yaml import _parse_yaml

T = TypeVar("T")


def _pool(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}"}
        for i in range(30)])


# ------------------------------------------------------------------ g02: merge keys

@pytest.mark.parametrize("text", [
    "s:\n  <<: {k: 5}\n  <<: {k: 7}\n",                            # the probe's case
    "b: &b\n  <<: {k: 5}\n  <<: {k: 7}\ns:\n  <<: *b\n",          # in an anchored map
    "s:\n  <<: &b\n    <<: {k: 5}\n    <<: {k: 7}\n",              # only ever merged
    "a: &a {k: 1}\ns:\n  <<: [*a, {<<: {k: 5}, <<: {k: 7}}]\n",    # in a merge's list
])
def test_two_merge_keys_in_one_mapping_are_refused(text: str) -> None:
    with pytest.raises(RecipeError, match=r"merge key << appears twice in one mapping "
                                          r"\(first on line \d\)"):
        _parse_yaml(text, "r.yaml")


def test_a_key_repeated_in_a_mapping_that_is_only_merged_is_refused() -> None:
    with pytest.raises(RecipeError, match="key 'k' appears twice"):
        _parse_yaml("s:\n  <<: {k: 5, k: 7}\n", "r.yaml")


@pytest.mark.parametrize(("text", "wanted"), [
    # a mapping's own key wins over a merged one, also when the merged map merged too
    ("b: &b {<<: {k: 5}, k: 6}\nc: {<<: *b}\n", {"b": {"k": 6}, "c": {"k": 6}}),
    ("c: {<<: {<<: {k: 5}, k: 6}}\n", {"c": {"k": 6}}),
    ("a: &a {k: 5}\nb: &b {<<: *a, k: 6}\nc: {<<: [*b, *a]}\n",
     {"a": {"k": 5}, "b": {"k": 6}, "c": {"k": 6}}),
    # of a merge's list the first map wins, whatever the key's length (PyYAML let the
    # last win for long keys, the first for one-letter ones)
    ("s: {<<: [{num_buckets: 5}, {num_buckets: 7}]}\n", {"s": {"num_buckets": 5}}),
    ("s: {<<: [{k: 5}, {k: 7}]}\n", {"s": {"k": 5}}),
    ("b: &b {k: 5, j: 1}\ns: {<<: *b, k: 7}\n", {"b": {"k": 5, "j": 1},
                                                  "s": {"k": 7, "j": 1}}),
    # an alias of a map met after the map was merged is not a repeat
    ("a: {<<: &b {<<: {k: 5}, j: 1, k: 6}}\nc: *b\n",
     {"a": {"j": 1, "k": 6}, "c": {"j": 1, "k": 6}}),
])
def test_merges_mean_what_yaml_says(text: str, wanted: dict) -> None:
    assert _parse_yaml(text, "r.yaml") == wanted


def test_a_recipe_with_two_merge_keys_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\npool: {{paths: {_pool(tmp_path)}}}\ntargets:\n"
                      f"  t: {{paths: {TARGETS / 'fortunes.jsonl'}}}\n"
                      "scorers:\n  dsir: {}\nselection:\n  <<: {policy: top_k, k: 5}\n"
                      f"  <<: {{k: 7}}\noutput: {{path: {tmp_path / 'out'}}}\n")
    refused_run(["run", str(recipe)], capsys, "r.yaml:9", "merge key << appears twice")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- g04: a FIFO at a single-file --out

def _specials(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    yield "a FIFO", fifo
    link = tmp_path / "link.parquet"
    link.symlink_to(fifo)
    yield "a FIFO", link
    sock = tmp_path / "s.parquet"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock))
        yield "a socket", sock


def _unblocked(fifo: Path, call: Callable[[], T]) -> T:
    """``call()``, failing instead of hanging when it blocks opening ``fifo``: pyarrow
    opens files in C++, where the alarm of ``fault_helpers.within`` cannot interrupt it,
    so the call runs in a thread, and a blocked one is released by opening the FIFO for
    writing."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # raised again in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"blocked opening {fifo}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_special_file_at_an_attribution_out_is_refused_unopened(tmp_path: Path) -> None:
    for kind, path in _specials(tmp_path):
        with pytest.raises(InputError, match=f"not a regular file \\({kind}\\)"):
            _unblocked(tmp_path / "fifo.parquet",
                       lambda path=path: check_output_file(path, "attributions"))


def test_index_search_out_at_a_fifo_is_one_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    fifo = tmp_path / "res.parquet"
    os.mkfifo(fifo)
    argv = ["index", "search", "--index", str(tmp_path / "idx"), "--queries",
            str(tmp_path / "qf"), "--out", str(fifo)]
    _unblocked(fifo, lambda: refused_run(argv, capsys, "res.parquet",
                                         "not a regular file (a FIFO)"))


# ------------------------------------------------- a FIFO at a name a job lists

def test_atomic_write_refuses_a_fifo_at_its_name(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.json")
    refusal = r"x\.json: is not a regular file \(a FIFO\), but dataselect writes"
    with within(10), pytest.raises(InputError, match=refusal), \
            atomic_write(tmp_path / "x.json") as tmp:
        Path(tmp).write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temporary left


def test_a_fifo_planted_while_writing_is_not_replaced(tmp_path: Path) -> None:
    final = tmp_path / "x.json"
    with within(10), pytest.raises(InputError, match="not a regular file"), \
            atomic_write(final) as tmp:
        Path(tmp).write_text("{}")
        os.mkfifo(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize("name", [".manifest.json", ".stats/pool-00000.npz",
                                  "part-00000.parquet", ".scores/dsir/_manifest.json"])
def test_a_fifo_at_a_listed_name_is_refused_when_the_job_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    out = tmp_path / "out"
    argv = dsir_select(_pool(tmp_path), out, k=5)
    ran_ok(argv, capsys)
    (out / name).unlink()
    os.mkfifo(out / name)
    with within(30):
        refused_run(argv, capsys, name, "not a regular file (a FIFO)")
    assert (out / name).is_fifo()


def test_a_fifo_at_the_report_page_is_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    ran_ok(dsir_select(_pool(tmp_path), out, k=5), capsys)
    ran_ok(["report", str(out)], capsys)
    page = out / ".report" / "index.html"
    page.unlink()
    os.mkfifo(page)
    with within(30):
        refused_run(["report", str(out)], capsys, "index.html", "not a regular file")
    assert page.is_fifo()


# ------------------------------------------------- g07: plug-in values JSON cannot hold

PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from dataselect.scoring import Scorer

BAD = {"tuple": {(1, 2): 3}, "mixed": {1: 2, "a": 3}}


@dataclass
class Bad(Scorer):
    name: ClassVar[str] = "badjson"
    where: str = "config"
    value: str = "tuple"

    @property
    def local_workers(self):
        return "threads"

    def fit(self, target, pool=None, runner=None):
        self.fingerprint_ = "x"
        if self.where == "fit_stats":
            self.fit_stats_ = BAD[self.value]
        return self

    def score_batch(self, batch):
        return pa.table({"id": batch["id"],
                         "score": pc.utf8_length(batch["text"]).cast(pa.float64())})

    def config(self):
        if self.where == "config":
            return BAD[self.value]
        return {"where": self.where, "value": self.value}
'''


@pytest.fixture
def bad_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from scorers import SCORERS

    (tmp_path / "plugin").mkdir()
    install_distribution(tmp_path / "plugin", monkeypatch, "plug_badjson", PLUGIN,
                         "[dataselect.scorers]\nbadjson = plug_badjson:Bad\n")
    SCORERS.refresh()
    yield
    SCORERS.refresh()


@pytest.mark.parametrize(("where", "value", "method"), [
    ("config", "tuple", "config()"), ("config", "mixed", "config()"),
    ("fit_stats", "tuple", "fit (its fit_stats_)")])
def test_a_plugin_value_json_cannot_hold_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture, bad_plugin: None,
        where: str, value: str, method: str) -> None:
    argv = ["select", "--scorer", "badjson", "-p", f"where={where}", "-p", f"value={value}",
            "--pool", str(_pool(tmp_path)), "--target", str(TARGETS / "fortunes.jsonl"),
            "--out", str(tmp_path / "out"), "--k", "5", "--workers", "1",
            "--worker-kind", "threads"]
    refused_run(argv, capsys, "scorer 'badjson' (plug_badjson.Bad, a plug-in)",
                f"returned from {method} a value that cannot be recorded as JSON")


def test_a_fifo_in_a_model_folder_dataselect_writes_is_not_replaced(tmp_path: Path) -> None:
    """Model folders are saved beside ``out`` and renamed in, name by name: the same rule."""
    from models.lm import staged_folder

    out = tmp_path / "model"
    out.mkdir()
    os.mkfifo(out / "config.json")
    with within(10), pytest.raises(InputError, match=r"config\.json: is not a regular file"), \
            staged_folder(out) as staging:
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"x")
    assert (out / "config.json").is_fifo() and not (out / "model.safetensors").exists()
