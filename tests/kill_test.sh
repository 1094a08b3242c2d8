#!/usr/bin/env bash
# Kill test of ./run_all.sh (not part of CI: it runs the whole pipeline twice).
#
# 1. an uninterrupted `./run_all.sh --profile smoke` (the reference);
# 2. the same in a fresh scratch folder, killed with SIGKILL (the whole process group) at three
#    moments: in notebook 01 in the middle of a run's second epoch, in notebook 02 when its fifth
#    run starts, in notebook 03 shortly after its third training run starts; then run again
#    to the end;
# 3. results.csv (and each study's results) of both compared in every column but wall_seconds.
#
#   tests/kill_test.sh [SCRATCH_DIR]     (KILL_TEST_PROFILE=smoke by default)
# Exit status 0 when the tables are identical. Nothing outside SCRATCH_DIR is written.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-$(mktemp -d "${TMPDIR:-/tmp}/cnnlib-kill.XXXXXX")}
S=$(mkdir -p "$S" && cd "$S" && pwd)
PROFILE=${KILL_TEST_PROFILE:-smoke}
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

# Wait until, after the last "start" line, line A appears and then the N-th line matching B.
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

kill_group() {
  local kernels pids
  pids=$(pgrep -g "$PID" || true)
  kernels=$(for p in $pids; do pgrep -P "$p" -f ipykernel_launcher || true; done)
  kill -9 -- "-$PID"
  wait "$PID" 2>/dev/null || true
  echo "===== [kill-test] killed process group $PID ($1) =====" >> "$LOG"
  echo "[kill-test] killed process group $PID: $1"
  # The kernel runs in its own session; it exits by itself within a second once its parent
  # (papermill) is gone. Check it did, so no orphan keeps training.
  for k in $kernels; do
    for _ in $(seq 100); do kill -0 "$k" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$k" 2>/dev/null; then
      echo "[kill-test] kernel $k still alive 10 s after the kill" >&2
      exit 1
    fi
    echo "[kill-test]   its kernel $k exited by itself"
  done
}

start 1
wait_for "[training] best: cifar10" "train_loss=" 1
kill_group "notebook 01, during the second epoch of fastnet on cifar10"
state=$(for d in "$CNNLIB_RUNS"/cifar10-fastnet-*; do
  echo "$(basename "$d"): $(ls "$d" | tr '\n' ' ')"; done)
echo "[kill-test]   run folder after the kill: $state"

start 2
wait_for "02_augmentation_ablation: executing" "[run 5/" 1
kill_group "notebook 02, as its fifth run starts"

start 3
wait_for "03_depth_study: executing" "[training]" 3
sleep 0.3
kill_group "notebook 03, 0.3 s after its third training run started"

start 4
wait "$PID"
echo "[kill-test] final rerun finished"

# -- 3. compare ---------------------------------------------------------------------------------
echo "[kill-test] resumed runs in the final logs:"
grep -E "^\[resuming\]|^resuming " "$LOG" | sed 's/^/    /' || true
status=0
for rel in results.csv results/*.csv; do
  for f in "$S"/reference/outputs/$rel; do
    name=${f#"$S/reference/outputs/"}
    .venv/bin/python - "$f" "$S/killed/outputs/$name" > "$S/diff.txt" <<'EOF' || status=1
import sys
import pandas as pd
a, b = (pd.read_csv(p).drop(columns=["wall_seconds"]) for p in sys.argv[1:3])
if a.equals(b):
    sys.exit(0)
import difflib
print("".join(difflib.unified_diff(a.to_csv(index=False).splitlines(True),
                                   b.to_csv(index=False).splitlines(True),
                                   "reference", "killed")))
sys.exit(1)
EOF
    if [ -s "$S/diff.txt" ]; then
      echo "[kill-test] $name DIFFERS:"; cat "$S/diff.txt"
    else
      echo "[kill-test] $name: identical in every column but wall_seconds ($(($(wc -l < "$f") - 1)) rows)"
    fi
  done
done
exit $status
