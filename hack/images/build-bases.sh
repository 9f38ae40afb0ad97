#!/usr/bin/env bash
# Builds, once per machine, the local base images that stand in for the public ones on machines
# that cannot pull them (no Docker Hub, no ghcr.io): all from Debian's packages and PyPI.
#
#   localhost/fgo/debian:bookworm        debootstrap --variant=minbase (no Python)
#   localhost/fgo/python:3.11-bookworm   for python:3.11-slim-bookworm (PYTHON_IMAGE)
#   localhost/fgo/smi-build:bookworm     for ubuntu:22.04 (SMI_BUILD_IMAGE)
#   localhost/fgo/uv:0.13.8              for ghcr.io/astral-sh/uv (UV_IMAGE): uv from PyPI
#   localhost/fgo/pause:3.10             the real node's sandbox image (static pause.c)
#   localhost/fgo/gpu-test:bookworm      the real node's test GPU pods (shell, no Python)
#
# Idempotent: an image already in the store under its content key is kept; the debootstrap
# rootfs is cached as a tarball beside the store. Needs root and buildah.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/images/lib.sh
source "$here/lib.sh"
fgo_need_buildah
fgo_lock_store
mkdir -p "$FGO_IMAGES_DIR"

key=$(cat "$here/build-bases.sh" "$here/lib.sh" "$here"/bases/*.Dockerfile "$here/pause/pause.c" \
  | sha256sum | cut -c1-12)
stamp="$FGO_IMAGES_DIR/bases-$key.done"
all=("$FGO_BASE_DEBIAN" "$FGO_BASE_PYTHON" "$FGO_BASE_SMI_BUILD" "$FGO_BASE_UV" "$FGO_PAUSE_IMAGE" "$FGO_GPU_TEST_IMAGE")
if [[ -f "$stamp" ]]; then
  missing=0
  for image in "${all[@]}"; do fgo_image_exists "$image" || missing=1; done
  if ((missing == 0)); then
    echo "base images: cached (key $key)"
    exit 0
  fi
fi
rm -f "$FGO_IMAGES_DIR"/bases-*.done
started=$(date +%s)
mapfile -t bud < <(fgo_bud_args)

step() { echo "[bases] $*"; }

# 1. Debian minbase rootfs -> localhost/fgo/debian (the rootfs tarball is the slow part).
# Keyed by what debootstrap is asked for only, so editing the Dockerfiles does not redo it.
rootfs_key=$(echo "$FGO_DEBIAN_SUITE minbase $FGO_DEBIAN_MIRROR v2" | sha256sum | cut -c1-12)
rootfs_tar="$FGO_IMAGES_DIR/rootfs-$FGO_DEBIAN_SUITE-minbase-$rootfs_key.tar"
if [[ ! -f "$rootfs_tar" ]]; then
  command -v debootstrap >/dev/null 2>&1 || { echo "build-bases: debootstrap is not installed; run 'make host-deps'" >&2; exit 2; }
  step "debootstrap $FGO_DEBIAN_SUITE (minbase; about 2 minutes, once per machine) ..."
  tmp=$(mktemp -d "$FGO_IMAGES_DIR/rootfs.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  debootstrap --variant=minbase "$FGO_DEBIAN_SUITE" "$tmp/rootfs" "$FGO_DEBIAN_MIRROR" > "$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; echo "build-bases: debootstrap failed (log above)" >&2; exit 1; }
  # What an image does not need: downloaded .debs, package lists, docs, man pages, message
  # translations (33 MB); dpkg is told to skip them in later installs too, as Debian's slim
  # images do.
  rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/* \
    "$tmp"/rootfs/usr/share/doc/* "$tmp"/rootfs/usr/share/man/* "$tmp"/rootfs/usr/share/locale/* \
    "$tmp"/rootfs/usr/share/info/* "$tmp"/rootfs/var/log/*
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/locale/*' \
    'path-exclude /usr/share/info/*' 'path-exclude /usr/share/lintian/*' \
    > "$tmp/rootfs/etc/dpkg/dpkg.cfg.d/fgo-slim"
  tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
  rm -f "$FGO_IMAGES_DIR"/rootfs-*.tar
  mv "$tmp/rootfs.tar" "$rootfs_tar"
  rm -rf "$tmp"
  trap - EXIT
fi
step "$FGO_BASE_DEBIAN"
ctr=$(fgo_buildah from scratch)
fgo_buildah add "$ctr" "$rootfs_tar" / >/dev/null
fgo_buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd /bin/bash \
  --label org.opencontainers.image.title="fgo-debian-$FGO_DEBIAN_SUITE" \
  --label org.opencontainers.image.description="Debian $FGO_DEBIAN_SUITE minbase (debootstrap), local base image" \
  "$ctr"
fgo_buildah commit --quiet --rm "$ctr" "$FGO_BASE_DEBIAN" >/dev/null

# 2. Images derived from it by Dockerfile.
for pair in "python:$FGO_BASE_PYTHON" "smi-build:$FGO_BASE_SMI_BUILD" "gpu-test:$FGO_GPU_TEST_IMAGE"; do
  name=${pair%%:*}; image=${pair#*:}
  step "$image (bases/$name.Dockerfile)"
  fgo_buildah "${bud[@]}" --quiet --build-arg "DEBIAN_IMAGE=$FGO_BASE_DEBIAN" \
    -f "$here/bases/$name.Dockerfile" -t "$image" "$here/bases" >/dev/null
done

# 3. uv from PyPI (the same pin as hack/ensure-uv.sh), alone in an image like the public one.
step "$FGO_BASE_UV (uv $FGO_UV_VERSION from PyPI)"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
  --platform manylinux_2_17_x86_64 --python-version 3.11 -d "$ctx" "uv==$FGO_UV_VERSION"
python3 - "$ctx" <<'PY'
import sys, zipfile, pathlib
ctx = pathlib.Path(sys.argv[1])
wheel = next(ctx.glob("uv-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    for name in ("uv", "uvx"):
        member = next(m for m in zf.namelist() if m.endswith(f".data/scripts/{name}"))
        target = ctx / name
        target.write_bytes(zf.read(member))
        target.chmod(0o755)
PY
ctr=$(fgo_buildah from scratch)
fgo_buildah copy "$ctr" "$ctx/uv" "$ctx/uvx" / >/dev/null
fgo_buildah config --entrypoint '["/uv"]' --label org.opencontainers.image.title=uv \
  --label org.opencontainers.image.version="$FGO_UV_VERSION" "$ctr"
fgo_buildah commit --quiet --rm "$ctr" "$FGO_BASE_UV" >/dev/null

# 4. The sandbox image of the real node: one static binary.
step "$FGO_PAUSE_IMAGE (pause/pause.c, static)"
cc -static -Os -s -Wall -Werror -o "$ctx/pause" "$here/pause/pause.c"
ctr=$(fgo_buildah from scratch)
fgo_buildah copy "$ctr" "$ctx/pause" /pause >/dev/null
fgo_buildah config --entrypoint '["/pause"]' --user 65535:65535 \
  --label org.opencontainers.image.title=fgo-pause "$ctr"
fgo_buildah commit --quiet --rm "$ctr" "$FGO_PAUSE_IMAGE" >/dev/null

fgo_rm_build_containers
touch "$stamp"
echo "base images built in $(( $(date +%s) - started ))s (key $key):"
for image in "${all[@]}"; do
  printf '  %-40s %s\n' "$image" "$(fgo_image_size "$image")"
done
