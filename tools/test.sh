#!/usr/bin/env bash
# Set up, then run each package's tests as its own job (default: all six).
# Usage: bash tools/test.sh [package ...]   e.g. bash tools/test.sh common cbyol
# TEST_JOBS=N runs up to N package jobs at once (default 2: much of a job's time is single-threaded
# Python, TensorFlow start-up and graph tracing, so two jobs share two cores well). Each job's
# output is printed in one piece when it ends, then a summary with every job's result and time.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || exit 1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
jobs_max=${TEST_JOBS:-2}
packages=("$@")
# Longest first, so that two at a time finish close together.
[ ${#packages[@]} -gt 0 ] || packages=(common tools cbyol simclr byol csimclr)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0

run_job() {  # package -> writes $logs/<package>.{log,status}
  local p=$1 start rc secs
  start=$(date +%s)
  .venv/bin/python -m pytest "$p" -q -p no:cacheprovider >"$logs/$p.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then echo "passed (${secs}s)" >"$logs/$p.status"
  elif [ $rc -eq 5 ]; then echo "FAILED: no tests collected" >"$logs/$p.status"
  else echo "FAILED (pytest exit $rc, ${secs}s)" >"$logs/$p.status"; fi
}

report() {  # package: print its log once
  echo "[test] ===== job $1: pytest $1 ($(cat "$logs/$1.status")) ====="
  cat "$logs/$1.log"
}

declare -A pid_of
for p in "${packages[@]}"; do
  if [ ! -d "$p/tests" ]; then
    echo "[test] unknown package $p (no $p/tests)" >"$logs/$p.log"
    echo "FAILED: unknown package" >"$logs/$p.status"
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
  echo "[test] starting job $p: pytest $p"
  run_job "$p" &
  pid_of[$p]=$!
done
for p in "${packages[@]}"; do
  [ -n "${pid_of[$p]:-}" ] && wait "${pid_of[$p]}"
  report "$p"
done
echo "[test] ===== summary ====="
for p in "${packages[@]}"; do
  s=$(cat "$logs/$p.status" 2>/dev/null || echo "not run")
  echo "[test] $p: $s"
  case $s in passed*) ;; *) failed=1 ;; esac
done
exit $failed
