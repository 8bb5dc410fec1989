#!/usr/bin/env bash
# The one prepared GPU check (issue 22, item 6): on a CUDA machine, in at most 8 minutes,
#   1. trials/hour with K = 1 ... 128 trials stacked per device   (benchmarks/bench_trials_per_device.py)
#   2. eager vs runtime.compile, compile time included            (benchmarks/bench_compile.py)
#   3. the default study with -k auto: wall time and trials/hour  (kdsearch run)
#   4. the same with --workers 0 (one worker per GPU), when more than one GPU is visible
#   5. the soak harness's GPU-free small case                     (not written yet: recorded as skipped)
# Each part writes one JSON under OUT_DIR and has its own time limit; a summary table is printed at the end.
#
#   bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU machine (the device tool's `run`: first
#                                                    # bash benchmarks/gpu_wheels.sh here, carry [".whl"])
#   bash benchmarks/gpu_check.sh OUT_DIR --dry-run   # on CPU, tiny sizes, about a minute (tests call it)
#
# Record the figures in benchmarks/RESULTS.md with the device named (the summary prints it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}"
DRY="${2:-}"
VENV="${KDSEARCH_VENV:-.venv}"
if [ -x "$VENV/bin/python" ]; then
  PY="$VENV/bin/python"
  KDSEARCH=("$VENV/bin/kdsearch")
else  # the lent GPU machine: its own python3 with torch; the rest from .whl/ (benchmarks/gpu_wheels.sh, carried)
  PY=python3
  KDSEARCH=(python3 -m kdsearch)
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_check: installing the wheels of .whl/ failed" >&2; exit 2; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

TINY=(--set data.train_limit=3000 --set data.labeled=500 --set data.unlabeled=1500 --set data.val_size=500
      --set teacher.epochs=1 --set student.epochs=1)
if [ "$DRY" = "--dry-run" ]; then
  DEVICE=cpu
  GPUS=0
  KS=(1 2)
  STUDY_TRIALS=2
  LIMIT=(120 120 180 180)
  EXTRA=("${TINY[@]}")
elif [ -n "$DRY" ]; then
  echo "gpu_check: unknown option $DRY (the only one is --dry-run)" >&2
  exit 2
else
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  if [ "$GPUS" = 0 ]; then
    echo "gpu_check: no CUDA device visible to torch here; run it on the GPU machine, or with --dry-run on CPU" >&2
    exit 2
  fi
  DEVICE=cuda
  KS=(1 2 4 8 16 32 64 128)
  STUDY_TRIALS=40
  LIMIT=(150 90 150 60)  # seconds per part: 7 min 30 s in all, under the 8 minutes
  EXTRA=()
fi
echo "gpu_check: device $DEVICE ($GPUS GPU(s) visible), results in $OUT"

part() {  # part NAME LIMIT_S COMMAND...: run it under its time limit, log to OUT/NAME.log, record rc and seconds
  local name="$1" limit="$2"
  shift 2
  local start rc
  start=$(date +%s.%N)
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  "$PY" - "$OUT/$name.status.json" "$rc" "$start" "$limit" <<'EOF'
import json, sys, time
path, rc, start, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
json.dump({"rc": rc, "seconds": round(time.time() - start, 1), "limit_s": limit, "timed_out": rc in (124, 137)},
          open(path, "w"))
EOF
  echo "gpu_check: $name rc=$rc"
}

QUICK=()
[ "$DRY" = "--dry-run" ] && QUICK=(--quick)
part trials_per_device "${LIMIT[0]}" "$PY" benchmarks/bench_trials_per_device.py --device "$DEVICE" \
  --ks "${KS[@]}" --epochs 1 "${QUICK[@]}" --json "$OUT/trials_per_device.json"
part compile "${LIMIT[1]}" "$PY" benchmarks/bench_compile.py --device "$DEVICE" --trials 4 "${QUICK[@]}" \
  --json "$OUT/compile.json"
part study_k_auto "${LIMIT[2]}" "${KDSEARCH[@]}" run --trials "$STUDY_TRIALS" --device "$DEVICE" -k auto \
  --output-dir "$OUT/study_k_auto" --set 'name="gpu_check_k_auto"' "${EXTRA[@]}"
if [ "$GPUS" -gt 1 ]; then
  part study_workers "${LIMIT[3]}" "${KDSEARCH[@]}" run --trials "$STUDY_TRIALS" --device "$DEVICE" --workers 0 -k auto \
    --output-dir "$OUT/study_workers" --set 'name="gpu_check_workers"' "${EXTRA[@]}"
else
  echo '{"skipped": "one GPU or none visible: --workers 0 would start one worker"}' >"$OUT/study_workers.json"
fi
echo '{"skipped": "the soak harness (benchmarks/soak.py, issue 22 item 1) is not written yet"}' >"$OUT/soak.json"

"$PY" benchmarks/gpu_check_summary.py "$OUT" "$DEVICE"
