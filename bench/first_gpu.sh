#!/usr/bin/env bash
# The first run on one GPU (bench/first_gpu.py; its docstring says what it does):
#   bash bench/first_gpu.sh [--tiny] [--out DIR] [--minutes M1 M2] [--deadline-s S]
# under $PYTHON, else the repository's .venv, else python3 (the GPU machine's own).
cd "$(dirname "$0")/.." || exit 1
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
exec "$py" bench/first_gpu.py "$@"
