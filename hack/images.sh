#!/usr/bin/env bash
# Build (and optionally push) one image per service, from services/<service>/Dockerfile.
#
#   make images                                  # build for the local engine (--load)
#   make images REGISTRY=ghcr.io/me TAG=dev PUSH=1 PLATFORMS=linux/amd64,linux/arm64
#
# Builder: docker buildx where a Docker engine answers; otherwise (machines without Docker, as
# root) buildah with chroot isolation from Debian's packages (hack/images/buildah-build.sh),
# FROM local base images built from Debian's packages and PyPI (hack/images/build-bases.sh)
# unless PYTHON_IMAGE / SMI_BUILD_IMAGE / UV_IMAGE are given. BUILDER=docker|buildah forces one.
#
# Image names are <REGISTRY>/<service>:<TAG>, the names the chart uses (image.registry,
# image.tag; repositories status-updater, device-plugin, dra-plugin, kwok-dra-plugin,
# status-exporter, nvidia-smi). The build context is the repository root. TAG defaults to the
# chart's appVersion, REGISTRY to the chart's default registry.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
chart_app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/fake-gpu-operator/Chart.yaml)"
export REGISTRY="${REGISTRY:-ghcr.io/fake-gpu-operator}"
export TAG="${TAG:-$chart_app_version}"
PUSH="${PUSH:-}"
PLATFORMS="${PLATFORMS:-}"
export SERVICES="${SERVICES:-$(cd services && for d in */; do [ -f "$d/Dockerfile" ] && printf '%s ' "${d%/}"; done)}"
BUILDER="${BUILDER:-}"

if [[ -z "$BUILDER" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    BUILDER=docker
  else
    BUILDER=buildah
  fi
fi
if [[ "$BUILDER" == buildah ]]; then
  [[ -z "$PLATFORMS" ]] || { echo "make images: PLATFORMS needs docker buildx; buildah builds for this machine only" >&2; exit 2; }
  export PUSH
  exec hack/images/buildah-build.sh
fi

fail() { echo "make images: $*" >&2; exit 2; }

command -v docker >/dev/null 2>&1 \
  || fail "docker is not installed. Images need a Docker engine with buildx; build them on a machine that has one (see docs/chart.md, \"Images\")."
if ! err="$(docker info 2>&1 >/dev/null)"; then
  fail "no Docker engine is reachable (docker info: $(echo "$err" | tail -1)). Start Docker, or build on a machine with Docker and buildx (see docs/chart.md, \"Images\")."
fi
docker buildx version >/dev/null 2>&1 \
  || fail "docker buildx is not available; install the buildx plugin (https://docs.docker.com/build/)."

output=(--load)
if [ -n "$PUSH" ]; then
  output=(--push)
elif [ -n "$PLATFORMS" ] && [[ "$PLATFORMS" == *,* ]]; then
  fail "a multi-platform build cannot be loaded into the local engine; set PUSH=1 (and REGISTRY)."
fi
platform=()
[ -n "$PLATFORMS" ] && platform=(--platform "$PLATFORMS")

for service in $SERVICES; do
  image="$REGISTRY/$service:$TAG"
  echo "==> $image (services/$service/Dockerfile)"
  docker buildx build "${platform[@]}" "${output[@]}" \
    --file "services/$service/Dockerfile" \
    --tag "$image" \
    --label "org.opencontainers.image.version=$TAG" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    .
done
echo "built: $(for s in $SERVICES; do printf '%s ' "$REGISTRY/$s:$TAG"; done)"
echo "install with: helm upgrade -i gpu-operator charts/fake-gpu-operator --set image.registry=$REGISTRY --set image.tag=$TAG"
