#!/usr/bin/env bash
# Set up, then run each package's tests as its own job (default: all six, in dependency order).
# Usage: bash tools/test.sh [package ...]   e.g. bash tools/test.sh common cbyol
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || exit 1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(common simclr csimclr byol cbyol tools)
declare -A status
failed=0
for p in "${packages[@]}"; do
  if [ ! -d "$p/tests" ]; then echo "[test] unknown package $p (no $p/tests)"; failed=1; continue; fi
  echo "[test] ===== job $p: pytest $p ====="
  start=$(date +%s)
  .venv/bin/python -m pytest "$p" -q -p no:cacheprovider
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then status[$p]="passed (${secs}s)";
  elif [ $rc -eq 5 ]; then status[$p]="FAILED: no tests collected"; failed=1;
  else status[$p]="FAILED (pytest exit $rc, ${secs}s)"; failed=1; fi
done
echo "[test] ===== summary ====="
for p in "${packages[@]}"; do echo "[test] $p: ${status[$p]:-not run}"; done
exit $failed
