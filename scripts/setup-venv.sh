#!/usr/bin/env bash
# Make (or reuse) the virtual environment .venv in this checkout, with the project installed
# (editable). `--dev` adds the dev extra (pytest, hypothesis, timm, regioncam, the notebook's
# kernel): `make test` asks for it, `make demo` does not need it. Idempotent: a second run
# installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRA=""
CHECK="import pipeline, zarr, submitit, dask, sklearn, pandas, matplotlib, yaml, tqdm"
STAMP=.venv/.installed
if [ "${1:-}" = "--dev" ]; then
  EXTRA="[dev]"
  CHECK="$CHECK, pytest, hypothesis, timm, regioncam"
  STAMP=.venv/.installed-dev
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # Pinned builds: on x86_64 these wheels are cached on the project's machines; on aarch64 the
  # CPU build of 2.9.1 is the one whose torchvision imports.
  case "$(uname -m)" in
    aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
  esac
  echo "[setup] installing $TORCH (a minute or two)"
  .venv/bin/pip install -q $TORCH
fi
if ! .venv/bin/python -c "$CHECK" 2>/dev/null || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[setup] installing the project (editable)${EXTRA:+ with its dev extra}"
  .venv/bin/pip install -q -e ".$EXTRA"
  touch "$STAMP"
fi
echo "[setup] .venv ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
