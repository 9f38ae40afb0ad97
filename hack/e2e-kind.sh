#!/usr/bin/env bash
# make e2e-kind: the end-to-end scenarios of tests/e2e against a kind cluster running the real
# images, for machines with Docker. (make e2e runs the same scenarios on the local control
# plane, with the services as local processes; no Docker needed.)
#
#   1. build the images (hack/images.sh, REGISTRY=localhost/fgo TAG=e2e, loaded locally);
#   2. create kind cluster $KIND_CLUSTER (DRA feature gates; one worker labelled into pool
#      `default`) unless it exists, and load the images into it;
#   3. run the pinned KWOK binary against it (out of cluster), managing the KWOK nodes the
#      tests create, with the same stages as the local cluster;
#   4. pytest -m e2e tests/e2e with FGO_E2E_KUBECONFIG set: the tests install the chart with
#      helm into that cluster (image.registry/tag of step 1, pullPolicy Never) and check the
#      scenarios through the API, kubectl logs and the exporters' Services (test_real_node.py
#      left out: it brings its own control plane and real node).
#
# Environment: KIND_CLUSTER (default fgo-e2e), KIND_NODE_IMAGE (default: kind's default),
# KEEP_CLUSTER=1 to keep the cluster afterwards, PYTEST_ARGS extra pytest arguments.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
KIND_CLUSTER="${KIND_CLUSTER:-fgo-e2e}"
REGISTRY="localhost/fgo"
TAG="e2e"

fail() { echo "make e2e-kind: $*" >&2; exit 2; }
command -v docker >/dev/null 2>&1 || fail "docker is not installed; make e2e-kind needs Docker and kind. Without them, run make e2e (local control plane, no Docker)."
docker info >/dev/null 2>&1 || fail "no Docker engine is reachable (docker info failed); start Docker. Without Docker, run make e2e (local control plane)."
command -v kind >/dev/null 2>&1 || fail "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation). Without it, run make e2e (local control plane)."

bin_dir="${FGO_BIN_DIR:-$(hack/build-tools.sh --print-dir)}"
hack/build-tools.sh >/dev/null   # pinned kubectl, helm, kwok
REGISTRY="$REGISTRY" TAG="$TAG" hack/images.sh

work="$(mktemp -d)"
kwok_pid=""
cleanup() {
  [ -n "$kwok_pid" ] && kill "$kwok_pid" 2>/dev/null || true
  if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! kind get clusters | grep -qx "$KIND_CLUSTER"; then
  cat > "$work/kind.yaml" <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
featureGates:
  DynamicResourceAllocation: true
  DRAExtendedResource: true
runtimeConfig:
  resource.k8s.io/v1beta1: "true"
  resource.k8s.io/v1beta2: "true"
nodes:
  - role: control-plane
  - role: worker
    labels:
      run.ai/simulated-gpu-node-pool: default
KIND
  kind create cluster --name "$KIND_CLUSTER" --config "$work/kind.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi
kubeconfig="$work/kubeconfig"
kind get kubeconfig --name "$KIND_CLUSTER" > "$kubeconfig"
for service in status-updater device-plugin dra-plugin kwok-dra-plugin status-exporter; do
  kind load docker-image --name "$KIND_CLUSTER" "$REGISTRY/$service:$TAG"
done

"$bin_dir/kwok" --kubeconfig="$kubeconfig" \
  --config="libs/localcluster/src/fgo_localcluster/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --server-address=127.0.0.1:0 >"$work/kwok.log" 2>&1 &
kwok_pid=$!

FGO_BIN_DIR="$bin_dir" FGO_E2E_KUBECONFIG="$kubeconfig" \
  FGO_E2E_SET="image.registry=$REGISTRY,image.tag=$TAG,image.pullPolicy=Never" \
  uv run --frozen pytest -m e2e tests/e2e --ignore=tests/e2e/test_real_node.py ${PYTEST_ARGS:-}
