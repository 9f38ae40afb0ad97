#!/usr/bin/env bash
# Builds the real node's binaries (`fgo cluster add-real-node`) from the Go module proxy, once
# per machine: containerd 2.x, containerd-shim-runc-v2, ctr, runc, the CNI plugins bridge,
# host-local and loopback, and crictl from the pins in tools/node/go.mod; kubelet from the
# control plane's own pin in tools/go.mod (same Kubernetes version, same -X ldflags as
# hack/build-tools.sh). Cached outside the repo under
# ${FGO_CACHE_DIR:-~/.cache/fgo}/node-tools-<hash of both modules, this script, Go version>/bin.
# Idempotent; one `go build` at a time; each binary is built to a temp name and renamed.
#
# runc is the one cgo build: its nsenter part is C, and it is built with the `seccomp` tag
# (libseccomp-dev, installed by hack/install-host-deps.sh) because the chart's pods ask for the
# RuntimeDefault seccomp profile, which a runc without seccomp refuses to run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tools="$repo/tools"
node="$tools/node"
cache_root=${FGO_CACHE_DIR:-$HOME/.cache/fgo}
key=$(cat "$node/go.mod" "$node/go.sum" "$tools/go.mod" "$tools/go.sum" "$0" <(go version) \
  | sha256sum | cut -c1-12)
out="$cache_root/node-tools-$key/bin"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$out"
  exit 0
fi

# `require` block lines look like "<tab>module version"; accept the one-line form too.
mod_version() {
  awk -v m="$2" '($1=="require" && $2==m) {print $3; exit} ($1==m) {print $2; exit}' "$1"
}
k8s_version=$(mod_version "$tools/go.mod" k8s.io/kubernetes)
containerd_version=$(mod_version "$node/go.mod" github.com/containerd/containerd/v2)
runc_version=$(mod_version "$node/go.mod" github.com/opencontainers/runc)
cni_version=$(mod_version "$node/go.mod" github.com/containernetworking/plugins)
crictl_version=$(mod_version "$node/go.mod" sigs.k8s.io/cri-tools)
for v in k8s_version containerd_version runc_version cni_version crictl_version; do
  if [[ -z "${!v}" ]]; then
    echo "build-node-tools: cannot read ${v%_version}'s version from tools/go.mod or tools/node/go.mod" >&2
    exit 1
  fi
done
if ! pkg-config --exists libseccomp 2>/dev/null; then
  echo "build-node-tools: libseccomp-dev is missing (runc is built with seccomp); run hack/install-host-deps.sh" >&2
  exit 1
fi

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
containerd_ldflags="-s -w \
 -X github.com/containerd/containerd/v2/version.Version=$containerd_version \
 -X github.com/containerd/containerd/v2/version.Revision=fgo"
cni_ldflags="-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version"

# name | module dir | package | cgo | tags | ldflags
targets=(
  "containerd|$node|github.com/containerd/containerd/v2/cmd/containerd|0||$containerd_ldflags"
  "containerd-shim-runc-v2|$node|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2|0||$containerd_ldflags"
  "ctr|$node|github.com/containerd/containerd/v2/cmd/ctr|0||$containerd_ldflags"
  "runc|$node|github.com/opencontainers/runc|1|seccomp|-s -w -X main.version=${runc_version#v}"
  "cni/bridge|$node|github.com/containernetworking/plugins/plugins/main/bridge|0||$cni_ldflags"
  "cni/host-local|$node|github.com/containernetworking/plugins/plugins/ipam/host-local|0||$cni_ldflags"
  "cni/loopback|$node|github.com/containernetworking/plugins/plugins/main/loopback|0||$cni_ldflags"
  "crictl|$node|sigs.k8s.io/cri-tools/cmd/crictl|0||-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version"
  "kubelet|$tools|k8s.io/kubernetes/cmd/kubelet|0||$k8s_ldflags"
)

mkdir -p "$out/cni"
total=${#targets[@]}
i=0
for entry in "${targets[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name dir pkg cgo tags ldflags <<<"$entry"
  if [[ -x "$out/$name" ]]; then
    echo "[$i/$total] $name: cached ($out/$name)"
    continue
  fi
  echo "[$i/$total] building $name from $pkg (first build on this machine; a minute or more) ..."
  start=$(date +%s)
  tmp="$out/$(dirname "$name")/.$(basename "$name").tmp"
  (cd "$dir" && CGO_ENABLED=$cgo go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp" "$pkg")
  mv "$tmp" "$out/$name"
  echo "[$i/$total] $name built in $(( $(date +%s) - start ))s"
done
cat >"$out/.versions.tmp" <<EOF
kubelet $k8s_version
containerd $containerd_version
runc $runc_version
cni-plugins $cni_version
crictl $crictl_version
EOF
mv "$out/.versions.tmp" "$out/VERSIONS"
echo "node tools ready in $out"
