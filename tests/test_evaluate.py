"""dataselect eval: the trainings it plans, the metrics against a naive loop, the summary
against hand arithmetic, resume, and an end-to-end run on the instruction mixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import DATA, instruction_recipe

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from pipelines.evaluate import (
    EvalSettings,
    answer_matches,
    plan_trainings,
    run_eval,
    score_held_out,
    summarize_results,
)
from pipelines.recipe import load_recipe
from pipelines.run_recipe import run_recipe

INSTRUCTIONS = DATA / "instructions"
TASKS = ("code", "define")
TINY = {"steps": 4, "hidden_size": 32, "layers": 1, "heads": 2, "vocab_size": 400,
        "batch_size": 4, "max_length": 128, "workers": 2}


@pytest.fixture(scope="module")
def instruction_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_run")
    recipe = instruction_recipe(root / "out", TASKS, {"dsir": {"num_buckets": 5000}}, 40)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path))
    return root / "out"


def test_answer_matches_at_word_boundaries():
    assert answer_matches("list files", " list files\nmore")
    assert answer_matches("ls", "ls -l")
    assert not answer_matches("ls", "lsblk")
    assert not answer_matches("list files", "list file")
    assert not answer_matches("", "anything")
    assert answer_matches("end.", "end.Next")


def test_summary_matches_hand_arithmetic():
    runs = [{"task": "t", "arm": arm, "seed": s, "train_rows": 10, "loss": loss,
             "token_accuracy": acc}
            for arm, s, loss, acc in [("selected", 0, 1.0, 0.5), ("selected", 1, 2.0, 0.7),
                                      ("random", 0, 1.5, 0.4), ("random", 1, 1.8, 0.8)]]
    summary = summarize_results(runs)["t"]
    assert summary["seeds"] == [0, 1]
    loss = summary["loss"]
    assert loss["selected"]["mean"] == 1.5
    assert loss["selected"]["std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    assert loss["difference"]["mean"] == pytest.approx(((1.0 - 1.5) + (2.0 - 1.8)) / 2)
    assert loss["selected_better_seeds"] == 1  # lower loss on seed 0 only
    assert summary["token_accuracy"]["selected_better_seeds"] == 1  # higher on seed 0
    assert "exact_match" not in summary


def test_plan_pairs_selection_with_random_rows_of_the_same_size(instruction_run):
    settings = EvalSettings(seeds=(0, 1), **TINY)
    jobs, base, fresh, _ = plan_trainings(str(instruction_run), settings)
    assert fresh and Path(base, "config.json").exists()
    assert [(j.task, j.arm, j.seed) for j in jobs] == [
        (t, arm, s) for t in TASKS for s in (0, 1) for arm in ("selected", "random")]
    pool_ids = set(read_corpus(str(INSTRUCTIONS / "train.jsonl"), "messages")
                   .to_table()["id"].to_pylist())
    for task in TASKS:
        chosen = [i for f in sorted((instruction_run / "tasks" / task).glob("part-*.parquet"))
                  for i in pq.read_table(f)["id"].to_pylist()]
        mine = [j for j in jobs if j.task == task]
        selected = [j for j in mine if j.arm == "selected"]
        randoms = {j.seed: j.train["id"].to_pylist() for j in mine if j.arm == "random"}
        assert all(sorted(j.train["id"].to_pylist()) == sorted(chosen) for j in selected)
        assert all(len(r) == len(chosen) == 40 for r in randoms.values())
        assert all(set(r) <= pool_ids and len(set(r)) == 40 for r in randoms.values())
        assert randoms[0] != randoms[1]
        lines = (INSTRUCTIONS / "eval" / f"{task}.jsonl").read_text().splitlines()
        held = [json.loads(line)["id"] for line in lines]
        assert all(j.held_out["id"].to_pylist() == held for j in mine)
    again, _, _, _ = plan_trainings(str(instruction_run), settings)
    assert [j.key for j in again] == [j.key for j in jobs]
    assert [j.train["id"].to_pylist() for j in again] == [j.train["id"].to_pylist()
                                                          for j in jobs]


def test_held_out_loss_equals_a_one_row_loop(instruction_lm):
    """Batched, padded scoring gives each row's own mean response-token loss."""
    from models.lm import load_causal_lm, load_tokenizer

    corpus = read_corpus(str(INSTRUCTIONS / "eval" / "define.jsonl"), "messages")
    view = corpus.scoring_view(corpus.to_table(), response_spans=True).slice(0, 12)
    tokenizer = load_tokenizer(instruction_lm)
    model = load_causal_lm(instruction_lm, torch.device("cpu"))
    got = score_held_out(model, tokenizer, view, 128, 5, em_max_tokens=32)
    losses, accuracies = [], []
    for row in view.to_pylist():
        text = row["text"]
        encoded = tokenizer(text, return_offsets_mapping=True, truncation=True,
                            max_length=128)
        ids = encoded["input_ids"]
        span = row["response_spans"][0]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        token_losses, hits = [], []
        for t in range(1, len(ids)):
            start, end = encoded["offset_mapping"][t]
            if end > start and start < span["end"] and end > span["start"]:
                token_losses.append(float(torch.nn.functional.cross_entropy(
                    logits[t - 1:t], torch.tensor([ids[t]]))))
                hits.append(int(logits[t - 1].argmax()) == ids[t])
        losses.append(np.mean(token_losses))
        accuracies.append(np.mean(hits))
    assert got["held_out_rows"] == 12
    assert got["loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    assert got["token_accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    assert 0.0 <= got["exact_match"] <= 1.0  # define answers are short


@pytest.mark.slow
def test_eval_end_to_end_resumes_and_recomputes_on_change(instruction_run):
    report = run_eval(str(instruction_run), EvalSettings(seeds=(0, 1), **TINY))
    assert set(report["summary"]) == set(TASKS)
    assert len(report["runs"]) == 8
    for run in report["runs"]:
        assert run["train_rows"] == 40 and run["steps"] == 4
        assert np.isfinite(run["loss"]) and 0 <= run["token_accuracy"] <= 1
    assert "exact_match" in report["summary"]["define"]  # one-line answers
    assert "exact_match" not in report["summary"]["code"]  # whole functions
    saved = json.loads((instruction_run / "eval" / "results.json").read_text())
    assert saved["summary"] == report["summary"]
    again = run_eval(str(instruction_run), EvalSettings(seeds=(0, 1), **TINY))
    assert again["runs"] == report["runs"]  # read back, not retrained
    more = run_eval(str(instruction_run), EvalSettings(seeds=(0,), **{**TINY, "steps": 5}))
    assert all(r["steps"] == 5 for r in more["runs"])


def test_same_seed_same_model_different_arms_differ(instruction_run):
    """Same seed and rows give the same result; the two arms see different rows."""
    jobs, _, _, _ = plan_trainings(str(instruction_run), EvalSettings(seeds=(3,), **TINY))
    job = jobs[0]
    first = type(job)(**{**job.__dict__, "path": job.path + ".a"})()
    second = type(job)(**{**job.__dict__, "path": job.path + ".b"})()
    assert first["loss"] == second["loss"] and first["token_accuracy"] == second[
        "token_accuracy"]
    other = type(jobs[1])(**{**jobs[1].__dict__, "path": jobs[1].path + ".c"})()
    assert other["loss"] != first["loss"]


def test_bad_settings_are_errors(instruction_run):
    with pytest.raises(InputError, match="seeds repeat"):
        EvalSettings(seeds=(1, 1)).check()
    with pytest.raises(InputError, match="multiple of heads"):
        EvalSettings(hidden_size=30, heads=4).check()
    with pytest.raises(InputError, match="not in the run"):
        plan_trainings(str(instruction_run), EvalSettings(tasks=("nope",), **TINY))


@pytest.mark.slow
def test_cli_eval(instruction_run, capsys):
    from pipelines.cli import main

    code = main(["eval", str(instruction_run), "--seeds", "0", "--steps", "4", "--tasks",
                 "define", "--workers", "1", "-p", "hidden_size=32", "-p", "layers=1",
                 "-p", "heads=2", "-p", "vocab_size=400", "-p", "max_length=128"])
    assert code == 0
    assert "held-out target loss" in capsys.readouterr().out
    assert main(["eval", str(instruction_run), "-p", "nope=1"]) == 2
    assert main(["eval", str(instruction_run), "-p", "seeds=1"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_held_out_rows_past_max_length_are_counted_and_noted(instruction_lm):
    """Rows whose response starts past max_length have no token to score: they were left
    out of the mean with no word (probe 6, E1); now they are counted, and noted."""
    from models.lm import load_causal_lm, load_tokenizer, tokenize
    from pipelines.evaluate import unscored_notes

    corpus = read_corpus(str(INSTRUCTIONS / "eval" / "define.jsonl"), "messages")
    view = corpus.scoring_view(corpus.to_table(), response_spans=True).slice(0, 12)
    tokenizer = load_tokenizer(instruction_lm)
    model = load_causal_lm(instruction_lm, torch.device("cpu"))
    def unscored(length: int) -> int:
        return int((~tokenize(tokenizer, view, length).has_response).sum())

    short = next(n for n in range(8, 256) if 0 < unscored(n) < 12)  # some rows, not all
    without = unscored(short)
    got = score_held_out(model, tokenizer, view, short, 5, em_max_tokens=32)
    assert (got["held_out_rows"], got["held_out_rows_unscored"]) == (12 - without, without)
    runs = [{"task": "define", "arm": arm, **got} for arm in ("selected", "random")]
    assert unscored_notes(runs, short) == [
        f"{without} of the 12 held-out rows of task 'define' have no response token within "
        f"max_length={short} and are not scored; raise -p max_length to score them"]
    assert unscored_notes([{"task": "define", "held_out_rows": 12}], short) == []
