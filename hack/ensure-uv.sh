#!/usr/bin/env bash
# Makes sure the pinned uv is on PATH (from PyPI), then syncs the workspace from uv.lock.
set -euo pipefail
UV_VERSION=0.13.8
if ! command -v uv >/dev/null 2>&1 || [[ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]]; then
  echo "installing uv $UV_VERSION from PyPI ..."
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
cd "$(dirname "$0")/.."
# --all-packages: every member's default (dev) group too, e.g. the test-only consumers of
# nvidia-smi output (pandas, GPUtil, nvsmi) that services/nvidia-smi declares for its tests.
uv sync --frozen --python 3.11 --all-packages --quiet
