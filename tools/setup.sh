#!/usr/bin/env bash
# Idempotent set-up: Debian's Fashion-MNIST files, a virtual environment in .venv with the pinned
# packages of requirements.txt. Prints each step; safe to run again (it only does what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}

say() { printf '[setup] %s\n' "$*"; }

need_apt=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${need_apt[*]}; run: sudo apt-get install -y ${need_apt[*]}"
    exit 1
  fi
  say "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
else
  say "Fashion-MNIST found in /usr/share/datasets/fashion-mnist"
fi

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating virtual environment .venv ($("$PY" --version))"
  "$PY" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.requirements.sha256"
want=$(cat "$ROOT/requirements.txt" "$ROOT"/{common,simclr,csimclr,byol,cbyol,tools}/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing pinned packages from requirements.txt into .venv (a few minutes the first time)"
  # (grep drops the notes some pip configurations print for every missing local index)
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
  "$ROOT/.venv/bin/python" -m pip install -q -r "$ROOT/requirements.txt" 2>&1 \
    | grep -v "is ignored: it is neither" || true
  say "installing the project's packages (common, simclr, csimclr, byol, cbyol, tools) in editable mode"
  # setuptools warns about editable installs of folders named like their package: that is the layout.
  "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT/common" -e "$ROOT/simclr" -e "$ROOT/csimclr" \
    -e "$ROOT/byol" -e "$ROOT/cbyol" -e "$ROOT/tools" >"$ROOT/.venv/install.log" 2>&1 \
    || { cat "$ROOT/.venv/install.log"; say "installing the project's packages failed (see above)"; exit 1; }
  if ! (cd / && "$ROOT/.venv/bin/python" -c "import tensorflow, tensorflow_datasets, tensorboard, scipy, absl, pytest, common.cli.job, simclr.train, csimclr.train, byol.train, cbyol.train, tools.parity_check" >"$ROOT/.venv/import.log" 2>&1); then
    cat "$ROOT/.venv/import.log"; say "importing the installed packages failed (see above)"; exit 1
  fi
  echo "$want" > "$stamp"
else
  say "pinned packages already installed in .venv"
fi
say "ready: $("$ROOT/.venv/bin/python" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)' 2>/dev/null)"
