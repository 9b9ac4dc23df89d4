"""The command line end to end on a local Dask cluster, and its errors."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl

from pipelines.cli import main, parse_params


def test_select_on_a_local_cluster_writes_rows_scores_and_manifest(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["select", "--scorer", "dsir", "--pool", POOL_GLOB,
            "--target", str(TARGETS / "licenses.jsonl"), "--k", "300", "--out", str(out),
            "--workers", "2", "--partition-mb", "1", "--seed", "4", "-p", "min_length=5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dataselect select: stages" in printed and "kl_reduction" in printed
    table = pq.read_table(out)
    assert table.num_rows == 300
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["selection"] == {"policy": "importance_resample", "k": 300, "seed": 4}
    assert manifest["scores"]["config"]["min_length"] == 5
    assert manifest["counts"]["rows_in"] == 3960
    assert manifest["counts"]["selected"] == 300
    assert manifest["counts"]["rows_in"] == (manifest["counts"]["eligible"]
                                             + sum(manifest["counts"]["filtered"].values()))
    assert manifest["metrics"]["kl_reduction"] > 0
    stages = [s["stage"] for s in manifest["timings"]["stages"]]
    assert set(stages) >= {"fit:dsir", "score:dsir", "write"}
    # the scoring pass also ranked the rows by this seed's Gumbel keys: no rank pass
    assert "rank:dsir" not in stages and stages.count("fetch:dsir") == 1
    assert [f["bytes"] for f in manifest["inputs"]["pool"]["files"]] == [
        (TARGETS.parent / "pool" / f"part-0000{i}.parquet").stat().st_size for i in range(4)]
    assert len(manifest["inputs"]["target"]["files"][0]["xxh3_128"]) == 32
    assert manifest["versions"]["pyarrow"] and manifest["job"]["seed"] == 4
    assert sorted(p.name for p in (out / ".scores" / "dsir").glob("part-*")) == [
        f"part-{i:05d}.parquet" for i in range(4)]
    # rerunning the same job reuses every part and gives the same selection
    assert main(argv) == 0
    again = json.loads((out / ".manifest.json").read_text())
    assert again["output"]["partitions_reused"] == 4
    assert again["score_store"]["partitions_reused"] == 4
    assert pq.read_table(out).equals(table)
    # another job into the same folder is refused before any work is done
    assert main([*argv[:-2], "-p", "min_length=6"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_score_command_writes_only_the_store(tmp_path):
    out = tmp_path / "out"
    assert main(["score", "--scorer", "dsir", "--pool", POOL_GLOB, "--target",
                 str(TARGETS / "fortunes.jsonl"), "--out", str(out), "--workers", "2",
                 "--worker-kind", "processes"]) == 0
    assert (out / ".scores" / "dsir" / "_manifest.json").exists()
    assert not list(out.glob("part-*"))
    scores = pq.read_table(out / ".scores" / "dsir")
    assert scores.num_rows == 3960 and {"id", "score"} <= set(scores.column_names)


def test_bad_input_is_one_line_naming_file_line_and_field(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"text": "fine"}, {"txt": "typo"}])
    code = main(["select", "--scorer", "dsir", "--pool", str(pool), "--target",
                 str(TARGETS / "fortunes.jsonl"), "--k", "1", "--out", str(tmp_path / "o"),
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pool.jsonl:2" in err or "pool.jsonl:1" in err
    assert "field 'text'" in err


def test_params_are_typed_and_unknown_ones_rejected():
    assert parse_params("dsir", ["num_buckets=20", "length_normalize=true",
                                 "fit_fraction=0.5", "tokenizer=reference"]) == {
        "num_buckets": 20, "length_normalize": True, "fit_fraction": 0.5,
        "tokenizer": "reference"}
    from dataselect.errors import InputError

    assert parse_params("dsir", ["fit_fraction=auto"]) == {"fit_fraction": None}
    with pytest.raises(InputError, match="no parameter 'bucket'"):
        parse_params("dsir", ["bucket=3"])
    with pytest.raises(InputError, match="not a valid int"):
        parse_params("dsir", ["num_buckets=many"])


@pytest.mark.slow
def test_scheduler_flag_runs_the_same_job_on_a_running_cluster(tmp_path, monkeypatch):
    from distributed import LocalCluster

    for name in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        # the foreign cluster's nanny leaves its spawn limits in os.environ; keep them
        # out of later tests in this process
        original = os.environ.get(name)
        monkeypatch.setenv(name, "")  # records the original, restored (or removed) at the end
        if original is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, original)

    argv = ["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target",
            str(TARGETS / "python_docs.jsonl"), "--k", "100", "--partition-mb", "1"]
    assert main([*argv, "--out", str(tmp_path / "local"), "--workers", "2"]) == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        assert main([*argv, "--out", str(tmp_path / "remote"),
                     "--scheduler", cluster.scheduler_address]) == 0
    local = sorted((tmp_path / "local").glob("part-*.parquet"))
    remote = sorted((tmp_path / "remote").glob("part-*.parquet"))
    assert [p.read_bytes() for p in local] == [p.read_bytes() for p in remote]
