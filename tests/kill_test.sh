#!/usr/bin/env bash
# Kill test of ./run_all.sh (not part of CI: it runs the whole pipeline twice).
#
# 1. an uninterrupted `./run_all.sh --profile smoke` (the reference);
# 2. the same in a fresh scratch folder, killed with SIGKILL (the whole process group and the
#    notebook's kernel, in the same instant) at three moments: in notebook 01 as soon as fastnet's CIFAR-10 run has written its first epoch
#    checkpoint (so in the middle of its second epoch), in notebook 02 when its fifth run is
#    announced, in notebook 03 shortly after its third training run is announced; then run
#    again to the end. After each kill the unfinished runs and their last epoch are listed;
# 3. results.csv (and each study's results) of both compared in every column but wall_seconds
#    (and commit, should HEAD have moved while the test ran).
#
#   tests/kill_test.sh [SCRATCH_DIR]     (KILL_TEST_PROFILE=smoke by default)
# Exit status 0 when the tables are identical. Nothing outside SCRATCH_DIR is written.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-$(mktemp -d "${TMPDIR:-/tmp}/cnnlib-kill.XXXXXX")}
S=$(mkdir -p "$S" && cd "$S" && pwd)
PROFILE=${KILL_TEST_PROFILE:-smoke}
HEAD_BEFORE=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "[kill-test] scratch folder $S, profile $PROFILE"

use() {
  export CNNLIB_OUTPUTS="$S/$1/outputs" CNNLIB_RUNS="$S/$1/runs" CNNLIB_MODELS="$S/$1/models"
}

# -- 1. reference -------------------------------------------------------------------------------
use reference
if [ ! -f "$S/reference/outputs/results.csv" ]; then
  echo "[kill-test] reference: uninterrupted run"
  t0=$SECONDS
  ./run_all.sh --profile "$PROFILE" > "$S/reference.log" 2>&1
  echo "[kill-test] reference done in $((SECONDS - t0)) s"
fi

# -- 2. killed three times ----------------------------------------------------------------------
use killed
LOG="$S/killed.log"
: > "$LOG"

start() {
  echo "===== [kill-test] start $1 =====" >> "$LOG"
  setsid ./run_all.sh --profile "$PROFILE" >> "$LOG" 2>&1 &
  PID=$!
}

# Wait until, after the last "start" line, line A appears and then the N-th line holding B.
# (The log trails the kernel by up to a few seconds: the kill lands a little later.)
wait_for() {
  local a=$1 b=$2 n=$3
  while kill -0 "$PID" 2>/dev/null; do
    if awk -v a="$a" -v b="$b" -v n="$n" '
        /^===== \[kill-test\] start/ { seen = 0; count = 0 }
        index($0, a) { seen = 1 }
        seen && index($0, b) { count++ }
        END { exit !(count >= n) }' "$LOG"; then
      return 0
    fi
    sleep 0.05
  done
  echo "[kill-test] run_all ended before '$b' appeared; see $LOG" >&2
  exit 1
}

# Wait until a run folder matching the glob has an epoch checkpoint but no result yet.
wait_for_checkpoint() {
  local d
  while kill -0 "$PID" 2>/dev/null; do
    for d in "$CNNLIB_RUNS"/$1; do
      if [ -f "$d/last.pt" ] && [ ! -f "$d/result.json" ]; then return 0; fi
    done
    sleep 0.02
  done
  echo "[kill-test] run_all ended before a checkpoint of $1 appeared" >&2
  exit 1
}

# The runs a kill left unfinished, with the epoch their checkpoint holds.
unfinished() {
  .venv/bin/python -c '
import sys
from pathlib import Path
from cnnlib.training.checkpoint import load_safe
for d in sorted(Path(sys.argv[1]).glob("*")):
    if (d / "result.json").exists():
        continue
    if (d / "last.pt").exists():
        epoch = load_safe(d / "last.pt")["epoch"]
        print(f"[kill-test]   unfinished: {d.name}: checkpoint after epoch {epoch}")
    else:
        print(f"[kill-test]   unfinished: {d.name}: no checkpoint (killed in its first epoch)")
' "$CNNLIB_RUNS"
}

kill_group() {
  local kernels pids
  pids=$(pgrep -g "$PID" || true)
  kernels=$(for p in $pids; do pgrep -P "$p" -f ipykernel_launcher || true; done)
  # The kernel runs in its own process group (jupyter starts it so); on its own it would exit
  # within a second once papermill is gone, training on meanwhile. Killing it in the same
  # instant makes this a power cut: the run in progress stops exactly here.
  kill -9 -- "-$PID" $kernels
  wait "$PID" 2>/dev/null || true
  echo "===== [kill-test] killed process group $PID and kernel $kernels ($1) =====" >> "$LOG"
  echo "[kill-test] killed process group $PID and its kernel ${kernels:-(none yet)}: $1"
  for k in $kernels; do
    for _ in $(seq 100); do kill -0 "$k" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$k" 2>/dev/null; then
      echo "[kill-test] kernel $k still alive 10 s after the kill" >&2
      exit 1
    fi
  done
  unfinished
}

start 1
wait_for_checkpoint "cifar10-fastnet-*"
kill_group "notebook 01, fastnet on cifar10 has just checkpointed its first epoch"

start 2
wait_for "02_augmentation_ablation: executing" "[run 5/" 1
kill_group "notebook 02, its fifth run announced"

start 3
wait_for "03_depth_study: executing" "[training]" 3
sleep 0.3
kill_group "notebook 03, 0.3 s after its third training run was announced"

start 4
wait "$PID"
echo "[kill-test] final rerun finished"

# -- 3. compare ---------------------------------------------------------------------------------
echo "[kill-test] resumed runs in the logs of the restarts:"
grep -E "^\[resuming\]|^resuming " "$LOG" | sed 's/^/    /' || true
IGNORE=wall_seconds
if [ "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" != "$HEAD_BEFORE" ]; then
  echo "[kill-test] HEAD moved during the test (a new commit): the commit column is not compared"
  IGNORE=wall_seconds,commit
fi
export IGNORE
status=0
for rel in results.csv results/*.csv; do
  for f in "$S"/reference/outputs/$rel; do
    name=${f#"$S/reference/outputs/"}
    .venv/bin/python - "$f" "$S/killed/outputs/$name" > "$S/diff.txt" <<'EOF' || status=1
import difflib
import os
import sys

import pandas as pd

ignore = os.environ["IGNORE"].split(",")
a, b = (pd.read_csv(p).drop(columns=ignore) for p in sys.argv[1:3])
if a.equals(b):
    sys.exit(0)
print("".join(difflib.unified_diff(a.to_csv(index=False).splitlines(True),
                                   b.to_csv(index=False).splitlines(True),
                                   "reference", "killed")))
sys.exit(1)
EOF
    if [ -s "$S/diff.txt" ]; then
      echo "[kill-test] $name DIFFERS:"; cat "$S/diff.txt"
    else
      echo "[kill-test] $name: identical in every column but $IGNORE ($(($(wc -l < "$f") - 1)) rows)"
    fi
  done
done
exit $status
