#!/usr/bin/env bash
# After `uv sync` (Makefile): with TORCH_INDEX=cu126 (or cu128, cpu, ...), replace the locked torch and
# torchvision by the same releases built for that CUDA, from PyTorch's own index (docs/install.md). The
# versions stay the lock's; only the build differs. Without TORCH_INDEX this does nothing.
set -euo pipefail
[ -n "${TORCH_INDEX:-}" ] || exit 0
BIN=${BIN:-.venv/bin}
UV=${UV:-.uv/bin/uv}
versions=$("$BIN/python" - <<'PY'
from importlib.metadata import version
print(f"torch=={version('torch').split('+')[0]} torchvision=={version('torchvision').split('+')[0]}")
PY
)
echo "torch from https://download.pytorch.org/whl/$TORCH_INDEX: $versions"
# shellcheck disable=SC2086  # two requirements
"$UV" pip install --python "$BIN/python" --reinstall-package torch --reinstall-package torchvision \
  --index-url "https://download.pytorch.org/whl/$TORCH_INDEX" \
  --extra-index-url https://pypi.org/simple $versions  # first index wins: torch from PyTorch's
