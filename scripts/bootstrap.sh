#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (idempotent, so the README's commands can always call it):
# Debian's espeak-ng for the TTS stage, a virtual environment in .venv, and the pinned packages.
# torch==2.13.0 is named first in the same pip command: on a CPU box it is the wheel on disk, and naming
# it stops pip from resolving a newer multi-GB CUDA build on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "from slam.cli import main; import torch, transformers, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.slam-installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 -e ".[test]"
  touch .venv/.slam-installed
fi
