"""Start-up: the command line and the cheap scorers' jobs import no torch, transformers, peft
or faiss (seconds of import each), so those load only for the model-based scorers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import POOL_GLOB, ROOT, TARGETS

HEAVY = ("torch", "transformers", "peft", "faiss")

JOB = """
import sys
from pipelines.cli import main
code = main(sys.argv[1:])
print("heavy:", ",".join(m for m in {heavy!r} if m in sys.modules) or "none")
sys.exit(code)
"""


@pytest.mark.parametrize("scorer, params", [("dsir", []), ("zipfit", ["-p", "mode=fast"]),
                                             ("fasttext", ["-p", "epoch=2"])])
def test_a_cheap_scorers_job_imports_no_model_libraries(scorer, params, tmp_path):
    argv = ["select", "--scorer", scorer, *params, "--pool", POOL_GLOB, "--target",
            str(TARGETS / "python_docs.jsonl"), "--k", "20", "--out", str(tmp_path / "out"),
            "--workers", "1", "--worker-kind", "threads"]  # workers in this process: checked too
    done = subprocess.run([sys.executable, "-c", JOB.format(heavy=HEAVY), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "heavy: none"


def test_help_imports_no_model_libraries():
    script = ("import sys\nfrom pipelines.cli import build_parser\n"
              "build_parser().format_help()\n"
              f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "none", done.stderr[-2000:]
