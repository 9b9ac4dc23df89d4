"""Leftovers of the sixth hostile probe: Arrow column types Parquet cannot round-trip,
text against bytes across pool files, rows that render blank, targets of blank rows only,
and plug-ins that fail outside ``score_batch`` or register one name twice. Each is one line
on stderr with exit status 2 (naming the file, column or plug-in), never a traceback or a
silently wrong output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS, install_distribution, write_jsonl
from fault_helpers import private_fingerprint_cache, refused, select_errors  # noqa: F401

from pipelines.cli import main


def _select(scorer: str, pool: Path, target: Path, out: Path,
            capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    """``dataselect select --scorer scorer``: exit code and error lines, never a traceback
    (in threads unless ``extra`` says ``--worker-kind``)."""
    kind = [] if "--worker-kind" in extra else ["--worker-kind", "threads"]
    code = main(["select", "--scorer", scorer, "--pool", str(pool), "--target", str(target),
                 "--k", "5", "--out", str(out), "--workers", "1", *kind, *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "\n".join(line for line in err.splitlines() if "error" in line.lower())


def _base(pool_table: pa.Table, start: int, rows: int) -> pa.Table:
    return pool_table.slice(start, rows).select(["id", "text"])


# --- text against bytes across pool files -------------------------------------------------

@pytest.mark.parametrize(("text", "data"), [
    (pa.string(), pa.binary()),
    (pa.large_string(), pa.binary()),
    (pa.string(), pa.large_binary()),
    (pa.list_(pa.string()), pa.list_(pa.binary())),
    (pa.struct([("a", pa.string())]), pa.struct([("a", pa.binary())])),
    (pa.binary(), pa.string()),
    (pa.dictionary(pa.int32(), pa.string()), pa.large_binary()),
    (pa.map_(pa.string(), pa.string()), pa.map_(pa.string(), pa.binary())),
])
def test_text_in_one_pool_file_and_bytes_in_another_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, pool_table: pa.Table,
        text: pa.DataType, data: pa.DataType) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for name, kind, start in (("a", text, 0), ("b", data, 20)):
        values = pa.array([None] * 20, pa.null()).cast(kind)
        pq.write_table(_base(pool_table, start, 20).append_column("x", values),
                       folder / f"{name}.parquet")
    code, errors = select_errors([folder], tmp_path / "out", capsys)
    refused(code, errors, "a.parquet", "b.parquet", "'x'")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


# --- rows that render blank ---------------------------------------------------------------

# text that renders as nothing: Hangul fillers, the blank Braille pattern, combining marks
# with no letter, variation selectors, a tag character, mixed with spaces
INVISIBLE = ["\u3164" * 5, "\u2800" * 5, "\u115f", "\u1160 ", "\uffa0", "\u034f\u034f",
             "\u0301\u0301", "\ufe0f" * 3, "\u20dd", " \u3164\u200b\ufe0f ", "\U000e0041"]
# text that shows something, though some of its characters are invisible
VISIBLE = ["e\u0301", "\u3164a", "\u2764\ufe0f", "\u2801", "\u1100\u1161"]


def _pool_with(tmp_path: Path, records: list[dict], extra: dict[str, list[str]]) -> Path:
    rows = [{"id": r["id"], "text": r["text"]} for r in records]
    rows[3:3] = [{"id": f"{kind}{i}", "text": text}
                 for kind, texts in extra.items() for i, text in enumerate(texts)]
    return write_jsonl(tmp_path / "pool.jsonl", rows)


@pytest.mark.parametrize("scorer", [["dsir"], ["zipfit", "-p", "mode=fast"]])
def test_rows_that_render_blank_are_never_selected(tmp_path: Path, small_records: list[dict],
                                                   scorer: list[str]) -> None:
    out = tmp_path / "out"
    pool = _pool_with(tmp_path, small_records[:20], {"invisible": INVISIBLE,
                                                     "visible": VISIBLE})
    assert main(["select", "--scorer", *scorer, "--pool", str(pool), "--target",
                 str(TARGETS / "python_docs.jsonl"), "--fraction", "1", "--out", str(out),
                 "--workers", "1", "--worker-kind", "threads"]) == 0
    chosen = set(pq.read_table(out)["id"].to_pylist())
    assert not {i for i in chosen if i.startswith("invisible")}
    assert {f"visible{i}" for i in range(len(VISIBLE))} <= chosen
    counts = json.loads((out / ".manifest.json").read_text())["counts"]
    assert counts["filtered"] == {"empty_text": len(INVISIBLE)}


# --- targets of blank rows ----------------------------------------------------------------

@pytest.mark.parametrize("scorer", ["dsir", "fasttext", "zipfit"])
def test_a_target_of_blank_rows_only_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 small_records: list[dict],
                                                 scorer: str) -> None:
    target = write_jsonl(tmp_path / "blank_target.jsonl", [
        {"id": f"b{i}", "text": text} for i, text in enumerate(["   ", "\n\t", "\u200b",
                                                                "\u3164\u0301"])])
    pool = _pool_with(tmp_path, small_records[:20], {})
    code, errors = _select(scorer, pool, target, tmp_path / "out", capsys)
    refused(code, errors, "blank_target.jsonl", "the target has no non-blank rows")


def test_blank_target_rows_are_counted_in_the_fit(tmp_path: Path, small_records: list[dict]
                                                  ) -> None:
    rows = [{"id": r["id"], "text": r["text"]} for r in small_records[20:30]]
    target = write_jsonl(tmp_path / "target.jsonl", [
        *rows, {"id": "b0", "text": " "}, {"id": "b1", "text": "\u2800"}])
    out = tmp_path / "out"
    pool = _pool_with(tmp_path, small_records[:20], {})
    assert main(["select", "--scorer", "dsir", "--pool", str(pool), "--target", str(target),
                 "--k", "5", "--out", str(out), "--workers", "1"]) == 0
    assert json.loads((out / ".manifest.json").read_text())["fit"]["target_rows_blank"] == 2


def test_a_recipe_task_whose_target_is_blank_is_refused(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        small_records: list[dict]) -> None:
    target = write_jsonl(tmp_path / "blank_target.jsonl",
                         [{"id": "b0", "text": "\u3164"}, {"id": "b1", "text": " "}])
    recipe = {"pool": {"paths": str(_pool_with(tmp_path, small_records[:20], {}))},
              "targets": {"code": {"paths": str(target)}},
              "scorers": {"dsir": {"num_buckets": 1000}}, "selection": {"k": 5},
              "output": {"path": str(tmp_path / "out")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))
    assert main(["run", str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "blank_target.jsonl" in err and "the target has no non-blank rows" in err


# --- plug-ins: failures outside score_batch, ids of another type, one name twice ----------

PROBE = '''
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from dataselect.scoring import Scorer


@dataclass
class Probe(Scorer):
    """Longer documents first; fails in the member named by ``fails``."""

    name: ClassVar[str] = "{name}"
    fails: str = ""
    ids: str = "string"

    def _maybe_fail(self, member):
        if self.fails == member:
            raise RuntimeError(member + " boom")

    def __post_init__(self):
        self._maybe_fail("__post_init__")
        if self.fails == "settings":
            raise ValueError("fails must name a member")

    @property
    def local_workers(self):
        self._maybe_fail("local_workers")
        return "threads"

    @property
    def scores_per_target(self):
        self._maybe_fail("scores_per_target")
        return False

    def fit(self, target, pool=None, runner=None):
        self.fingerprint_ = "probe"
        return self

    def fit_fingerprint(self):
        self._maybe_fail("fit_fingerprint")
        return self.fingerprint_

    def score_batch(self, batch):
        length = pc.utf8_length(batch["text"]).cast(pa.float64())
        return pa.table({{"id": batch["id"].cast(self.ids), "score": length}})

    def config(self):
        self._maybe_fail("config")
        return {{"fails": self.fails, "ids": self.ids}}
'''


def _install_probe(root: Path, monkeypatch: pytest.MonkeyPatch, module: str = "plug_probe",
                   name: str = "probe") -> None:
    from scorers import SCORERS

    root.mkdir()
    install_distribution(root, monkeypatch, module, PROBE.format(name=name),
                         f"[dataselect.scorers]\n{name} = {module}:Probe\n")
    SCORERS.refresh()


@pytest.fixture
def fresh_scorers() -> Iterator[None]:
    from scorers import SCORERS

    SCORERS.refresh()
    yield
    SCORERS.refresh()


@pytest.mark.parametrize("member", ["config", "fit_fingerprint", "local_workers",
                                    "scores_per_target", "__post_init__"])
def test_a_plugin_failing_outside_score_batch_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fresh_scorers: None, small_records: list[dict], member: str) -> None:
    _install_probe(tmp_path / "plugin", monkeypatch)
    pool = _pool_with(tmp_path, small_records[:20], {})
    kind = ["--worker-kind", "auto"] if member == "local_workers" else []
    code, errors = _select("probe", pool, TARGETS / "fortunes.jsonl", tmp_path / "out",
                           capsys, "-p", f"fails={member}", *kind)
    refused(code, errors, "scorer 'probe'", f"raised RuntimeError in {member}",
            "the fault is in the plug-in")


def test_a_plugin_refusing_its_settings_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fresh_scorers: None, small_records: list[dict]) -> None:
    _install_probe(tmp_path / "plugin", monkeypatch)
    pool = _pool_with(tmp_path, small_records[:20], {})
    code, errors = _select("probe", pool, TARGETS / "fortunes.jsonl", tmp_path / "out",
                           capsys, "-p", "fails=settings")
    refused(code, errors, "scorer 'probe'", "refused its settings: fails must name a member")


@pytest.mark.parametrize("kind", ["large_string", "string_view"])
def test_a_plugin_returning_its_ids_as_another_string_type_is_accepted(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fresh_scorers: None, small_records: list[dict], kind: str) -> None:
    _install_probe(tmp_path / "plugin", monkeypatch)
    pool = _pool_with(tmp_path, small_records[:20], {})
    out = tmp_path / "out"
    code, errors = _select("probe", pool, TARGETS / "fortunes.jsonl", out, capsys,
                           "-p", f"ids={kind}")
    assert code == 0, errors
    longest = sorted(small_records[:20], key=lambda r: -len(r["text"]))[:5]
    assert set(pq.read_table(out)["id"].to_pylist()) == {r["id"] for r in longest}


def test_one_scorer_name_from_two_distributions_is_refused_naming_both(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fresh_scorers: None, small_records: list[dict]) -> None:
    _install_probe(tmp_path / "a", monkeypatch, "plug_twin_a", "twin")
    _install_probe(tmp_path / "b", monkeypatch, "plug_twin_b", "twin")
    _install_probe(tmp_path / "c", monkeypatch, "plug_other", "other")
    pool = _pool_with(tmp_path, small_records[:20], {})
    code, errors = _select("twin", pool, TARGETS / "fortunes.jsonl", tmp_path / "out", capsys)
    refused(code, errors, "'twin'", "plug-twin-a (plug_twin_a:Probe)",
            "plug-twin-b (plug_twin_b:Probe)")
    code, errors = _select("other", pool, TARGETS / "fortunes.jsonl", tmp_path / "o2", capsys)
    assert code == 0, errors  # the other names still work


@pytest.mark.slow  # listing imports every scorer, torch with the model-based ones
def test_dataselect_scorers_lists_a_name_two_distributions_register_with_its_error(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fresh_scorers: None) -> None:
    _install_probe(tmp_path / "a", monkeypatch, "plug_twin_a", "twin")
    _install_probe(tmp_path / "b", monkeypatch, "plug_twin_b", "twin")
    _install_probe(tmp_path / "c", monkeypatch, "plug_other", "other")
    assert main(["scorers"]) == 0
    listing = capsys.readouterr().out
    assert "twin\n  cannot be listed:" in listing and "plug-twin-b" in listing
    assert "other: Longer documents first" in listing


def test_one_attribution_name_from_two_distributions_is_refused_naming_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attribution import ATTRIBUTIONS
    from dataselect.errors import InputError

    for module in ("plug_attr_a", "plug_attr_b"):
        (tmp_path / module).mkdir()
        install_distribution(tmp_path / module, monkeypatch, module, "",
                             f"[dataselect.attribution]\ntwin = {module}:Method\n")
    ATTRIBUTIONS.refresh()
    try:
        assert "twin" in ATTRIBUTIONS.names()
        with pytest.raises(InputError, match=r"plug-attr-a \(plug_attr_a:Method\) and "
                                             r"plug-attr-b \(plug_attr_b:Method\)"):
            ATTRIBUTIONS["twin"]
    finally:
        ATTRIBUTIONS.refresh()


# --- Arrow column types an output cannot round-trip ---------------------------------------

def _arrow_pool(tmp_path: Path, pool_table: pa.Table, column: pa.Array) -> Path:
    import pyarrow.feather as feather

    path = tmp_path / "typed.arrow"
    feather.write_feather(_base(pool_table, 0, len(column)).append_column("odd", column), path)
    return path


def _dictionary(values: pa.Array, rows: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array([i % len(values) for i in range(rows)],
                                                   pa.int8()), values)


UNSTORABLE = {  # a column Parquet refuses or writes so that no reader opens it
    "fixed_size_list_0": lambda n: pa.array([[]] * n, pa.list_(pa.int64(), 0)),
    "list_of_fixed_size_list_0": lambda n: pa.array([[[]]] * n,
                                                    pa.list_(pa.list_(pa.int64(), 0))),
    "map_to_fixed_size_list_0": lambda n: pa.array(
        [[("k", [])]] * n, pa.map_(pa.string(), pa.list_(pa.int64(), 0))),
    "fixed_size_binary_0": lambda n: pa.array([b""] * n, pa.binary(0)),
    "dictionary_of_structs": lambda n: _dictionary(pa.array([{"a": 1}, {"a": 2}]), n),
    "dictionary_of_lists": lambda n: _dictionary(pa.array([["x"], ["y", "z"]]), n),
}


@pytest.mark.parametrize("case", sorted(UNSTORABLE))
def test_a_column_parquet_cannot_round_trip_is_refused_before_work(
        tmp_path: Path, capsys: pytest.CaptureFixture, pool_table: pa.Table,
        case: str) -> None:
    pool = _arrow_pool(tmp_path, pool_table, UNSTORABLE[case](30))
    out = tmp_path / "out"
    code, errors = select_errors([pool], out, capsys)
    refused(code, errors, "typed.arrow", "'odd'", "Parquet cannot store", "cast or drop",
            "--format arrow")
    assert not list(out.glob("part-*")) and not (out / ".scores").exists()


@pytest.mark.parametrize("case", ["fixed_size_list_0", "dictionary_of_structs"])
def test_the_same_column_is_kept_in_an_arrow_output(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture,
                                                    pool_table: pa.Table, case: str) -> None:
    column = UNSTORABLE[case](30)
    pool = _arrow_pool(tmp_path, pool_table, column)
    code, errors = select_errors([pool], tmp_path / "out", capsys, "--format", "arrow")
    assert code == 0, errors
    import pyarrow.dataset as ds

    kept = ds.dataset(tmp_path / "out", format="arrow").to_table()
    assert kept.num_rows == 5 and kept["odd"].type == column.type


@pytest.mark.parametrize("column", [
    pa.array([1, 2] * 15, pa.timestamp("s")), pa.array([0, 86_400_000] * 15, pa.date64()),
    pa.array([1, 2] * 15, pa.time32("s")), _dictionary(pa.array(["a", "b"], pa.large_string()), 30),
    _dictionary(pa.array([7, 8]), 30), pa.array([[1, 2, 3]] * 30, pa.list_(pa.int64(), 3)),
    pa.array([b"ab"] * 30, pa.binary(2)),
], ids=lambda column: str(column.type))
def test_columns_parquet_keeps_by_their_values_are_written(
        tmp_path: Path, capsys: pytest.CaptureFixture, pool_table: pa.Table,
        column: pa.Array) -> None:
    """Parquet reads some types back another way that holds the same values (seconds as
    milliseconds): those outputs were always written, and still are."""
    code, errors = select_errors([_arrow_pool(tmp_path, pool_table, column)],
                                 tmp_path / "out", capsys)
    assert code == 0, errors
    assert pq.read_table(tmp_path / "out").num_rows == 5


def test_an_extension_type_over_an_unstorable_type_is_refused_too(
        tmp_path: Path, capsys: pytest.CaptureFixture, pool_table: pa.Table) -> None:
    kind = pa.fixed_shape_tensor(pa.int64(), (0,))
    column = pa.ExtensionArray.from_storage(kind, UNSTORABLE["fixed_size_list_0"](30))
    code, errors = select_errors([_arrow_pool(tmp_path, pool_table, column)],
                                 tmp_path / "out", capsys)
    refused(code, errors, "typed.arrow", "'odd'", "Parquet cannot store", "--format arrow")


def test_one_name_registered_twice_by_one_distribution_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        fresh_scorers: None, small_records: list[dict]) -> None:
    from scorers import SCORERS

    (tmp_path / "plugin").mkdir()
    install_distribution(tmp_path / "plugin", monkeypatch, "plug_double",
                         PROBE.format(name="double") + "\n\nclass Other(Probe):\n    pass\n",
                         "[dataselect.scorers]\ndouble = plug_double:Probe\n"
                         "double = plug_double:Other\n")
    SCORERS.refresh()
    pool = _pool_with(tmp_path, small_records[:20], {})
    code, errors = _select("double", pool, TARGETS / "fortunes.jsonl", tmp_path / "out",
                           capsys)
    refused(code, errors, "'double'", "plug-double (plug_double:Other)",
            "plug-double (plug_double:Probe)")
