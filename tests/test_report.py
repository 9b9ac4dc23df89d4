"""dataselect report: the page links every plot it wrote, the plots are real PNGs with
labelled axes and titles apart, the numbers on the page are the run's, a select output
gets a report too, and the page renders in headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import POOL_GLOB, TARGETS, instruction_recipe

from dataselect.errors import InputError
from dataselect.outdir import OutputFolder
from dataselect.writer import MANIFEST_FILE
from pipelines import report
from pipelines.evaluate import EvalSettings, run_eval
from pipelines.jobs import SelectJob, run_select_job
from pipelines.recipe import load_recipe
from pipelines.report import check_renders, find_chromium, write_report
from pipelines.run_recipe import run_recipe
from pipelines.summary import plain_console

TASKS = ("code", "translate")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    """Two scorers, two tasks, evaluated: every section of the report has something."""
    root = tmp_path_factory.mktemp("report_run")
    scorers = {"dsir": {"num_buckets": 5000}, "zipfit": {}}
    recipe = {"name": "report-test", **instruction_recipe(root / "out", TASKS, scorers, 40)}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path))
    run_eval(str(root / "out"), EvalSettings(seeds=(0, 1), steps=3, hidden_size=32, layers=1,
                                             heads=2, vocab_size=400, max_length=128,
                                             workers=1))
    return root / "out"


@pytest.mark.slow
def test_page_links_every_plot_and_plots_are_png(evaluated_run):
    page = Path(write_report(str(evaluated_run)))
    text = page.read_text(encoding="utf-8")
    linked = set(re.findall(r'<img src="([^"]+)"', text))
    written = {p.name for p in page.parent.glob("*.png")}
    assert linked == written
    assert {"scores_dsir.png", "scores_zipfit.png", "composition_task.png",
            "kl_reduction.png", "task_overlap.png", "agreement_code.png",
            "agreement_translate.png", "eval_loss.png"} == written
    for name in written:
        assert (page.parent / name).read_bytes()[:8] == PNG_MAGIC


def test_page_shows_the_runs_numbers(evaluated_run):
    page = Path(write_report(str(evaluated_run)))
    text = page.read_text(encoding="utf-8")
    run = yaml.safe_load((evaluated_run / ".run.json").read_text())
    results = yaml.safe_load((evaluated_run / "eval" / "results.json").read_text())
    for task in TASKS:
        kl = run["tasks"][task]["metrics"]["kl_reduction"]
        assert f"<td>{task}</td><td>1600</td><td>1600</td><td>none</td><td>40</td>" \
               f"<td>{kl:.4f}</td>" in text
        loss = results["summary"][task]["loss"]["selected"]
        assert f"{loss['mean']:.4f} ± {loss['std']:.4f}" in text
    assert f"<td>union</td><td></td><td></td><td></td><td>{run['union']['selected']}" in text


def test_rewrite_drops_stale_plots_and_keeps_the_users_files(evaluated_run):
    folder = evaluated_run / "report"
    write_report(str(evaluated_run))  # the page exists, whichever tests ran before
    # a plot an earlier report wrote (and listed) that this one does not write
    OutputFolder.reopen(evaluated_run, ["recipe"]).expect(["report/stale.png"])
    (folder / "stale.png").write_bytes(PNG_MAGIC)
    (folder / "mine.png").write_bytes(PNG_MAGIC)  # the user's own
    write_report(str(evaluated_run))
    assert not (folder / "stale.png").exists()
    assert (folder / "mine.png").read_bytes() == PNG_MAGIC
    (folder / "mine.png").unlink()


def test_report_needs_a_run(tmp_path):
    with pytest.raises(InputError, match=r"no \.run\.json"):
        write_report(str(tmp_path))


@pytest.mark.slow
def test_renders_in_headless_chromium(evaluated_run):
    if find_chromium() is None:
        if os.environ.get("DATASELECT_REQUIRE_BROWSER"):
            pytest.fail("DATASELECT_REQUIRE_BROWSER is set but no Chromium was found")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    page = write_report(str(evaluated_run))
    seen = check_renders(page)
    assert seen == {"images_ok": 8, "images_total": 8}
    # a missing image is caught: the check is not always green
    os.remove(Path(page).parent / "kl_reduction.png")
    assert check_renders(page) == {"images_ok": 7, "images_total": 8}


@pytest.fixture(scope="module")
def selection(tmp_path_factory) -> Path:
    """The demo's selection: DSIR, python_docs as target, 440 of the pool's 3,960 rows."""
    out = tmp_path_factory.mktemp("report_select") / "python_docs"
    run_select_job(SelectJob(scorer="dsir", pool=[POOL_GLOB],
                             target=[str(TARGETS / "python_docs.jsonl")], k=440, out=str(out),
                             workers=1), console=plain_console(file=io.StringIO()))
    return out


def test_report_on_a_select_output(selection):
    page = Path(write_report(str(selection)))
    # hidden in the selection folder, which stays a dataset of exactly the selected rows
    assert page == selection / ".report" / "index.html"
    assert pq.read_table(selection).num_rows == 440
    written = {p.name for p in page.parent.glob("*.png")}
    assert written == {"scores_dsir.png", "composition_domain.png", "kl_reduction.png"}
    assert set(re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8"))) == written
    manifest = json.loads((selection / MANIFEST_FILE).read_text())
    kl = manifest["metrics"]["kl_reduction"]
    assert (f"<td>python_docs</td><td>3960</td><td>3960</td><td>none</td><td>440</td>"
            f"<td>{kl:.4f}</td>") in page.read_text(encoding="utf-8")


def test_report_needs_a_run_or_a_selection(tmp_path):
    with pytest.raises(InputError, match=r"finished `dataselect run` or `dataselect select`"):
        write_report(str(tmp_path))


@pytest.mark.slow
def test_plots_label_their_axes_and_keep_titles_apart(evaluated_run, selection, monkeypatch):
    """Every panel names what its axes show, and no title (a figure's or a panel's) sits
    on another."""
    checked = []
    save = report._save

    def inspect_then_save(fig, folder, name):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            if ax.axison and ax.get_label() != "<colorbar>":
                assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axis"
        panels = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
        for i, box in enumerate(panels):
            assert not any(box.overlaps(other) for other in panels[i + 1:]), name
        for text in fig.texts:  # a figure's title: wholly above every panel's title
            above = text.get_window_extent(renderer).y0
            assert all(above >= box.y1 for box in panels), f"{name}: titles collide"
        checked.append(name)
        return save(fig, folder, name)

    monkeypatch.setattr(report, "_save", inspect_then_save)
    write_report(str(evaluated_run))
    write_report(str(selection))
    assert len(checked) == 8 + 3


def test_select_report_renders_in_headless_chromium(selection):
    if find_chromium() is None:
        if os.environ.get("DATASELECT_REQUIRE_BROWSER"):
            pytest.fail("DATASELECT_REQUIRE_BROWSER is set but no Chromium was found")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    assert check_renders(write_report(str(selection))) == {"images_ok": 3, "images_total": 3}
