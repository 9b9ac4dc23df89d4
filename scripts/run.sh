#!/usr/bin/env bash
# One entry point for the README's two commands:
#   bash scripts/run.sh demo   install into .venv, run a DSIR selection on data/ (local Dask cluster)
#   bash scripts/run.sh test   install into .venv with the dev extras, run ruff and the fast
#                              tier of the tests (-m "not slow"); CI runs the slow tier too
# Extra arguments after "test" go to pytest (-m slow: the slow tier; -m "" : everything).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian ships venv's pip bootstrap separately
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
                rm -rf "$VENV" && "$PYTHON" -m venv "$VENV"
            else
                echo "python3 -m venv failed: install python3-venv (Debian) and rerun" >&2
                exit 1
            fi
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first, pinned: an unpinned resolve can pull a multi-GB CUDA build. Where a
    # local CPU wheel of this version is on pip's find-links (as on our machines) it is
    # taken; elsewhere PyPI's build for the platform is. CPU-only machines elsewhere can
    # set TORCH_INDEX to the URL of PyTorch's CPU wheel index to get the small CPU build.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        "$VENV/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}" \
            ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
    fi
}

# pip byte-compiles what it installs from wheels, but not an editable install: compile
# ours now, so that no command compiles its modules again (30-40 ms each time) where
# Python may not write bytecode itself (PYTHONDONTWRITEBYTECODE)
compile_sources() {
    "$VENV/bin/python" -m compileall -q dataselect pipelines scorers >/dev/null
}

case "${1:-}" in
    demo)
        make_venv
        "$VENV/bin/python" -m pip install --quiet -e .
        compile_sources
        "$VENV/bin/dataselect" select --scorer dsir \
            --pool 'data/pool/*.parquet' --target data/targets/python_docs.jsonl \
            --k 440 --seed 0 --out out/python_docs
        ;;
    test)
        shift
        make_venv
        "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
        compile_sources
        "$VENV/bin/ruff" check .
        # the fast tier unless the arguments choose (a later -m wins: -m slow is the rest)
        "$VENV/bin/python" -m pytest -n 2 --durations=15 -m "not slow" "$@"
        ;;
    *)
        echo "usage: bash scripts/run.sh demo|test [pytest args]" >&2
        exit 2
        ;;
esac
