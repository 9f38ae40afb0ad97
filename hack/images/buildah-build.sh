#!/usr/bin/env bash
# `make images` without a Docker engine: the same services/*/Dockerfile built by buildah
# (chroot isolation, overlay storage in ~/.cache/fgo/images), FROM the local base images of
# build-bases.sh unless PYTHON_IMAGE / SMI_BUILD_IMAGE / UV_IMAGE name others.
#
# Each image is exported as an OCI archive (what `ctr images import` and `skopeo copy` read) to
#   ~/.cache/fgo/images/out/<service>-<key>.oci.tar
# keyed by the build context's content, the Dockerfile, the bases and the revision label, so an
# unchanged tree costs seconds. ~/.cache/fgo/images/index.json lists the newest archive of every
# image (services plus the real node's pause and gpu-test images). PUSH=1 pushes to REGISTRY.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=hack/images/lib.sh
source "$here/lib.sh"
fgo_need_buildah
fgo_lock_store
cd "$root"

: "${REGISTRY:?}" "${TAG:?}" "${SERVICES:?}"
PUSH="${PUSH:-}"
"$here/build-bases.sh"
PYTHON_IMAGE="${PYTHON_IMAGE:-$FGO_BASE_PYTHON}"
SMI_BUILD_IMAGE="${SMI_BUILD_IMAGE:-$FGO_BASE_SMI_BUILD}"
UV_IMAGE="${UV_IMAGE:-$FGO_BASE_UV}"
out_dir="$FGO_IMAGES_DIR/out"
mkdir -p "$out_dir"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain -- libs services pyproject.toml uv.lock hack/images 2>/dev/null)" ]]; then
  revision="$revision-dirty"
fi
source_url="https://github.com/fake-gpu-operator/fake-gpu-operator"
mapfile -t bud < <(fgo_bud_args --host-trust)

# What the Dockerfiles can COPY: tracked and untracked-but-not-ignored files of the context.
context_hash=$(git ls-files -co --exclude-standard -- pyproject.toml uv.lock libs services hack/images \
  | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum | cut -c1-16)
base_ids=$(for image in "$PYTHON_IMAGE" "$SMI_BUILD_IMAGE" "$UV_IMAGE"; do
  fgo_buildah inspect --type image --format '{{.FromImageID}}' "$image"; done | sha256sum | cut -c1-16)

report=()
for service in $SERVICES; do
  image="$REGISTRY/$service:$TAG"
  key=$(printf '%s %s %s %s %s' "$context_hash" "$base_ids" "$image" "$revision" \
    "$(sha256sum "services/$service/Dockerfile")" | sha256sum | cut -c1-16)
  archive="$out_dir/$service-$key.oci.tar"
  started=$(date +%s)
  if [[ -f "$archive" ]] && fgo_image_exists "$image"; then
    echo "==> $image: cached ($archive)"
    took="cached"
  else
    echo "==> $image (services/$service/Dockerfile, buildah)"
    log="$out_dir/$service.build.log"
    if ! fgo_buildah "${bud[@]}" --file "services/$service/Dockerfile" --tag "$image" \
        --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "SMI_BUILD_IMAGE=$SMI_BUILD_IMAGE" \
        --build-arg "UV_IMAGE=$UV_IMAGE" \
        --label "org.opencontainers.image.version=$TAG" \
        --label "org.opencontainers.image.revision=$revision" \
        --label "org.opencontainers.image.source=$source_url" \
        --annotation "org.opencontainers.image.title=fgo-$service" \
        --annotation "org.opencontainers.image.version=$TAG" \
        --annotation "org.opencontainers.image.revision=$revision" \
        --annotation "org.opencontainers.image.source=$source_url" \
        . > "$log" 2>&1; then
      tail -30 "$log" >&2
      echo "make images: building $image failed (full log: $log)" >&2
      exit 1
    fi
    fgo_rm_build_containers
    rm -f "$out_dir/$service"-*.oci.tar
    fgo_buildah push --quiet "$image" "oci-archive:$archive.tmp:$image"
    mv "$archive.tmp" "$archive"
    took="$(( $(date +%s) - started ))s"
  fi
  if [[ -n "$PUSH" ]]; then
    fgo_buildah push "$image" "docker://$image"
  fi
  report+=("$(printf '%-52s %10s %8s' "$image" "$(fgo_image_size "$image")" "$took")")
done

# The real node's own images go into the index too (exported once; they change with bases).
for image in "$FGO_PAUSE_IMAGE" "$FGO_GPU_TEST_IMAGE"; do
  id=$(fgo_buildah inspect --type image --format '{{.FromImageID}}' "$image" | cut -c1-16)
  name=${image##*/}; name=${name%%:*}
  archive="$out_dir/$name-$id.oci.tar"
  if [[ ! -f "$archive" ]]; then
    rm -f "$out_dir/$name"-*.oci.tar
    fgo_buildah push --quiet "$image" "oci-archive:$archive.tmp:$image"
    mv "$archive.tmp" "$archive"
  fi
done

# Every code change leaves the previous images' layers behind as the layer cache. Bounded: past
# FGO_IMAGES_MAX_GB (default 8) of store, dangling images go (the next build redoes its layers).
store_gb=$(( $(du -sxk "$FGO_BUILDAH_ROOT" | cut -f1) / 1024 / 1024 ))
if (( store_gb > ${FGO_IMAGES_MAX_GB:-8} )); then
  echo "image store is ${store_gb} GB: pruning dangling images"
  fgo_buildah rmi --prune >/dev/null || true
fi

python3 - "$FGO_IMAGES_DIR/index.json" "$out_dir" "$REGISTRY" "$TAG" "$revision" $SERVICES <<'PY'
import json, os, sys, tempfile
from pathlib import Path
index_path, out_dir, registry, tag, revision, *services = sys.argv[1:]
index = {"images": []}
try:
    index = json.loads(Path(index_path).read_text())
except (OSError, ValueError):
    pass
by_name = {entry["name"]: entry for entry in index.get("images", [])}
for archive in sorted(Path(out_dir).glob("*.oci.tar")):
    stem = archive.name.rsplit("-", 1)[0]
    if stem in services:
        name, role = f"{registry}/{stem}:{tag}", "service"
    elif stem in ("pause", "gpu-test"):
        name, role = {"pause": os.environ["FGO_PAUSE_IMAGE"], "gpu-test": os.environ["FGO_GPU_TEST_IMAGE"]}[stem], stem
    else:
        continue
    by_name[name] = {"name": name, "archive": str(archive), "role": role, "revision": revision if role == "service" else ""}
by_name = {n: e for n, e in by_name.items() if Path(e["archive"]).is_file()}
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(index_path))
with os.fdopen(fd, "w") as f:
    json.dump({"images": sorted(by_name.values(), key=lambda e: e["name"])}, f, indent=2)
    f.write("\n")
os.replace(tmp, index_path)
PY

echo
printf '%-52s %10s %8s\n' IMAGE SIZE BUILD
printf '%s\n' "${report[@]}"
echo "archives: $out_dir (index: $FGO_IMAGES_DIR/index.json)"
