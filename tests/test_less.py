"""LESS: warmup checkpoints, gradient features against a naive loop, scoring rule, feature
store resume, the index/attribution commands, and selection quality on data/instructions."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from dataselect import read_corpus
from dataselect.errors import InputError
from dataselect.features import FeatureStore
from dataselect.textspec import TextSpec
from models.lm import load_causal_lm, load_tokenizer, per_example_loss, token_budget_chunks
from models.lm import tokenize as lm_tokenize
from models.lora_checkpoints import load_moments
from models.lora_warmup import WarmupConfig, learning_rate, warmup
from pipelines.cli import main
from scorers.less import Less

INSTRUCTIONS = Path(__file__).resolve().parent.parent / "data" / "instructions"
TASKS = ("code", "define", "summarize", "translate")
PER_TASK = 40
MAX_LENGTH = 512
WARMUP = WarmupConfig(fraction=0.5, epochs=2, rank=8, alpha=32, dropout=0.0, lr=1e-3,
                      batch_size=8, max_length=MAX_LENGTH)


def _rows() -> list[dict]:
    rows = [json.loads(line) for line in (INSTRUCTIONS / "train.jsonl").open()]
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, instruction_lm: str) -> dict:
    """The tiny trained model, a 160-row pool (40 per task) and a two-epoch LoRA warmup on
    half of it."""
    root = tmp_path_factory.mktemp("less")
    rows = _rows()
    pool_rows = [r for task in TASKS for r in [r for r in rows if r["task"] == task][:PER_TASK]]
    pool_file = root / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    model = instruction_lm
    pool = read_corpus(str(pool_file), text="messages")
    checkpoints = warmup(model, pool, str(root / "warm"), WARMUP)
    return {"root": root, "model": model, "pool": pool, "pool_file": pool_file,
            "checkpoints": checkpoints, "rows": pool_rows}


def test_warmup_saves_moments_by_parameter_name_and_mean_lr(setup: dict) -> None:
    checkpoint = Path(setup["checkpoints"][1])
    moments = load_moments(str(checkpoint))
    with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as f:
        adapter_keys = set(f.keys())
    assert set(moments.exp_avg) == adapter_keys == set(moments.exp_avg_sq)
    assert all((v >= 0).all() for v in moments.exp_avg_sq.values())
    assert any(v.abs().sum() > 0 for v in moments.exp_avg.values())
    sample = json.loads((checkpoint / "checkpoint.json").read_text())["sample_rows"]
    per_epoch = -(-sample // WARMUP.batch_size)
    total = 2 * per_epoch
    expected = np.mean([learning_rate(s, total, WARMUP.lr, WARMUP.warmup_ratio)
                        for s in range(per_epoch, total)])
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    assert info["mean_lr"] == pytest.approx(expected)
    assert moments.step == total


def test_learning_rate_schedule_is_linear_warmup_then_decay() -> None:
    rates = [learning_rate(s, 100, 1.0, 0.03) for s in range(100)]
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert rates[3] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(1 / 97)
    assert all(a >= b for a, b in itertools.pairwise(rates[2:]))


def test_warmup_resumes_from_the_last_finished_epoch(setup: dict, tmp_path: Path) -> None:
    folder = tmp_path / "warm"
    shutil.copytree(Path(setup["checkpoints"][0]).parent, folder)
    shutil.rmtree(folder / "epoch-2")
    resumed = warmup(setup["model"], setup["pool"], str(folder), WARMUP)
    for name in ("adapter_model.safetensors", "moments.safetensors"):
        with safe_open(str(Path(setup["checkpoints"][1]) / name), framework="pt") as a, \
                safe_open(str(Path(resumed[1]) / name), framework="pt") as b:
            for key in a.keys():  # noqa: SIM118
                torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key),
                                           rtol=1e-5, atol=1e-7)


def test_moments_are_written_with_a_header_in_one_order(setup: dict) -> None:
    """safetensors wrote the moments' metadata in a hash map's order, which changes with
    each process: a resumed warmup's file differed in bytes from an uninterrupted run's
    (pass 21, wu01). The header is written with its keys sorted, so any process writes
    the same bytes for the same tensors."""
    import json

    raw = (Path(setup["checkpoints"][0]) / "moments.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + length]
    parsed = json.loads(header)
    assert header.rstrip(b" ") == json.dumps(parsed, sort_keys=True,
                                             separators=(",", ":")).encode()
    assert set(parsed["__metadata__"]) == {"beta1", "beta2", "eps", "step"}


def test_warmup_and_adapter_loading_print_no_deprecation_of_peft_s_own(
        setup: dict, tmp_path: Path) -> None:
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: the FutureWarning
    was printed on every LESS and BADS run (pass 18 note)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = warmup(setup["model"], setup["pool"], str(tmp_path / "warm"), WARMUP)
        folder = tmp_path / "resumed"
        shutil.copytree(Path(fresh[0]).parent, folder)
        shutil.rmtree(folder / "epoch-2")
        warmup(setup["model"], setup["pool"], str(folder), WARMUP)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_warmup_refuses_a_folder_with_other_settings(setup: dict, tmp_path: Path) -> None:
    from dataselect.errors import OutputConflictError

    shutil.copytree(Path(setup["checkpoints"][0]).parent, tmp_path / "warm")
    other = WarmupConfig(**{**WARMUP.__dict__, "lr": 5e-4})
    with pytest.raises(OutputConflictError, match="other settings"):
        warmup(setup["model"], setup["pool"], str(tmp_path / "warm"), other)


def _naive_features(setup: dict, view: pa.Table, checkpoint: str, adam: bool, dim: int,
                    projection: str = "sparse") -> np.ndarray:
    """One example at a time: backward, read p.grad, precondition in float64, project with
    the explicit matrix of the scorer's projection (``matrix()``), normalise."""
    from peft import PeftModel

    from models.lora_checkpoints import canonical_name
    from models.projection import make_projection

    tokenizer = load_tokenizer(setup["model"])
    model = PeftModel.from_pretrained(load_causal_lm(setup["model"], torch.device("cpu")),
                                      checkpoint)
    model.eval()
    params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for _, p in params:
        p.requires_grad_(True)
    moments = load_moments(checkpoint)
    matrix = make_projection(projection, [p.numel() for _, p in params], dim, 0).matrix().double()
    out = []
    for row in range(view.num_rows):
        tokens = lm_tokenize(tokenizer, view.slice(row, 1), MAX_LENGTH)
        model.zero_grad()
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
        per_example_loss(logits, tokens).sum().backward()
        pieces = []
        for name, p in params:
            g = p.grad.double()
            if adam:
                key = canonical_name(name, "default")
                m = 0.9 * moments.exp_avg[key].double() + 0.1 * g
                v = 0.999 * moments.exp_avg_sq[key].double() + 0.001 * g**2
                g = m / (v.sqrt() + 1e-8)
            pieces.append(g.flatten())
        vector = torch.cat(pieces) @ matrix
        out.append((vector / vector.norm()).numpy())
    return np.stack(out)


