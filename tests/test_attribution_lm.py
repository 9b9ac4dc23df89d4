"""TRAK, TracIn and BIF on a Hugging Face causal LM: the output function's gradients, and
``dataselect attribute --method trak|tracin|bif`` end to end on the tiny instruction
model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from attribution.ensemble import train_linear_layers
from attribution.output import read_attribution_matrix
from attribution.output_gradients import CausalLMOutput, output_gradients
from dataselect import read_corpus
from models.lm import load_causal_lm, load_tokenizer, tokenize
from pipelines.cli import main

INSTRUCTIONS = Path(__file__).resolve().parent.parent / "data" / "instructions"
PARAMS = ["-p", "proj_dim=32", "-p", "max_length=96", "-p", "batch_size=8"]


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = (INSTRUCTIONS / "train.jsonl").read_text().splitlines()[:24]
    path = tmp_path_factory.mktemp("attr") / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_log_odds_gradients_equal_one_example_at_a_time(instruction_lm: str,
                                                        pool_file: Path) -> None:
    model = load_causal_lm(instruction_lm, torch.device("cpu")).eval()
    train_linear_layers(model)
    corpus = read_corpus(str(pool_file), text="messages")
    view = corpus.scoring_view(corpus.to_table(), response_spans=True).slice(0, 5)
    tokenizer = load_tokenizer(instruction_lm)
    out = CausalLMOutput()
    batched = output_gradients(model, [tokenize(tokenizer, view, 96)], out, 16, 0, "rademacher")
    single = [output_gradients(model, [tokenize(tokenizer, view.slice(i, 1), 96)], out, 16, 0,
                               "rademacher") for i in range(5)]
    torch.testing.assert_close(batched.phi, torch.cat([s.phi for s in single]),
                               rtol=1e-3, atol=1e-4 * float(batched.phi.abs().max()))
    torch.testing.assert_close(batched.p, torch.cat([s.p for s in single]), rtol=1e-4,
                               atol=1e-6)
    assert ((batched.p > 0) & (batched.p < 1)).all()


def _adapter(model_path: str, out: Path, seed: int) -> str:
    """A LoRA adapter with nonzero A and B (a fresh one has B = 0), saved like a checkpoint."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = load_causal_lm(model_path, torch.device("cpu"))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.save_pretrained(str(out))
    return str(out)


def test_lora_members_equal_each_adapter_loaded_alone(instruction_lm: str, pool_file: Path,
                                                      tmp_path: Path) -> None:
    from peft import PeftModel

    from attribution.ensemble import EnsembleSettings, members

    adapters = [_adapter(instruction_lm, tmp_path / f"a{i}", i) for i in range(2)]
    config = EnsembleSettings(instruction_lm, adapters, max_length=96)
    corpus = read_corpus(str(pool_file), text="messages")
    view = corpus.scoring_view(corpus.to_table(), response_spans=True).slice(0, 6)
    tokens = tokenize(load_tokenizer(instruction_lm), view, 96)
    out = CausalLMOutput()
    got = [output_gradients(m, [tokens], out, 16, 0) for m in members(config, torch.device("cpu"))]
    for adapter, grads in zip(adapters, got):
        alone = PeftModel.from_pretrained(load_causal_lm(instruction_lm, torch.device("cpu")),
                                          adapter).eval()
        for name, param in alone.named_parameters():
            param.requires_grad_("lora_" in name)
        expected = output_gradients(alone, [tokens], out, 16, 0)
        torch.testing.assert_close(grads.phi, expected.phi, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got[0].phi, got[1].phi)


