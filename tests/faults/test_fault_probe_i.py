"""Probe round I (issue 28): files dataselect wrote, edited or swapped afterwards.

Every part a job writes (output parts, score store parts, the ``.stats`` counts, the
``save_to_disk`` shards) records in its own footer the digest of its folder's identity,
its partition and its rows, and a hash of its ids and scores (:mod:`dataselect.footer`).
A resumed job, selection from a score store, ``report``, ``eval`` and ``load_hf`` check
it: a part edited (its scores negated and written back with pyarrow, which keeps schema
metadata), swapped for another job's, or a marker whose identity was edited to other
settings, is one line naming the file, exit 2; ``--overwrite`` computes it again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS
from fault_helpers import (  # noqa: F401 (private_fingerprint_cache: autouse fixture)
    EDITED,
    dsir_select,
    private_fingerprint_cache,
    ran_ok,
    refused_run,
    shipped_pool,
)

from dataselect import select
from dataselect.errors import InputError


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return shipped_pool(tmp_path)


def _rewrite(path: Path, edit) -> None:
    """Read a Parquet part with pyarrow, edit it, write it back as pyarrow does: the schema
    metadata (dataselect's footer with it) is kept."""
    table = edit(pq.read_table(path))
    pq.write_table(table, path, compression="zstd", write_page_checksum=True,
                   store_schema=True)


def _negated(table: pa.Table) -> pa.Table:
    return table.set_column(table.schema.get_field_index("score"), "score",
                            pc.negate(table["score"]))


def _rows(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


# ------------------------------------------------------------ a resumed job checks parts

@pytest.mark.slow
def test_marker_identity_edited_to_other_settings_is_refused_then_overwrite_redoes_it(
        pool, tmp_path, capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    marker = out / ".dataselect.json"
    data = json.loads(marker.read_text())
    data["identity"]["settings"]["k"] = 21
    marker.write_text(json.dumps(data))
    refused_run(dsir_select(pool, out, k=21), capsys, "part-00000.parquet", EDITED,
             "names another job", "--overwrite")
    assert json.loads((out / ".manifest.json").read_text())["counts"]["selected"] == 20
    ran_ok(dsir_select(pool, out, "--overwrite", k=21), capsys)
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["counts"]["written"] == manifest["counts"]["selected"] == 21
    assert manifest["output"]["partitions_reused"] == 0
    assert _rows(out).num_rows == 21


def test_score_part_rewritten_with_negated_scores_is_refused_on_resume(pool, tmp_path,
                                                                        capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    best = _rows(out)["domain"].to_pylist()
    store_part = out / ".scores" / "dsir" / "part-00000.parquet"
    _rewrite(store_part, _negated)
    (out / "part-00000.parquet").unlink()
    (out / ".manifest.json").unlink()
    refused_run(dsir_select(pool, out), capsys, str(store_part), EDITED, "score")
    assert not (out / "part-00000.parquet").exists()
    ran_ok(dsir_select(pool, out, "--overwrite"), capsys)
    assert _rows(out)["domain"].to_pylist() == best  # scored again: the best rows


def test_output_part_cut_short_or_stripped_of_its_footer_is_refused_on_resume(
        pool, tmp_path, capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    part = out / "part-00000.parquet"
    kept = part.read_bytes()
    (out / ".manifest.json").unlink()
    _rewrite(part, lambda table: table.slice(0, 10))  # the footer kept, 10 rows of 20
    refused_run(dsir_select(pool, out), capsys, str(part), EDITED, "rows")
    # without the footer: written by an older version, or by another tool
    table = pq.read_table(part)
    pq.write_table(table.replace_schema_metadata(None), part)
    refused_run(dsir_select(pool, out), capsys, str(part), EDITED, "records no origin")
    part.write_bytes(kept)
    ran_ok(dsir_select(pool, out), capsys)
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["output"]["partitions_reused"] == 1
    assert part.read_bytes() == kept


def test_edited_selection_counts_are_refused_on_resume(pool, tmp_path, capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    stats = out / ".stats" / "part-00000.npz"
    with np.load(stats) as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["selected_counts"] = arrays["selected_counts"] * 2  # a better KL reduction
    with open(stats, "wb") as f:
        np.savez(f, **arrays)
    (out / ".manifest.json").unlink()
    refused_run(dsir_select(pool, out), capsys, str(stats), EDITED)


def test_parts_of_the_same_job_rerun_and_resumed_keep_their_bytes(pool, tmp_path, capsys):
    out, again = tmp_path / "out", tmp_path / "again"
    ran_ok(dsir_select(pool, out), capsys)
    ran_ok(dsir_select(pool, again), capsys)
    names = ["part-00000.parquet", ".scores/dsir/part-00000.parquet",
             ".stats/part-00000.npz"]
    assert all((out / n).read_bytes() == (again / n).read_bytes() for n in names)
    before = {n: (out / n).read_bytes() for n in names}
    for name in names:  # killed before these were written
        (out / name).unlink()
    (out / ".manifest.json").unlink()
    ran_ok(dsir_select(pool, out), capsys)
    assert {n: (out / n).read_bytes() for n in names} == before
    from dataselect.footer import FOOTER_KEY

    footer = json.loads(pq.read_schema(out / names[0]).metadata[FOOTER_KEY])
    assert footer["index"] == 0 and footer["rows"] == 20
    # a selection part holds k rows: every column is hashed, its text too
    assert footer["columns"] == pq.read_schema(out / names[0]).names


# -------------------------------------------------------------- report, eval, load_hf

def test_report_refuses_a_part_swapped_for_another_jobs(pool, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    ran_ok(dsir_select(pool, a), capsys)
    ran_ok(dsir_select(pool, b, k=5, target="fortunes"), capsys)
    shutil.copyfile(b / "part-00000.parquet", a / "part-00000.parquet")
    refused_run(["report", str(a)], capsys, str(a / "part-00000.parquet"), EDITED,
             "names another job")
    assert not (a / ".report").exists()


def test_report_refuses_edited_scores_and_an_unlisted_part(pool, tmp_path, capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out, "--format", "arrow"), capsys)
    store_part = out / ".scores" / "dsir" / "part-00000.parquet"
    kept = store_part.read_bytes()
    _rewrite(store_part, _negated)
    refused_run(["report", str(out)], capsys, str(store_part), EDITED)
    store_part.write_bytes(kept)
    # a rank edited in an output part (Arrow format), its footer kept
    part = out / "part-00000.arrow"
    with pa.OSFile(str(part)) as source:  # read into memory: the file is written over
        table = pa.ipc.open_file(source).read_all()
    table = table.set_column(table.schema.get_field_index("rank"), "rank",
                             pa.array(list(reversed(table["rank"].to_pylist())), pa.int64()))
    with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    refused_run(["report", str(out)], capsys, str(part), EDITED, "rank")
    part.unlink()
    shutil.copyfile(tmp_path / "pool.parquet", out / "part-00001.parquet")
    refused_run(["report", str(out)], capsys, "part-00000.arrow")  # missing
    # the rerun refuses it too, before any work (pass 10, g14): it used to finish the
    # folder with the stray part beside the parts, for report to refuse
    refused_run(dsir_select(pool, out, "--format", "arrow"), capsys,
                str(out / "part-00001.parquet"), "move it away")
    (out / "part-00001.parquet").unlink()
    ran_ok(dsir_select(pool, out, "--format", "arrow"), capsys)
    ran_ok(["report", str(out)], capsys)


@pytest.mark.slow
def test_load_hf_refuses_a_swapped_part_and_a_swapped_shard(pool, tmp_path, capsys):
    from dataselect import load_hf

    a, b = tmp_path / "a", tmp_path / "b"
    ran_ok(dsir_select(pool, a), capsys)
    ran_ok(dsir_select(pool, b, "--save-to-disk", k=5, target="fortunes"), capsys)
    kept = (a / "part-00000.parquet").read_bytes()
    shutil.copyfile(b / "part-00000.parquet", a / "part-00000.parquet")
    with pytest.raises(InputError, match=EDITED):
        load_hf(str(a))
    (a / "part-00000.parquet").write_bytes(kept)
    assert len(load_hf(str(a))) == 20
    shard = a / ".hf" / "data-00000-of-00001.arrow"
    shutil.copyfile(b / ".hf" / "data-00000-of-00001.arrow", shard)
    with pytest.raises(InputError, match=EDITED):
        load_hf(str(a))


# ------------------------------------------------------ selection from a score store

def test_scores_from_a_store_refuse_a_part_of_another_store(pool, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    ran_ok(dsir_select(pool, a), capsys)
    ran_ok(dsir_select(pool, b, target="fortunes"), capsys)
    store = a / ".scores" / "dsir"
    assert select.top_k(str(pool), str(store), 5).num_selected == 5
    shutil.copyfile(b / ".scores" / "dsir" / "part-00000.parquet",
                    store / "part-00000.parquet")
    with pytest.raises(InputError, match=EDITED) as caught:
        select.top_k(str(pool), str(store), 5)
    assert "part-00000.parquet" in str(caught.value)


# ----------------------------------------------------------------------- feature stores

@pytest.mark.slow
def test_index_build_refuses_a_feature_shard_edited_or_of_another_store(tmp_path, capsys):
    from dataselect.features import FeatureStore

    rng = np.random.default_rng(0)
    stores = [FeatureStore.create(tmp_path / name, {"kind": name, "dim": 4, "views": 1})
              for name in ("a", "b")]
    for store in stores:
        store.write_part(0, pa.array(["a", "b", "c"], pa.string()),
                         rng.normal(size=(3, 1, 4)).astype(np.float32))
    mine, theirs = stores
    build = ["index", "build", "--features", mine.folder, "--out", str(tmp_path / "i")]
    kept = {p: Path(p).read_bytes() for p in (mine.matrix_path(0), mine.ids_path(0))}
    matrix = np.load(mine.matrix_path(0))
    np.save(mine.matrix_path(0), -matrix)  # still unit rows, still finite
    refused_run(build, capsys, mine.matrix_path(0), EDITED)
    for name in ("part-00000.npy", "part-00000.ids.parquet"):
        shutil.copyfile(Path(theirs.folder) / name, Path(mine.folder) / name)
    refused_run(build, capsys, mine.ids_path(0), EDITED, "names another job")
    for path, data in kept.items():
        Path(path).write_bytes(data)
    ran_ok(build, capsys)


class _Lengths:
    """A featurizer of text lengths, for a feature store without a model."""

    name = "lengths"
    uses_response_spans = False

    def featurize_batch(self, batch: pa.Table, side: str = "pool") -> np.ndarray:
        n = pc.utf8_length(batch["text"]).to_numpy(zero_copy_only=False).astype(np.float32)
        return np.stack([n, n + 1, np.ones_like(n), 2 * n], axis=1)[:, None, :]

    def feature_description(self, side: str = "pool") -> dict:
        return {"kind": "lengths", "dim": 4, "views": 1}


@pytest.mark.slow
def test_a_feature_job_computes_again_a_shard_it_did_not_write(pool, tmp_path):
    from dataselect.corpus import read_corpus
    from dataselect.featurize import featurize

    corpus, folder = read_corpus(str(pool)), str(tmp_path / "f")
    assert featurize(_Lengths(), corpus, folder)["partitions_computed"] == 1
    matrix = tmp_path / "f" / "part-00000.npy"
    kept = matrix.read_bytes()
    assert featurize(_Lengths(), corpus, folder)["partitions_reused"] == 1
    np.save(matrix, -np.load(matrix))
    assert featurize(_Lengths(), corpus, folder)["partitions_computed"] == 1
    assert matrix.read_bytes() == kept


# ----------------------------------------------------------------------------- recipes

@pytest.mark.slow
def test_a_recipe_part_swapped_between_tasks_is_refused_by_report_and_rerun(tmp_path,
                                                                             capsys):
    import yaml

    rows = [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}"}
            for i in range(40)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"pool": {"paths": str(pool)},
              "targets": {"a": {"paths": str(TARGETS / "python_docs.jsonl")},
                          "b": {"paths": str(TARGETS / "fortunes.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 1000}},
              "selection": {"policy": "top_k", "k": 5},
              "output": {"path": str(tmp_path / "out")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    ran_ok(["run", str(path)], capsys)
    out = tmp_path / "out"
    part = out / "tasks" / "a" / "part-00000.parquet"
    shutil.copyfile(out / "tasks" / "b" / "part-00000.parquet", part)
    refused_run(["report", str(out)], capsys, str(part), EDITED, "names another job")
    (out / ".run.json").unlink()
    refused_run(["run", str(path)], capsys, str(part), EDITED)
    ran_ok(["run", str(path), "--overwrite"], capsys)
    ran_ok(["report", str(out)], capsys)
    union = out / "union" / "part-00000.parquet"
    _rewrite(union, lambda table: table.slice(1))
    refused_run(["report", str(out)], capsys, str(union), EDITED, "rows")
