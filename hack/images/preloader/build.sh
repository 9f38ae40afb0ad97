#!/bin/sh
# Build the no-op Run:ai preloader stub (preloader.c) into <out>/preloader.so.
#
#   hack/images/preloader/build.sh build/preloader      # CC=... to pick the compiler
#
# Run by the node agents' image build (services/{device-plugin,dra-plugin}/Dockerfile) and by
# the test that LD_PRELOADs it (services/device-plugin/tests/test_runai_preloader.py).
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUT_DIR}"
mkdir -p "$out"
# -nostdlib: no libc dependency at all, so the loader of any program (glibc or musl) maps it.
${CC:-gcc} -shared -fPIC -O2 -nostdlib -Wl,-soname,preloader.so -Wl,--build-id=none \
  -o "$out/preloader.so.tmp" "$here/preloader.c"
mv "$out/preloader.so.tmp" "$out/preloader.so"
echo "built $out/preloader.so"