@pytest.mark.parametrize(("adam", "projection"),
                         [(True, "sparse"), (False, "sparse"), (True, "rademacher")])
def test_batched_features_equal_one_example_at_a_time(setup: dict, adam: bool,
                                                      projection: str) -> None:
    scorer = Less(setup["model"], setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH,
                  batch_size=4, projection=projection)
    table = setup["pool"].read_partition(0).slice(0, 6)
    view = setup["pool"].scoring_view(table, response_spans=True)
    batched = scorer.featurize_batch(view, "pool" if adam else "query")
    for c, checkpoint in enumerate(setup["checkpoints"]):
        naive = _naive_features(setup, view, checkpoint, adam, 64, projection)
        np.testing.assert_allclose(batched[:, c], naive, atol=2e-4)


@pytest.mark.parametrize("max_rows", [1, 3, 8])
@pytest.mark.parametrize("max_tokens", [1, 50, 400, 10**6])
def test_token_budget_chunks_bound_rows_and_padded_tokens(max_rows: int, max_tokens: int
                                                          ) -> None:
    lengths = np.random.default_rng(max_rows + max_tokens).integers(1, 200, size=37)
    chunks = token_budget_chunks(lengths, max_rows, max_tokens)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(37))  # every row once
    for chunk in chunks:
        assert len(chunk) <= max_rows
        assert len(chunk) == 1 or len(chunk) * lengths[chunk].max() <= max_tokens
    # greedy: no chunk could have taken the next row (shortest first) within both bounds
    for chunk, following in itertools.pairwise(chunks):
        grown = np.append(chunk, following[0])
        assert len(grown) > max_rows or len(grown) * lengths[grown].max() > max_tokens
    flat = lengths[np.concatenate(chunks)]
    assert (np.diff(flat) >= 0).all()  # shortest first, so chunks pad little