def test_cli_attribute_trak_dense_and_top_k(instruction_lm: str, pool_file: Path,
                                            tmp_path: Path) -> None:
    queries = INSTRUCTIONS / "eval" / "define.jsonl"
    common = ["attribute", "--method", "trak", "--pool", str(pool_file), "--queries",
              str(queries), "--text-field", "messages", "-p", f"model={instruction_lm}",
              *PARAMS]
    assert main([*common, "-k", "all", "--out", str(tmp_path / "dense")]) == 0
    matrix, train_ids, query_ids = read_attribution_matrix(tmp_path / "dense")
    assert matrix.dtype == np.float32 and matrix.shape == (24, len(query_ids))
    assert np.isfinite(matrix).all() and np.abs(matrix).max() > 0
    expected = [json.loads(line)["id"] for line in pool_file.read_text().splitlines()]
    assert train_ids == expected
    assert main([*common, "-k", "3", "--out", str(tmp_path / "top.parquet")]) == 0
    rows = pq.read_table(tmp_path / "top.parquet").to_pydict()
    assert len(rows["query_id"]) == 3 * len(query_ids)
    for j, q in enumerate(query_ids):  # the index's top-k is the dense matrix's
        top = np.argsort(-matrix[:, j], kind="stable")[:3]
        got = [t for qq, t in zip(rows["query_id"], rows["train_id"]) if qq == q]
        assert got == [train_ids[i] for i in top]
        scores = [s for qq, s in zip(rows["query_id"], rows["score"]) if qq == q]
        np.testing.assert_allclose(scores, matrix[top, j], rtol=1e-3,
                                   atol=1e-4 * np.abs(matrix).max())


