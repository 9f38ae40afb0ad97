#!/usr/bin/env bash
# Build the standalone fake nvidia-smi: a PyInstaller one-dir bundle that runs in any glibc-based
# image without Python, plus a static launcher for the user-facing path /usr/bin/nvidia-smi.
#
# Output (git-ignored): <repo>/build/nvidia-smi/dist/nvidia-smi/
#   nvidia-smi      the bundle's executable (run it from this directory, or through the launcher)
#   _internal/      Python runtime + our code (PYZ), loaded relative to the executable
#   launcher        static binary: execs $FGO_NVIDIA_SMI_HOME/nvidia-smi (default
#                   /usr/local/fake-gpu/nvidia-smi); mount it at /usr/bin/nvidia-smi
#   libnvidia-ml.so.1  the fake NVML library (nvml/); mount it where NVIDIA's toolkit puts the
#                   real one (docs/nvml.md)
# See docs/nvidia-smi.md for the mount contract.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${FGO_SMI_BUILD_DIR:-$root/build/nvidia-smi}"
bundle="$out/dist/nvidia-smi"

cd "$root"
# Modules the bundle never needs: keeps it small and its start-up short. fgo_common's
# Kubernetes, HTTP and metrics helpers are never imported by nvidia-smi; excluding them makes
# an accidental import fail loudly in the bundle tests instead of silently slowing start-up.
excludes=(
  tkinter unittest pydoc doctest xmlrpc http.server sqlite3 lib2to3 ensurepip venv
  multiprocessing concurrent asyncio ssl _ssl _hashlib
  kubernetes_asyncio aiohttp prometheus_client structlog grpc google
  yaml _yaml  # topology.py imports PyYAML only inside to_yaml/from_yaml, never called here
)
args=()
for mod in "${excludes[@]}"; do args+=(--exclude-module "$mod"); done

uv run --all-packages --group build pyinstaller \
  --noconfirm --clean --log-level WARN \
  --onedir --name nvidia-smi --optimize 2 \
  --distpath "$out/dist" --workpath "$out/work" --specpath "$out" \
  --collect-data fgo_nvidia_smi \
  "${args[@]}" \
  "$here/packaging/entry.py"

if command -v cc >/dev/null 2>&1; then
  cc -static -Os -s -o "$bundle/launcher" "$here/packaging/launcher.c"
else
  # No C compiler: a shell launcher with the same behaviour (needs /bin/sh in the image).
  cat > "$bundle/launcher" <<'LAUNCHER'
#!/bin/sh
home="${FGO_NVIDIA_SMI_HOME:-/usr/local/fake-gpu}"
[ -x "$home/nvidia-smi" ] && exec "$home/nvidia-smi" "$@"
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."
echo "fake nvidia-smi: cannot run $home/nvidia-smi" >&2
exit 9
LAUNCHER
  chmod 755 "$bundle/launcher"
fi
# The fake libnvidia-ml.so.1 (nvml/, docs/nvml.md) next to the executable it runs for its data.
if command -v "${CC:-cc}" >/dev/null 2>&1; then
  "$here/nvml/build.sh" "$bundle" >/dev/null
else
  echo "build.sh: no C compiler: the bundle has no libnvidia-ml.so.1 (GPU pods get no NVML)" >&2
fi
echo "built $bundle"