def test_token_budget_splits_backward_passes_without_changing_features(
        setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.gradients import LinearGradients

    table = setup["pool"].read_partition(0).slice(0, 6)
    view = setup["pool"].scoring_view(table, response_spans=True)
    passes: list[int] = []
    original = LinearGradients.per_example

    def counted(self: LinearGradients, batch_size: int, run_forward: object) -> dict:
        passes.append(batch_size)
        return original(self, batch_size, run_forward)

    monkeypatch.setattr(LinearGradients, "per_example", counted)
    whole = Less(setup["model"], setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH,
                 batch_size=8, max_batch_tokens=10**6).featurize_batch(view)
    assert passes == [6] * len(setup["checkpoints"])
    passes.clear()
    alone = Less(setup["model"], setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH,
                 batch_size=8, max_batch_tokens=1).featurize_batch(view)
    assert passes == [1] * 6 * len(setup["checkpoints"])  # every row in its own pass
    np.testing.assert_allclose(alone, whole, atol=2e-5)


def test_sparse_projection_projects_every_backward_batch_cached_or_not(
        setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import scorers.less as less_module

    table = setup["pool"].read_partition(0).slice(0, 7)
    view = setup["pool"].scoring_view(table, response_spans=True)
    scorer = Less(setup["model"], setup["checkpoints"], proj_dim=32, max_length=MAX_LENGTH,
                  batch_size=2)
    worker = less_module._gradient_model(scorer)
    assert worker.projection.cache and worker.rows_per_projection(2) == 2
    cached = scorer.featurize_batch(view)
    # only the first chunk's indices fit: the others are rehashed on every call
    first = 4 * worker.projection.nonzeros * worker.projection.plan[0][2]
    monkeypatch.setattr(less_module, "PROJECTION_CACHE_BYTES", first)  # part of the model key
    worker = less_module._gradient_model(scorer)
    assert worker.projection.cached_chunks == {0} and not worker.projection.cache
    assert worker.rows_per_projection(2) == 2  # still one backward batch per call
    np.testing.assert_allclose(scorer.featurize_batch(view), cached, atol=1e-6)


def test_feature_stores_refuse_features_of_another_projection(setup: dict, tmp_path: Path
                                                              ) -> None:
    from dataselect.errors import OutputConflictError

    sparse = Less(setup["model"], setup["checkpoints"], proj_dim=32)
    dense = Less(setup["model"], setup["checkpoints"], proj_dim=32, projection="rademacher",
                 device="cpu")
    assert sparse.config()["projection"] == "sparse"
    assert dense.config()["projection"] == "rademacher"
    # the sparse matrix is the same on every device; the dense one is not
    assert "device" not in sparse.feature_description()
    assert dense.feature_description()["device"] == "cpu"
    FeatureStore.create(tmp_path / "feats", sparse.feature_description())
    with pytest.raises(OutputConflictError, match="projection"):
        FeatureStore.create(tmp_path / "feats", dense.feature_description())
    with pytest.raises(InputError, match="projection must be one of"):
        Less(setup["model"], setup["checkpoints"], projection="gaussian")


def test_uncached_projection_buffers_rows_and_gives_the_same_features(
        setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import scorers.less as less_module

    table = setup["pool"].read_partition(0).slice(0, 7)
    view = setup["pool"].scoring_view(table, response_spans=True)
    scorer = Less(setup["model"], setup["checkpoints"], proj_dim=32, max_length=MAX_LENGTH,
                  batch_size=2, projection="rademacher")
    cached = scorer.featurize_batch(view)
    monkeypatch.setattr(less_module, "PROJECTION_CACHE_BYTES", 0)  # part of the model key
    worker = less_module._gradient_model(scorer)
    assert not worker.projection.cache
    monkeypatch.setattr(less_module, "PROJECTION_BUFFER_BYTES",
                        5 * 4 * worker.projection.input_dim)
    assert worker.rows_per_projection(2) == 5  # 3 backward batches per projection call
    np.testing.assert_allclose(scorer.featurize_batch(view), cached, atol=1e-5)


def test_score_is_max_over_subtasks_of_mean_lr_weighted_cosine(setup: dict) -> None:
    target = read_corpus(str(INSTRUCTIONS / "targets" / "translate.jsonl"), text="messages")
    scorer = Less(setup["model"], setup["checkpoints"], proj_dim=128,
                  max_length=MAX_LENGTH).fit(target)
    table = setup["pool"].read_partition(0).slice(0, 12)
    view = setup["pool"].scoring_view(table, response_spans=True)
    scores = scorer.score_batch(view)
    pool_features = scorer.featurize_batch(view, "pool").astype(np.float64)
    target_ids, target_features = scorer.target_features()
    subtask = {json.loads(line)["id"]: json.loads(line)["subtask"]
               for line in (INSTRUCTIONS / "targets" / "translate.jsonl").open()}
    weights = scorer.weights
    expected = []
    for x in pool_features:
        per_subtask = {}
        for tid, t in zip(target_ids, target_features):
            influence = sum(weights[c] * x[c] @ t[c] for c in range(len(weights)))
            per_subtask.setdefault(subtask[tid], []).append(influence)
        expected.append(max(np.mean(v) for v in per_subtask.values()))
    assert len(scorer.subtasks_) == len(set(subtask.values())) > 1
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-4, atol=1e-7)


def test_rows_whose_response_is_cut_off_are_filtered_not_scored(setup: dict) -> None:
    target = read_corpus(str(INSTRUCTIONS / "targets" / "define.jsonl"), text="messages")
    scorer = Less(setup["model"], setup["checkpoints"][:1], proj_dim=32, max_length=64)
    scorer.fit(target)
    long_prompt = [{"role": "user", "content": "word " * 200},
                   {"role": "assistant", "content": "an answer"}]
    short = [{"role": "user", "content": "Define x."}, {"role": "assistant", "content": "y"}]
    view = pa.table({"id": ["long", "short"], "messages": [long_prompt, short]})
    spec = TextSpec.parse("messages")
    batch = pa.table({"id": view["id"], "text": spec.render(view, str),
                      "response_spans": spec.response_spans(view, str)})
    scores = scorer.score_batch(batch)
    assert scores["filtered_by"].to_pylist() == ["no_response_tokens", None]
    assert np.isnan(scores["score"][0].as_py()) and np.isfinite(scores["score"][1].as_py())


def test_a_target_cut_off_entirely_is_an_error_naming_the_row(setup: dict) -> None:
    target = read_corpus(str(INSTRUCTIONS / "targets" / "code.jsonl"), text="messages")
    scorer = Less(setup["model"], setup["checkpoints"][:1], proj_dim=32, max_length=8)
    with pytest.raises(InputError, match=r"code\.jsonl:1.*raise max_length"):
        scorer.fit(target)


def test_checkpoint_without_moments_is_refused_with_the_reason(setup: dict, tmp_path: Path
                                                               ) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(setup["checkpoints"][0], broken)
    (broken / "moments.safetensors").unlink()
    with pytest.raises(InputError, match=r"moments\.safetensors is missing.*Adam moments"):
        Less(setup["model"], [str(broken)])
    with pytest.raises(InputError, match="model folder not found"):
        Less(str(tmp_path / "nope"), setup["checkpoints"])


def test_scoring_through_the_feature_store_resumes_and_matches(setup: dict, tmp_path: Path
                                                               ) -> None:
    target = read_corpus(str(INSTRUCTIONS / "targets" / "summarize.jsonl"), text="messages")
    pool = read_corpus(str(setup["pool_file"]), text="messages", partition_bytes=20_000)
    assert pool.npartitions >= 3
    direct = Less(setup["model"], setup["checkpoints"], proj_dim=64,
                  max_length=MAX_LENGTH).fit(target)
    stored = Less(setup["model"], setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH,
                  features=str(tmp_path / "feats")).fit(target)
    first = stored.score(pool).write(tmp_path / "s1")
    store = FeatureStore.open(tmp_path / "feats")
    assert store.parts() == list(range(pool.npartitions))
    Path(store.ids_path(1)).unlink()
    again = stored.score(pool).write(tmp_path / "s2")
    assert store.parts() == list(range(pool.npartitions))
    for index in range(pool.npartitions):
        a, b = first.partition(index), again.partition(index)
        assert a["id"].equals(b["id"])
        np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy())
        view = pool.scoring_view(pool.read_partition(index), response_spans=True)
        # stored features are float16: scores agree with the direct ones to ~1e-3 relative
        np.testing.assert_allclose(a["score"].to_numpy(),
                                   direct.score_batch(view)["score"].to_numpy(),
                                   rtol=2e-2, atol=2e-3 * direct.weights.sum())


def test_less_picks_the_target_task_far_above_chance(setup: dict) -> None:
    """Top-40 of the 160-row pool for each task's 10 held-out examples. Chance is 0.25;
    measured 0.60 / 0.45 / 0.50 / 0.53 (code / define / summarize / translate)."""
    table = setup["pool"].read_partition(0)
    view = setup["pool"].scoring_view(table, response_spans=True)
    task = dict(zip(table["id"].to_pylist(), table["task"].to_pylist()))
    precision = {}
    for name in TASKS:
        target = read_corpus(str(INSTRUCTIONS / "targets" / f"{name}.jsonl"), text="messages")
        scorer = Less(setup["model"], setup["checkpoints"], proj_dim=512,
                      max_length=MAX_LENGTH).fit(target)
        scores = scorer.score_batch(view)
        top = np.argsort(-scores["score"].to_numpy())[:PER_TASK]
        precision[name] = np.mean([task[scores["id"][i].as_py()] == name for i in top])
    assert min(precision.values()) >= 0.4, precision
    assert np.mean(list(precision.values())) >= 0.45, precision


def test_cli_features_index_attribute(setup: dict, tmp_path: Path) -> None:
    params = ["-p", f"model={setup['model']}", "-p",
              "checkpoints=" + ",".join(setup["checkpoints"]), "-p", "proj_dim=64",
              "-p", f"max_length={MAX_LENGTH}"]
    feats, index, out = tmp_path / "feats", tmp_path / "index", tmp_path / "attr.parquet"
    assert main(["features", "--scorer", "less", "--input", str(setup["pool_file"]),
                 "--text-field", "messages", "--out", str(feats), "--workers", "1",
                 *params]) == 0
    assert main(["index", "build", "--features", str(feats), "--out", str(index)]) == 0
    queries = INSTRUCTIONS / "targets" / "define.jsonl"
    assert main(["attribute", "--scorer", "less", "--index", str(index), "--queries",
                 str(queries), "--text-field", "messages", "-k", "5", "--out", str(out),
                 *params]) == 0
    rows = pq.read_table(out)
    assert rows.column_names == ["query_id", "rank", "train_id", "score"]
    assert rows.num_rows == 10 * 5
    assert set(rows["train_id"].to_pylist()) <= {r["id"] for r in setup["rows"]}
    # the top score equals LESS's influence sum computed directly from the features
    scorer = Less(setup["model"], setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH)
    store = FeatureStore.open(feats)
    ids, pool_features = store.read_part(0)
    qcorpus = read_corpus(str(queries), text="messages")
    qview = qcorpus.scoring_view(qcorpus.read_partition(0), response_spans=True)
    query = scorer.featurize_batch(qview, "query")[0]
    influence = np.einsum("ncd,cd->nc", pool_features.astype(np.float32), query) @ scorer.weights
    first = rows.filter(pc.equal(rows["query_id"], qview["id"][0]))
    assert first["train_id"][0].as_py() == ids[int(np.argmax(influence))].as_py()
    assert first["score"][0].as_py() == pytest.approx(influence.max(), rel=1e-3)
    # queries made with other settings are refused
    other = ["-p", f"model={setup['model']}", "-p", "checkpoints=" + setup["checkpoints"][0],
             "-p", "proj_dim=64", "-p", f"max_length={MAX_LENGTH}"]
    assert main(["attribute", "--scorer", "less", "--index", str(index), "--queries",
                 str(queries), "--text-field", "messages", "--out", str(out), *other]) == 2


def test_checkpoint_json_has_one_reader_for_less_and_tracin(tmp_path):
    from attribution.ensemble import checkpoint_learning_rate
    from models.lora_checkpoints import INFO_FILE, MOMENTS_FILE, read_info

    assert checkpoint_learning_rate(str(tmp_path)) is None  # no file: equal weights
    (tmp_path / INFO_FILE).write_text('{"epoch": 1, "mean_lr": 0.0003}')
    assert checkpoint_learning_rate(str(tmp_path)) == 0.0003
    for broken in ("{not json", "[1, 2]"):
        (tmp_path / INFO_FILE).write_text(broken)
        with pytest.raises(InputError, match=r"checkpoint\.json"):
            checkpoint_learning_rate(str(tmp_path))
        for name in ("adapter_config.json", MOMENTS_FILE):
            (tmp_path / name).write_text("{}")
        with pytest.raises(InputError, match=r"checkpoint\.json"):
            read_info(str(tmp_path))


def test_checkpoints_are_refused_with_another_base_model(setup: dict, tmp_path) -> None:
    """Pass 18 g11: LoRA checkpoints load onto any model of the same shape, so LESS (and
    TracIn) scored with a model edited after the warmup, exit 0. Each checkpoint records
    its base model's digest (names, sizes and content hashes of its files), and a reader
    refuses another; a byte-identical copy elsewhere is the same model."""
    from safetensors.torch import load_file, save_file

    from models.lm import model_digest

    recorded = json.loads((Path(setup["checkpoints"][0]) / "checkpoint.json").read_text())
    assert recorded["base_model"] == model_digest(setup["model"])
    copy = tmp_path / "copy"
    shutil.copytree(setup["model"], copy)
    Less(str(copy), setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH)  # accepted
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(copy / "model.safetensors"))
    with pytest.raises(InputError, match="trained on another base model"):
        Less(str(copy), setup["checkpoints"], proj_dim=64, max_length=MAX_LENGTH)


