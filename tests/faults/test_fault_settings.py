"""Bad settings: every flag, API argument, -p parameter and recipe key out of its range is
one error naming the setting and the range, before any work; never a traceback, never a
silently empty or wrong selection. Seeds cover 64 bits and distinct seeds draw differently,
while seeds below 2**48 draw exactly as they always did."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import POOL_GLOB, TARGETS, write_jsonl
from scoring_helpers import FixedScorer

from dataselect import read_corpus, select
from dataselect.checks import SettingError
from dataselect.errors import InputError
from dataselect.sampling import SAMPLE_STREAM, id_hashes, sample_mask, uniform
from models.lora_warmup import WarmupConfig
from pipelines.cli import main, parse_params
from pipelines.evaluate import EvalSettings
from pipelines.jobs import SelectJob
from pipelines.recipe import RecipeError, load_recipe
from pipelines.recipe_yaml import MAX_ALIASES
from scorers.bads.scorer import Bads
from scorers.dsir import DSIR
from scorers.embed import Embed
from scorers.fasttext.scorer import FastText
from scorers.less import Less
from scorers.zipfit.scorer import ZipFit

TARGET = str(TARGETS / "python_docs.jsonl")
NAN, INF = math.nan, math.inf


# ------------------------------------------------------------------ command-line flags

def _select_argv(out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target", TARGET,
            "--out", str(out), *extra]


# (command words, flag, bad value); the rest of each command line is valid
BAD_FLAGS = [
    *[("select", "--k", v) for v in ("0", "-5", "1.5", "true", "1e3")],
    *[("select", "--fraction", v) for v in ("0", "1.5", "nan", "-0.1")],
    *[("select", "--threshold", v) for v in ("nan", "inf", "-inf")],
    *[("select", "--metrics-sample", v) for v in ("-1", "0", "nan", "1.5")],
    *[("select", "--partition-mb", v) for v in ("nan", "inf", "0", "-1")],
    *[("select", "--seed", v) for v in ("-1", str(2**64), "0.5")],
    ("select", "--workers", "0"), ("select", "--memory-limit", "2"),
    ("select", "--memory-limit", "nan"), ("score", "--seed", "-1"),
    ("features", "--partition-mb", "0"), ("features", "--workers", "-2"),
    ("index build", "--nlist", "0"), ("index build", "--nprobe", "0"),
    ("index build", "--hnsw-m", "1"),  # FAISS segfaults at M=1
    ("index search", "-k", "0"), ("attribute", "-k", "0"), ("run", "--workers", "0"),
    ("eval", "--steps", "0"), ("eval", "--seeds", "0,-1"), ("eval", "--seeds", str(2**64)),
    ("eval", "--workers", "0"),
]


def _argv(command: str, flag: str, value: str, tmp_path: Path) -> list[str]:
    out = str(tmp_path / "out")
    rest = {
        "select": _select_argv(tmp_path / "out", *([] if flag in ("--k", "--fraction",
                                                                  "--threshold") else
                                                   ["--k", "5"]))[1:],
        "score": ["--scorer", "dsir", "--pool", POOL_GLOB, "--target", TARGET, "--out", out],
        "features": ["--scorer", "less", "--input", POOL_GLOB, "--out", out],
        "index build": ["--features", out, "--out", out],
        "index search": ["--index", out, "--queries", out, "--out", out],
        "attribute": ["--scorer", "less", "--index", out, "--queries", TARGET, "--out", out],
        "run": ["recipe.yaml"], "eval": [out],
    }[command]
    # "--flag=value" keeps argparse from reading "-inf" as an option; -k takes a token
    value_args = [f"{flag}={value}"] if flag.startswith("--") else [flag, value]
    return [*command.split(), *rest, *value_args]


@pytest.mark.parametrize(("command", "flag", "value"), BAD_FLAGS)
def test_bad_flag_values_exit_2_naming_the_flag_and_range(command, flag, value, tmp_path,
                                                          capsys):
    with pytest.raises(SystemExit) as info:
        main(_argv(command, flag, value, tmp_path))
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"dataselect {command}: error: argument {flag}: must be "), last
    assert any(word in last for word in ("integer", "number", "share")), last
    assert not (tmp_path / "out").exists()


def test_a_nan_threshold_no_longer_selects_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_select_argv(tmp_path / "out", "--threshold", "nan"))
    assert "argument --threshold: must be a finite number, got 'nan'" in capsys.readouterr().err


@pytest.mark.parametrize(("param", "words"), [
    ("smoothing=nan", "'smoothing': must be a finite number"),
    ("smoothing=inf", "'smoothing': must be a finite number"),
    ("smoothing=-1", "'smoothing': must be a finite number >= 0"),
    ("num_buckets=1.0", "'num_buckets': '1.0' is not a valid int"),
    ("num_buckets=true", "'num_buckets': 'true' is not a valid int"),
    ("num_buckets=0", "'num_buckets': must be an integer in [1, 2**28]"),
    ("ngram=0", "'ngram': must be an integer in [1, 16]"),
    ("fit_fraction=nan", "'fit_fraction': must be a finite number"),
    ("fit_fraction=0", "'fit_fraction': must be a finite number in (0, 1]"),
    ("fit_sample_mb=0", "'fit_sample_mb': must be a finite number > 0"),
    ("min_length=-1", "'min_length': must be an integer >= 0"),
    ("seed=-1", "'seed': must be an integer in [0, 2**64 - 1]"),
])
def test_bad_scorer_params_are_one_line_errors(param, words, tmp_path, capsys):
    code = main(_select_argv(tmp_path / "out", "--k", "5", "-p", param))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dataselect: error: field "), err
    assert words in err


def test_param_floats_are_finite_and_ints_are_written_as_ints():
    assert parse_params("dsir", ["smoothing=0.5", "num_buckets=7"]) == {
        "smoothing": 0.5, "num_buckets": 7}
    for bad in ("smoothing=nan", "smoothing=-inf", "num_buckets=7.0", "num_buckets=yes"):
        with pytest.raises(InputError) as info:
            parse_params("dsir", [bad])
        assert info.value.field == bad.split("=")[0]


# ------------------------------------------------------------------ scorer settings

NO_MODEL = "/nonexistent/model"  # numbers are checked before the model folder


@pytest.mark.parametrize(("make", "field", "values"), [
    (DSIR, "num_buckets", (0, -1, True, 2**28 + 1)),
    (DSIR, "ngram", (0, 17, True)),
    (DSIR, "smoothing", (-1, NAN, INF, True)),
    (DSIR, "fit_fraction", (0, 1.5, NAN, True)),
    (DSIR, "fit_sample_mb", (0, -1, NAN, INF)),
    (DSIR, "min_length", (-1, 2**63, True)),
    (DSIR, "seed", (-1, 2**64, True)),
    (ZipFit, "target_sample", (0, -1, True)),
    (ZipFit, "level", (-(2**31), 2**31)),  # lz4 overflowed at -2**31 while scoring
    (ZipFit, "seed", (-1, 2**64)),
    (FastText, "lr", (0, -1, NAN, INF)),
    (FastText, "dim", (0, 2**31, True)),
    (FastText, "negatives", (0, True)),
    (FastText, "seed", (-1, 2**31)),  # fastText's seed is a C int
    (lambda **kw: Less(model=NO_MODEL, **kw), "proj_dim", (0, 2**20 + 1, True)),
    (lambda **kw: Less(model=NO_MODEL, **kw), "max_length", (1, True)),
    (lambda **kw: Less(model=NO_MODEL, **kw), "seed", (-1, 2**64)),
    (lambda **kw: Embed(model=NO_MODEL, **kw), "batch_size", (0, True)),
    (lambda **kw: Bads(model=NO_MODEL, **kw), "rho_theta_train", (NAN, -1)),
    (lambda **kw: Bads(model=NO_MODEL, **kw), "noise", (NAN, INF)),
    (lambda **kw: Bads(model=NO_MODEL, **kw), "sigma", (0, NAN, True)),
    (lambda **kw: Bads(model=NO_MODEL, **kw), "steps", (0, True)),
])
def test_scorer_settings_out_of_range_are_refused(make, field, values):
    for value in values:
        with pytest.raises(SettingError) as info:
            make(**{field: value})
        assert info.value.field == field, value
        assert "must be" in info.value.message


@pytest.mark.parametrize(("field", "value"), [
    ("lr", NAN), ("dropout", 1.0), ("warmup_ratio", -0.1), ("weight_decay", INF),
    ("epochs", True), ("alpha", 0), ("max_length", 1), ("seed", 2**64 // 1000 + 1),
])
def test_warmup_settings_out_of_range_are_refused(field, value):
    with pytest.raises(SettingError) as info:
        WarmupConfig(**{field: value}).check()
    assert info.value.field == field


# ------------------------------------------------------------------ Python API

@pytest.fixture
def small_pool(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": f"d{i}", "text": f"doc {i}"} for i in range(30)])
    pool = read_corpus(str(tmp_path / "a.jsonl"))
    ids = [f"d{i}" for i in range(30)]
    return pool, FixedScorer(dict(zip(ids, map(float, range(30))))).score(pool)


@pytest.mark.parametrize(("call", "field"), [
    (lambda p, s: select.top_k(p, s, k=True), "k"),
    (lambda p, s: select.top_k(p, s, k=0), "k"),
    (lambda p, s: select.top_k(p, s, k=2.0), "k"),
    (lambda p, s: select.top_fraction(p, s, NAN), "fraction"),
    (lambda p, s: select.top_fraction(p, s, True), "fraction"),
    (lambda p, s: select.threshold(p, s, NAN), "threshold"),
    (lambda p, s: select.threshold(p, s, -INF), "threshold"),
    (lambda p, s: select.importance_resample(p, s, k=5, seed=-1), "seed"),
    (lambda p, s: select.importance_resample(p, s, k=5, seed=2**64), "seed"),
    (lambda p, s: select.importance_resample(p, s, fraction=0.0), "fraction"),
    (lambda p, s: select.round_robin(p, s, k=-3), "k"),
    (lambda p, s: select.combine([s, s], weights=[1.0, NAN]), "weights"),
])
def test_policies_check_their_arguments(small_pool, call, field):
    with pytest.raises(InputError) as info:
        call(*small_pool)
    assert info.value.field == field


def test_a_valid_budget_still_selects(small_pool):
    assert select.top_fraction(*small_pool, fraction=1).num_selected == 30
    assert select.threshold(*small_pool, 27.0).num_selected == 3


@pytest.mark.parametrize(("settings", "field"), [
    ({"k": True}, "k"), ({"k": 0}, "k"), ({"fraction": NAN}, "fraction"),
    ({"threshold": NAN}, "threshold"), ({"k": 5, "seed": 2**64}, "seed"),
    ({"k": 5, "seed": -1}, "seed"), ({"k": 5, "partition_bytes": 0}, "partition_bytes"),
    ({"k": 5, "metrics_sample": NAN}, "metrics_sample"),
    ({"k": 5, "metrics_sample": 0.0}, "metrics_sample"), ({"k": 5, "workers": 0}, "workers"),
    ({"k": 5, "memory_limit": "-1GB"}, "memory_limit"),
])
def test_select_job_validates_like_the_flags(settings, field):
    job = SelectJob(scorer="dsir", pool=[POOL_GLOB], target=[TARGET], out="unused",
                    **settings)
    with pytest.raises(InputError) as info:
        job.validate()
    assert info.value.field == field


@pytest.mark.parametrize(("settings", "field"), [
    ({"steps": True}, "steps"), ({"steps": 0}, "steps"), ({"lr": NAN}, "lr"),
    ({"lr": INF}, "lr"), ({"seeds": (0, -1)}, "seeds"), ({"seeds": (2**64,)}, "seeds"),
    ({"max_length": 1}, "max_length"), ({"workers": 0}, "workers"),
    ({"em_max_tokens": -1}, "em_max_tokens"),
])
def test_eval_settings_are_range_checked(settings, field):
    with pytest.raises(InputError) as info:
        EvalSettings(**settings).check()
    assert info.value.field == field


# ------------------------------------------------------------------ seeds

IDS = [f"doc-{i}" for i in range(1000)]


def test_seeds_below_2_48_draw_exactly_as_before():
    # values computed with the code before seeds took 64 bits
    hashes = id_hashes(IDS)
    assert uniform(hashes[:3], 5, SAMPLE_STREAM).tolist() == [
        0.7151256059457654, 0.4902361179255858, 0.2692151153420666]
    assert uniform(hashes[:3], 2**47 + 3, SAMPLE_STREAM).tolist() == [
        0.3210103273526607, 0.956687938419712, 0.6262468455525028]
    assert np.flatnonzero(sample_mask(IDS, 0.01, 5)).tolist() == [
        12, 179, 274, 284, 334, 455, 479, 724, 828, 926, 930, 963]


def test_seeds_cover_64_bits_and_distinct_seeds_draw_differently():
    seeds = (0, 2**48, 2**63, 2**64 - 1)
    samples = [tuple(np.flatnonzero(sample_mask(IDS, 0.05, s))) for s in seeds]
    assert len(set(samples)) == len(seeds)  # 2**48 drew like 0 when seeds were cut to 48 bits
    hashes = id_hashes(IDS)
    # seeds that differ only above bit 48 differ on every row
    assert (uniform(hashes, 5 + 2**48, 1) != uniform(hashes, 5 + 2**49, 1)).all()


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.0])
def test_seeds_outside_64_unsigned_bits_are_refused(seed):
    with pytest.raises(SettingError, match=r"must be an integer in \[0, 2\*\*64 - 1\]"):
        uniform(id_hashes(IDS[:2]), seed, SAMPLE_STREAM)


# ------------------------------------------------------------------ recipes

RECIPE = """\
pool: {{paths: ["{pool}"], partition_mb: {partition_mb}}}
targets: {{t: {{paths: "{target}"}}}}
scorers: {{dsir: {{{params}}}}}
selection: {{{budget}}}
output: {{path: out, metrics_sample: {metrics_sample}}}
cluster: {{workers: {workers}}}
seed: {seed}
"""
GOOD = {"partition_mb": "1", "params": "", "budget": "k: 10", "metrics_sample": "0.1",
        "workers": "1", "seed": "0"}


def _recipe(tmp_path: Path, **changes: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(pool=POOL_GLOB, target=TARGET, **{**GOOD, **changes}),
                    encoding="utf-8")
    return path


def test_a_good_recipe_loads_floats_take_ints_and_1e_3_is_a_number(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, budget="fraction: 1", params="smoothing: 1e-1"))
    assert recipe.selection.fraction == 1.0
    assert recipe.scorers["dsir"]["smoothing"] == 0.1  # PyYAML alone reads "1e-1" as text


@pytest.mark.parametrize(("change", "field"), [
    ({"budget": "k: true"}, "selection.k"), ({"budget": "k: 1.0"}, "selection.k"),
    ({"budget": "k: 0"}, "selection.k"), ({"budget": "fraction: .nan"}, "selection.fraction"),
    ({"budget": "fraction: 1.5"}, "selection.fraction"),
    ({"budget": "threshold: .inf"}, "selection.threshold"),
    ({"partition_mb": "0"}, "pool.partition_mb"), ({"partition_mb": ".nan"}, "pool.partition_mb"),
    ({"partition_mb": "yes"}, "pool.partition_mb"),
    ({"metrics_sample": "0"}, "output.metrics_sample"), ({"workers": "0"}, "cluster.workers"),
    ({"workers": "true"}, "cluster.workers"), ({"seed": "-1"}, "seed"),
    ({"seed": str(2**64)}, "seed"), ({"seed": "true"}, "seed"),
    ({"params": "num_buckets: true"}, "scorers.dsir.num_buckets"),
    ({"params": "num_buckets: 0"}, "scorers.dsir.num_buckets"),
    ({"params": "smoothing: .nan"}, "scorers.dsir.smoothing"),
    ({"params": "smoothing: -1"}, "scorers.dsir.smoothing"),
    ({"params": "length_normalize: 1"}, "scorers.dsir.length_normalize"),
])
def test_recipe_numbers_are_typed_and_range_checked(tmp_path, change, field):
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(tmp_path, **change))
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_recipe_model_and_warmup_settings_are_checked_before_any_model_exists(tmp_path):
    path = _recipe(tmp_path)
    text = path.read_text().replace("scorers: {dsir: {}}", "scorers: {less: {model: base}}")
    for extra, field in (("models: {base: {build: {heads: 0}}}", "models.base.build.heads"),
                         ("models: {base: {build: {lr: .nan}}}", "models.base.build.lr"),
                         ("models: {base: {build: {}}}\nwarmup: {lr: .nan}", "warmup.lr"),
                         ("models: {base: {build: {}}}\nwarmup: {dropout: 1}",
                          "warmup.dropout")):
        path.write_text(f"{text}{extra}\n", encoding="utf-8")
        with pytest.raises(RecipeError) as info:
            load_recipe(path)
        assert info.value.field == field


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")]
    + ["pool: {paths: *i}"]) + "\n"


def test_a_billion_laughs_recipe_fails_at_once_in_one_line(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    # refused before expanding 9**9 items (which takes minutes and gigabytes): a bound
    # a loaded machine meets, not a speed test
    assert time.perf_counter() - started < 30
    message = str(info.value)
    assert "aliases expand to more than" in message and len(message) < 200


def test_many_aliases_recursive_aliases_and_huge_files_are_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    with pytest.raises(RecipeError, match=f"more than {MAX_ALIASES} YAML aliases"):
        load_recipe(path)
    path.write_text("x: &x [1, *x]\n")
    with pytest.raises(RecipeError, match="recursive YAML alias"):
        load_recipe(path)
    path.write_text("# " + "x" * 2**20 + "\n")
    with pytest.raises(RecipeError, match="larger than 1 MiB"):
        load_recipe(path)


def test_a_huge_value_is_cut_short_in_the_message(tmp_path):
    path = _recipe(tmp_path)
    path.write_text(path.read_text() + f"bogus: [{', '.join(['word' * 50] * 2000)}]\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == "bogus" and len(str(info.value)) < 300
