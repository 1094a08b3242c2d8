#!/usr/bin/env bash
# The project's test command: sets up .venv (and the data when it can be had), lints, then one
# pytest run: the unit tests (tests/) and, when CIFAR is available, every notebook under
# nbval (notebooks/, smoke profile; cells marked NBVAL_CHECK_OUTPUT must reproduce their stored
# output, every other cell must run without error).
#   ./run_tests.sh -q                          everything
#   ./run_tests.sh tests/test_runs.py          only what is named (a notebook path works too)
# Runs, outputs and models of the tests go to a scratch folder, never to outputs/ or models/.
set -euo pipefail
cd "$(dirname "$0")"
CNNLIB_DATA_OPTIONAL=${CNNLIB_DATA_OPTIONAL:-1} ./run_all.sh --setup-only
.venv/bin/ruff check .

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/cnnlib-tests.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
export CNNLIB_PROFILE=smoke CNNLIB_OUTPUTS="$SCRATCH/outputs" CNNLIB_RUNS="$SCRATCH/runs" \
  CNNLIB_MODELS="$SCRATCH/models"

PATHS=(tests notebooks)
for arg in "$@"; do  # paths given: test only those
  case "$arg" in -*) ;; *) if [ -e "${arg%%::*}" ]; then PATHS=(); fi ;; esac
done
NBVAL=(--nbval-lax --nbval-current-env --nbval-cell-timeout=900)
if ! .venv/bin/cnnlib data --no-download > /dev/null 2>&1; then
  if [ "${CNNLIB_DATA_OPTIONAL:-1}" != 1 ]; then
    echo "[tests] CIFAR-10/100 not available: the notebook tests need them" >&2
    exit 1
  fi
  echo "[tests] CIFAR-10/100 not available: notebook tests skipped"
  PATHS=(tests)
  NBVAL=()
fi
.venv/bin/python -m pytest "${PATHS[@]}" "${NBVAL[@]}" "$@"