def test_a_checkpoint_listed_twice_is_refused(setup: dict) -> None:
    """Pass 18 note: a checkpoint listed twice counted twice (its view weighed double)."""
    first = setup["checkpoints"][0]
    with pytest.raises(InputError, match="listed more than once"):
        Less(setup["model"], [first, first + "/"], proj_dim=64,
             max_length=MAX_LENGTH)


def test_tracin_refuses_a_checkpoint_listed_twice_or_of_another_model(setup: dict,
                                                                       tmp_path) -> None:
    """The same two rules for the checkpoint ensembles (TracIn, TRAK, BIF)."""
    from safetensors.torch import load_file, save_file

    from attribution.tracin import TracInAttribution, TracInSettings

    first = setup["checkpoints"][0]
    TracInAttribution(TracInSettings(setup["model"], [first]))
    with pytest.raises(InputError, match="listed more than once"):
        TracInAttribution(TracInSettings(setup["model"], [first, first + "/"]))
    edited = tmp_path / "edited"
    shutil.copytree(setup["model"], edited)
    weights = load_file(str(edited / "model.safetensors"))
    name = sorted(weights)[0]
    save_file({**weights, name: weights[name] * 2 + 1}, str(edited / "model.safetensors"))
    with pytest.raises(InputError, match="trained on another base model"):
        TracInAttribution(TracInSettings(str(edited), [first]))
