#!/bin/sh
# How every stage runs: this checkout's library (also inside an experiment's temp copy) on the
# `python` of PATH, which is the venv's when it is active or when `make` runs DVC.
if ! command -v python >/dev/null 2>&1; then
    echo "stage: no \`python\` on PATH to run $1: activate the project's venv (source .venv/bin/activate) or use \`make repro\`" >&2
    exit 127
fi
PYTHONPATH=src exec python "$@"
