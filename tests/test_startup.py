"""Start-up: the command line and the cheap scorers' jobs import no torch, transformers, peft
or faiss (seconds of import each), so those load only for the model-based scorers; jobs on
local threads do not import distributed; and ``--help`` does not even load the data stack,
so it answers at once.

Each check runs in a fresh interpreter: this test process has long since imported all of
them. No check here times anything (a shared machine's timings would make it flaky); the
``--help`` time is recorded in benchmarks/RESULTS.md under "Start-up"."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import POOL_GLOB, ROOT, TARGETS

HEAVY = ("torch", "transformers", "peft", "faiss")
# the data stack: a DSIR job needs it, printing help does not
DATA_STACK = ("dask", "distributed", "pyarrow", "pandas", "numpy", "polars", "pydantic")

HELP = """
import sys
from pipelines.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("loaded:", ",".join(m for m in {watched!r} if m in sys.modules) or "none")
"""

# a job on the local cluster the scorer asks for; with process workers, the job runs on a
# cluster this script starts, so that the workers' own modules can be listed afterwards
JOB = """
import sys
from pipelines.cli import main

def loaded():
    return ",".join(m for m in {heavy!r} if m in sys.modules) or "none"

argv = sys.argv[1:]
if "processes" in argv:
    from distributed import Client, LocalCluster
    at = argv.index("--workers")  # the cluster's own: no local-cluster flags with it
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster, \\
            Client(cluster) as client:
        code = main([*argv[:at], *argv[at + 4:], "--scheduler", cluster.scheduler_address])
        print("workers:", sorted(set(client.run(loaded).values())))
else:
    code = main(argv)
print("client:", loaded())
sys.exit(code)
"""


def _python(script: str, *argv: str, timeout: int = 120) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


@pytest.mark.parametrize("argv", [["--help"], ["select", "--help"], ["features", "--help"],
                                  ["--version"]])
def test_help_and_version_load_neither_models_nor_the_data_stack(argv):
    lines = _python(HELP.format(watched=HEAVY + DATA_STACK), *argv)
    assert lines[-1] == "loaded: none"
    assert len(lines) > 1  # something was printed before


@pytest.mark.parametrize("scorer, params, kind", [
    ("dsir", [], "auto"),  # threads: the scoring runs in this process, and is checked too
    ("zipfit", ["-p", "mode=exact", "-p", "target_sample=10"], "auto"),  # threads as well
    ("fasttext", ["-p", "epoch=2"], "processes"),  # its declared kind
    ("auto", ["-p", "candidates=dsir,zipfit"], "auto"),  # its own modules, in threads
])
@pytest.mark.slow
def test_a_cheap_scorers_job_imports_no_model_libraries(scorer, params, kind, tmp_path):
    pool = POOL_GLOB.replace("*", "part-00000")  # one part: ZIP-FIT exact is quadratic
    argv = ["select", "--scorer", scorer, *params, "--pool", pool, "--target",
            str(TARGETS / "python_docs.jsonl"), "--k", "20", "--out", str(tmp_path / "out"),
            "--workers", "1", "--worker-kind", kind]
    # local thread workers run without Dask's scheduler, so without importing distributed
    watched = HEAVY if kind == "processes" else (*HEAVY, "distributed")
    if kind != "processes" and scorer != "auto":  # auto sets Dask's config for its folds
        watched = (*watched, "dask")  # the tasks are plain calls: no Dask at all
    if not params:  # settings left at their defaults need no validation model
        watched = (*watched, "pydantic")
    lines = _python(JOB.format(heavy=watched), *argv, timeout=300)
    assert lines[-1] == "client: none"
    if kind == "processes":
        assert lines[-2] == "workers: ['none']"


TRAINER = """
import runpy, sys
runpy.run_path(sys.argv[1])["main"](sys.argv[2:])  # as scorers.fasttext.scorer runs it
print("loaded:", ",".join(m for m in {watched!r} if m in sys.modules) or "none")
"""


def test_the_fasttext_training_process_loads_no_data_stack(tmp_path, monkeypatch):
    """fastText trains each model in a process of its own (auto: one per fold), where the
    data stack's imports (over a second) would cost as much as training a small model.
    fastText itself needs NumPy."""
    from scorers.fasttext.scorer import MMAP_THRESHOLD
    from scorers.fasttext.scorer import TRAINER as trainer_file

    lines = [f"__label__{'a' if i % 2 else 'b'} w{i % 7} v{i % 3}" for i in range(40)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    # hashed bigram rows: a matrix from the kernel, zeroed, as the scorer trains them
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    params = ('{"epoch": 1, "dim": 4, "wordNgrams": 2, "bucket": 65536, "thread": 1, '
              '"verbose": 0}')
    watched = HEAVY + tuple(m for m in DATA_STACK if m != "numpy")
    loaded = _python(TRAINER.format(watched=watched), trainer_file, str(tmp_path / "train.txt"),
                     str(tmp_path / "model.bin"), params)
    assert loaded[-1] == "loaded: none"
    assert (tmp_path / "model.bin").stat().st_size > 0


CONSOLE = """
import gc, sys
from pipelines.console import main
sys.argv = ["dataselect", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("frozen:", gc.get_freeze_count() > 0)
"""


def test_the_console_script_freezes_the_heap_before_the_process_exits():
    """The interpreter's shutdown otherwise walks every object the imports built (0.6-0.7 s
    of a DSIR job on the benchmark); :func:`gc.freeze` leaves them to the OS."""
    assert _python(CONSOLE, "--version")[-1] == "frozen: True"
