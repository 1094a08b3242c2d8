#!/usr/bin/env bash
# The project's main command. Sets up .venv (idempotent), then runs `python -m cnnlib.study.pipeline`
# with the same flags: it obtains the data, executes the notebooks with papermill, exports HTML
# reports and rebuilds the results tables.
#
#   ./run_all.sh                      every notebook, profile auto (full on CUDA, else cpu)
#   ./run_all.sh --profile smoke      tiny subsets: a check of the whole pipeline in minutes
#   ./run_all.sh --only 03            one notebook (01, 01_baseline or notebooks/01_baseline.ipynb)
#   ./run_all.sh --force              execute notebooks again even when already done
#   ./run_all.sh --setup-only         only create/refresh .venv and obtain the data
#   ./run_all.sh --nproc 4            train each run on 4 local processes with torchrun (DDP;
#                                     one per GPU, gloo on CPU); default $CNNLIB_NPROC or 1
#   ./run_all.sh --jobs 4             train 4 runs at once (one per GPU, or cores/4 threads each);
#                                     default $CNNLIB_JOBS or 1
#   ./run_all.sh --jobs 8 --executor ray
#                                     each run a Ray task, on $RAY_ADDRESS or a Ray started here
#                                     (pip install '.[cluster]'); default $CNNLIB_EXECUTOR or local
#   ./run_all.sh --remeasure          take the range tests (03) and the compression measurements
#                                     (05) again instead of reusing them from the run cache, and
#                                     execute those notebooks again; default $CNNLIB_REMEASURE (1/0)
#   ./run_all.sh --verbose            also log papermill's per-cell lines, every cell's output and
#                                     the kernel's own warnings (default: what the cells print)
#
# It first says what it will do: per notebook, the runs recorded in the run cache and those to
# train, with the time expected on this machine; a long step prints a line each minute with the
# time left; the last line separates this run's time from the training the study's runs cost.
#
# Writes (under $CNNLIB_OUTPUTS, default outputs/): notebooks/<name>.ipynb (executed),
# reports/<name>.html, results.csv, results.md, the figures; models/cnn_cifar10{,0}.pth;
# and the README's Key Results table. Training runs are cached in outputs/runs/ (or
# $CNNLIB_RUNS), and so are the range tests and compression measurements: killed at any
# moment and started again, the script loses at most the epoch in progress. A notebook that
# finished for the same profile (and unchanged sources) is skipped.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# Only the two flags handled here are looked at; cnnlib.study.pipeline checks all of them.
SETUP_ONLY=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --setup-only) SETUP_ONLY=1 ;;
  esac
done

setup_venv() {
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
  fi
  # Reinstall only when the requirements or the package metadata changed.
  local want have
  want=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
  have=$(cat .venv/.cnnlib-installed 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "[setup] installing requirements into .venv (first time: a few minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip install -q --no-deps -e .
    echo "$want" > .venv/.cnnlib-installed
  fi
}

setup_data() {
  echo "[setup] obtaining and verifying CIFAR-10 and CIFAR-100"
  .venv/bin/cnnlib data
}

setup_venv
if [ "$SETUP_ONLY" = 1 ]; then
  setup_data || { [ "${CNNLIB_DATA_OPTIONAL:-0}" = 1 ] && echo "[setup] data not available; tests that need it will be skipped"; }
  exit 0
fi
# The pipeline checks the flags first (exit 2 on a bad one), then obtains the data.
exec .venv/bin/python -m cnnlib.study.pipeline "$@"
