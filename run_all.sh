#!/usr/bin/env bash
# The project's main command. Sets up .venv and the data (idempotent), then runs the job.
#   ./run_all.sh               the main job
#   ./run_all.sh --setup-only  only create/refresh .venv and obtain the data
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}

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
if [ "${1:-}" = "--setup-only" ]; then
  setup_data || { [ "${CNNLIB_DATA_OPTIONAL:-0}" = 1 ] && echo "[setup] data not available; tests that need it will be skipped"; }
  exit 0
fi
setup_data

# Main job: a real CIFAR-10 training run of the fast net on whatever device is present.
OUT=${OUT:-outputs/runs/cli-fastnet-cifar10}
.venv/bin/cnnlib train --recipe fastnet --dataset cifar10 --epochs "${EPOCHS:-4}" --out "$OUT" "$@"