def test_cli_attribute_tracin_weights_checkpoints_by_learning_rate(
        instruction_lm: str, pool_file: Path, tmp_path: Path) -> None:
    """Two LoRA checkpoints recording mean learning rates 3e-4 and 1e-4: the dense TracIn
    matrix is 0.75 and 0.25 of each adapter's own loss-gradient products."""
    from peft import PeftModel

    from attribution.tracin import NegativeLoss

    adapters = [_adapter(instruction_lm, tmp_path / f"a{i}", i) for i in range(2)]
    for adapter, lr in zip(adapters, (3e-4, 1e-4)):
        (Path(adapter) / "checkpoint.json").write_text(json.dumps({"epoch": 1, "mean_lr": lr}))
    queries = INSTRUCTIONS / "eval" / "define.jsonl"
    assert main(["attribute", "--method", "tracin", "--pool", str(pool_file), "--queries",
                 str(queries), "--text-field", "messages", "-p", f"model={instruction_lm}",
                 "-p", f"checkpoints={','.join(adapters)}", *PARAMS, "-k", "all",
                 "--out", str(tmp_path / "dense")]) == 0
    matrix, _, query_ids = read_attribution_matrix(tmp_path / "dense")
    tokenizer = load_tokenizer(instruction_lm)

    def tokens(path: Path) -> list:
        corpus = read_corpus(str(path), text="messages")
        view = corpus.scoring_view(corpus.to_table(), response_spans=True)
        return [tokenize(tokenizer, view.slice(s, 8), 96) for s in range(0, view.num_rows, 8)]

    loss = NegativeLoss(CausalLMOutput())
    expected = 0
    for m, (adapter, weight) in enumerate(zip(adapters, (0.75, 0.25))):
        alone = PeftModel.from_pretrained(load_causal_lm(instruction_lm, torch.device("cpu")),
                                          adapter).eval()
        for name, param in alone.named_parameters():
            param.requires_grad_("lora_" in name)
        train = output_gradients(alone, tokens(pool_file), loss, 32, m).phi
        query = output_gradients(alone, tokens(queries), loss, 32, m).phi
        expected = expected + weight * (train @ query.T).numpy()
    assert matrix.shape == (24, len(query_ids))
    np.testing.assert_allclose(matrix, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_cli_attribute_bif_and_refusals(instruction_lm: str, pool_file: Path,
                                        tmp_path: Path) -> None:
    queries = INSTRUCTIONS / "eval" / "code.jsonl"
    common = ["attribute", "--method", "bif", "--pool", str(pool_file), "--queries",
              str(queries), "--text-field", "messages", "-p", f"model={instruction_lm}",
              "-p", "max_length=96", "-p", "draws=4", "-p", "burn_in=1",
              "-p", "step_size=1e-6"]
    assert main([*common, "-k", "2", "--out", str(tmp_path / "bif.parquet")]) == 0
    rows = pq.read_table(tmp_path / "bif.parquet")
    assert rows.column_names == ["query_id", "rank", "train_id", "score"]
    assert rows.num_rows == 2 * 40
    assert main(["attribute", "--method", "trak", "--index", str(tmp_path), "--queries",
                 str(queries), "--out", str(tmp_path / "x.parquet")]) == 2
    assert main(["attribute", "--method", "less", "--queries", str(queries),
                 "--out", str(tmp_path / "x.parquet")]) == 2


def _attribution_recipe(tmp_path: Path, model: str, **attribution: object) -> Path:
    import yaml

    tasks = ("code", "define")
    recipe = {
        "pool": {"paths": str(INSTRUCTIONS / "train.jsonl"), "text": "messages"},
        "targets": {t: {"paths": str(INSTRUCTIONS / "targets" / f"{t}.jsonl"),
                        "eval": str(INSTRUCTIONS / "eval" / f"{t}.jsonl")} for t in tasks},
        "scorers": {"dsir": {"num_buckets": 5000}},
        "selection": {"policy": "top_k", "k": 12},
        "output": {"path": str(tmp_path / "out")},
        "cluster": {"workers": 1},
        "attribution": {"model": model, "k": 3,
                        "params": {"proj_dim": 32, "max_length": 96}, **attribution},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("method", ["trak", "tracin"])
def test_recipe_attributes_each_tasks_eval_rows_to_its_selection(instruction_lm: str,
                                                                 tmp_path: Path,
                                                                 method: str) -> None:
    """The recipe stage writes what `dataselect attribute --method M` writes for the
    task's selected rows and eval rows, and records it in .run.json."""
    from dataselect.output import read_json
    from pipelines.recipe import load_recipe
    from pipelines.run_recipe import run_recipe

    path = _attribution_recipe(tmp_path, instruction_lm, method=method)
    run = run_recipe(load_recipe(path), str(path))
    out = tmp_path / "out"
    for task in ("code", "define"):
        got = pq.read_table(out / "attribution" / f"{task}.parquet")
        selected = [i for f in sorted((out / "tasks" / task).glob("part-*.parquet"))
                    for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
        queries = INSTRUCTIONS / "eval" / f"{task}.jsonl"
        query_ids = [json.loads(line)["id"] for line in queries.read_text().splitlines()]
        assert set(got["train_id"].to_pylist()) <= set(selected)
        assert got["query_id"].to_pylist() == [q for q in query_ids for _ in range(3)]
        cli = tmp_path / f"{task}-cli.parquet"
        assert main(["attribute", "--method", method, "--pool",
                     *map(str, sorted((out / "tasks" / task).glob("part-*.parquet"))),
                     "--queries", str(queries), "--text-field", "messages", "--id-field", "id",
                     "-p", f"model={instruction_lm}", "-p", "proj_dim=32", "-p",
                     "max_length=96", "-k", "3", "--out", str(cli)]) == 0
        expected = pq.read_table(cli)
        assert got["train_id"].to_pylist() == expected["train_id"].to_pylist()
        np.testing.assert_allclose(got["score"].to_numpy(), expected["score"].to_numpy(),
                                   rtol=1e-5, atol=1e-7)
        assert run["attribution"][task]["path"] == f"attribution/{task}.parquet"
        assert run["attribution"][task]["training_rows"] == len(selected) == 12
    assert read_json(out / ".run.json")["attribution"] == run["attribution"]


def test_recipe_attribution_settings_are_checked_before_any_work(instruction_lm: str,
                                                                 tmp_path: Path) -> None:
    from pipelines.recipe import RecipeError, load_recipe

    path = _attribution_recipe(tmp_path, instruction_lm, params={"ridge": -1})
    with pytest.raises(RecipeError, match=r"attribution\.params\.ridge"):
        load_recipe(path)
    path = _attribution_recipe(tmp_path, instruction_lm, params={"proj_dim": "wide"})
    with pytest.raises(RecipeError, match=r"attribution\.params\.proj_dim"):
        load_recipe(path)
    path = _attribution_recipe(tmp_path, instruction_lm, method="less")
    with pytest.raises(RecipeError, match=r"attribution\.method"):
        load_recipe(path)
    assert not (tmp_path / "out").exists()
