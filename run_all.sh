#!/usr/bin/env bash
# The project's main command. Sets up .venv and the data (idempotent), then executes the
# notebooks with papermill, exports HTML reports and rebuilds the results tables.
#
#   ./run_all.sh                      every notebook, profile auto (full on CUDA, else cpu)
#   ./run_all.sh --profile smoke      tiny subsets: a check of the whole pipeline in minutes
#   ./run_all.sh --only 03            one notebook (01, 01_baseline or notebooks/01_baseline.ipynb)
#   ./run_all.sh --force              execute notebooks again even when already done
#   ./run_all.sh --setup-only         only create/refresh .venv and obtain the data
#   ./run_all.sh --nproc 4            train each run on 4 local processes with torchrun (DDP;
#                                     one per GPU, gloo on CPU); default $CNNLIB_NPROC or 1
#
# Writes (under $CNNLIB_OUTPUTS, default outputs/): notebooks/<name>.ipynb (executed),
# reports/<name>.html, results.csv, results.md, the figures; models/cnn_cifar10{,0}.pth;
# and the README's Key Results table. Training runs are cached in outputs/runs/ (or
# $CNNLIB_RUNS): killed at any moment and started again, the script loses at most the epoch in
# progress. A notebook that finished for the same profile (and unchanged sources) is skipped.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

PROFILE=${CNNLIB_PROFILE:-auto}
ONLY=""
FORCE=0
SETUP_ONLY=0
NPROC=${CNNLIB_NPROC:-1}
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || { echo "run_all: --profile needs a value" >&2; exit 2; }
               PROFILE=$2; shift 2 ;;
    --profile=*) PROFILE=${1#*=}; shift ;;
    --only) [ $# -ge 2 ] || { echo "run_all: --only needs a notebook" >&2; exit 2; }
            ONLY=$2; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    --nproc) [ $# -ge 2 ] || { echo "run_all: --nproc needs a number" >&2; exit 2; }
             NPROC=$2; shift 2 ;;
    --nproc=*) NPROC=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

case "$NPROC" in
  ''|*[!0-9]*|0) echo "run_all: --nproc '$NPROC' is not allowed; give a whole number >= 1" >&2; exit 2 ;;
esac
export CNNLIB_NPROC=$NPROC  # read by cnnlib.runs: >1 trains each run through torchrun

case "$PROFILE" in
  auto|smoke|cpu|full) ;;
  *) echo "run_all: --profile '$PROFILE' is not allowed; allowed: auto, smoke, cpu, full" >&2; exit 2 ;;
esac

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
setup_data

# -- the notebooks ------------------------------------------------------------------------------
PROFILE=$(.venv/bin/python -m cnnlib.runs profile --profile "$PROFILE") || exit 2
export CNNLIB_PROFILE=$PROFILE  # the notebooks' "auto" resolves to it as well
OUT=${CNNLIB_OUTPUTS:-outputs}
mkdir -p "$OUT/notebooks" "$OUT/reports"

NOTEBOOKS=(notebooks/[0-9][0-9]_*.ipynb)
if [ -n "$ONLY" ]; then
  want=$(basename "$ONLY" .ipynb)
  NOTEBOOKS=()
  for nb in notebooks/[0-9][0-9]_*.ipynb; do
    name=$(basename "$nb" .ipynb)
    case "$name" in "$want"|"$want"_*) NOTEBOOKS+=("$nb") ;; esac
  done
  if [ ${#NOTEBOOKS[@]} -ne 1 ]; then
    echo "run_all: --only '$ONLY' matches ${#NOTEBOOKS[@]} notebooks; choose one of:" >&2
    ls notebooks/[0-9][0-9]_*.ipynb >&2
    exit 2
  fi
fi

# A notebook is done for a profile when its marker holds the profile and the hash of the
# notebook and of cnnlib's sources (runs come from the cache, so a rerun is cheap anyway).
SOURCES=$(cat cnnlib/*.py cnnlib/models/*.py | sha256sum | cut -c1-16)
stamp() { echo "profile=$PROFILE notebook=$(sha256sum < "$1" | cut -c1-16) cnnlib=$SOURCES"; }

echo "[run_all] profile $PROFILE; outputs in $OUT/; ${#NOTEBOOKS[@]} notebook(s); training runs:"
.venv/bin/python -m cnnlib.runs plan --profile "$PROFILE" | sed 's/^/[run_all]   /'
START=$SECONDS
i=0
for nb in "${NOTEBOOKS[@]}"; do
  i=$((i + 1))
  name=$(basename "$nb" .ipynb)
  executed="$OUT/notebooks/$name.ipynb"
  html="$OUT/reports/$name.html"
  marker="$OUT/notebooks/.$name.done"
  if [ "$FORCE" = 0 ] && [ -f "$marker" ] && [ -f "$html" ] && [ "$(cat "$marker")" = "$(stamp "$nb")" ]; then
    echo "[run_all] ($i/${#NOTEBOOKS[@]}) $name: already done for profile $PROFILE, skipped (--force runs it again)"
    continue
  fi
  rm -f "$marker"
  echo "[run_all] ($i/${#NOTEBOOKS[@]}) $name: executing (profile $PROFILE) -> $executed"
  t0=$SECONDS
  if ! .venv/bin/papermill "$nb" "$executed" -k python3 -p PROFILE "$PROFILE" \
      --cwd . --log-output --no-progress-bar; then
    echo "[run_all] FAILED: notebook $name (profile $PROFILE) stopped with an error." >&2
    echo "[run_all] The traceback is above; the executed notebook is $executed." >&2
    echo "[run_all] Fix it and run ./run_all.sh again: finished runs come from the cache." >&2
    exit 1
  fi
  # The report: no code, training logs (cells tagged remove_output) left out, figures embedded.
  rm -f "$html"
  if ! .venv/bin/jupyter nbconvert --to html --no-input --log-level WARN \
      --TagRemovePreprocessor.remove_all_outputs_tags=remove_output \
      --output-dir "$OUT/reports" --output "$name" "$executed" || [ ! -f "$html" ]; then
    echo "[run_all] FAILED: HTML export of $name ($executed)" >&2
    exit 1
  fi
  stamp "$nb" > "$marker"
  echo "[run_all] ($i/${#NOTEBOOKS[@]}) $name: done in $((SECONDS - t0)) s -> $html"
done

# -- results tables -----------------------------------------------------------------------------
README_ARGS=(--readme README.md)
if [ "$(realpath -m "$OUT")" != "$(realpath -m outputs)" ]; then
  README_ARGS=(--readme "")  # a scratch outputs folder never rewrites the README
fi
.venv/bin/python -m cnnlib.runs collect --out "$OUT" "${README_ARGS[@]}"
echo "[run_all] finished in $((SECONDS - START)) s: reports in $OUT/reports/, results in $OUT/results.csv"
