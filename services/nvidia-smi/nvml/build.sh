#!/usr/bin/env bash
# Compile the fake libnvidia-ml.so.1 (fakenvml.c, docs/nvml.md) into DIR (default
# <repo>/build/nvml). Plain C + glibc, no other dependency; the nvidia-smi bundle build
# (../build.sh) puts it next to the bundle's executable, where the node agents mount it from.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$root/build/nvml}"
mkdir -p "$out"
"${CC:-cc}" -shared -fPIC -O2 -std=gnu11 -fvisibility=hidden \
  -Wall -Wextra -Wno-unused-parameter \
  -Wl,-soname,libnvidia-ml.so.1 -Wl,--as-needed \
  -o "$out/libnvidia-ml.so.1.tmp" "$here/fakenvml.c" -lm -lpthread
mv -f "$out/libnvidia-ml.so.1.tmp" "$out/libnvidia-ml.so.1"
echo "$out/libnvidia-ml.so.1"
