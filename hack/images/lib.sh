# shellcheck shell=bash
# Shared by the daemonless image scripts (build-bases.sh, buildah-build.sh, run-image.py users):
# one buildah storage for everything this project builds, outside the clone and keyed by nothing
# (images in it are named and content-keyed), so fresh clones on the same machine reuse it.
FGO_CACHE_DIR=${FGO_CACHE_DIR:-$HOME/.cache/fgo}
FGO_IMAGES_DIR=${FGO_IMAGES_DIR:-$FGO_CACHE_DIR/images}
FGO_BUILDAH_ROOT=$FGO_IMAGES_DIR/storage
FGO_BUILDAH_RUNROOT=$FGO_IMAGES_DIR/run
# The local base images (hack/images/build-bases.sh) and the pins they stand in for.
FGO_DEBIAN_SUITE=bookworm
FGO_DEBIAN_MIRROR=${FGO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
FGO_BASE_DEBIAN=localhost/fgo/debian:$FGO_DEBIAN_SUITE
FGO_BASE_PYTHON=localhost/fgo/python:3.11-$FGO_DEBIAN_SUITE
FGO_BASE_SMI_BUILD=localhost/fgo/smi-build:$FGO_DEBIAN_SUITE
FGO_UV_VERSION=0.13.8
FGO_BASE_UV=localhost/fgo/uv:$FGO_UV_VERSION
export FGO_PAUSE_IMAGE=localhost/fgo/pause:3.10
export FGO_GPU_TEST_IMAGE=localhost/fgo/gpu-test:$FGO_DEBIAN_SUITE

fgo_buildah() {
  # overlay: layers are shared, not copied (vfs would copy every layer of every step).
  buildah --root "$FGO_BUILDAH_ROOT" --runroot "$FGO_BUILDAH_RUNROOT" --storage-driver overlay "$@"
}

fgo_image_exists() {
  fgo_buildah inspect --type image "$1" >/dev/null 2>&1
}

# buildah-bud arguments every build here shares. With "--host-trust", RUN steps see the host's
# trust store over the image's (which must exist: the base images install ca-certificates), so
# a TLS-inspecting proxy in front of the package registries works without baking its CA into an
# image; the mount is not part of any layer.
fgo_bud_args() {
  local args=(bud --isolation chroot --layers --network host --pull=never)
  if [[ "${1:-}" == --host-trust && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  fi
  printf '%s\n' "${args[@]}"
}

# buildah bud leaves the working container of a stage that has no instruction of its own
# (`FROM uv-image AS uv`), mounted; nothing else here is named like these.
fgo_rm_build_containers() {
  fgo_buildah containers --format '{{.ContainerName}}' \
    | grep -E -- '-working-container(-[0-9]+)?$' | xargs -r buildah --root "$FGO_BUILDAH_ROOT" \
      --runroot "$FGO_BUILDAH_RUNROOT" --storage-driver overlay rm >/dev/null || true
}

# One image build at a time per store: two clones building at once would each remove the
# other's working containers (fgo_rm_build_containers) and race on tags. Held until exit; child
# scripts (build-bases.sh under buildah-build.sh) inherit it.
fgo_lock_store() {
  [[ -n "${FGO_IMAGES_LOCK_HELD:-}" ]] && return 0
  mkdir -p "$FGO_IMAGES_DIR"
  exec 9>>"$FGO_IMAGES_DIR/.build.lock"
  if ! flock -n 9; then
    echo "waiting for another image build on this machine to finish ($FGO_IMAGES_DIR) ..."
    flock 9
  fi
  export FGO_IMAGES_LOCK_HELD=1
}

fgo_need_buildah() {
  if ! command -v buildah >/dev/null 2>&1; then
    echo "make images: buildah is not installed; run 'make host-deps' (Debian package buildah) or use a machine with a Docker engine" >&2
    exit 2
  fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "make images: building without Docker needs root (buildah with chroot isolation); run as root or on a machine with a Docker engine" >&2
    exit 2
  fi
}

# The uncompressed size buildah reports, e.g. "209 MB" (decimal units).
fgo_image_size() {
  fgo_buildah images --noheading --format '{{.Size}}' "$1" | head -1
}
