#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok, helm) from the pinned
# Go modules in tools/go.mod, once per machine: the result is cached outside the
# repo under ${FGO_CACHE_DIR:-~/.cache/fgo}/tools-<hash of go.mod, go.sum, Go version>/bin,
# so fresh clones reuse it. Idempotent; prints progress for the long builds.
#
# --oldest: the control plane of the oldest Kubernetes the chart accepts (tools/oldest/go.mod,
# for the version matrix): kube-apiserver, kube-controller-manager and kube-scheduler built from
# there, etcd, kubectl, KWOK and helm linked from the default set (built first if missing).
# Usage: build-tools.sh [--oldest] [--print-dir]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tools="$repo/tools"
cache_root=${FGO_CACHE_DIR:-$HOME/.cache/fgo}
oldest=0
print_dir=0
for arg in "$@"; do
  case "$arg" in
    --oldest) oldest=1 ;;
    --print-dir) print_dir=1 ;;
    *) echo "build-tools: unknown argument $arg (usage: build-tools.sh [--oldest] [--print-dir])" >&2; exit 2 ;;
  esac
done
if [[ $oldest == 1 ]]; then
  shared=$("$repo/hack/build-tools.sh" --print-dir)
  tools="$tools/oldest"
  key=$(cat "$tools/go.mod" "$tools/go.sum" <(go version) | sha256sum | cut -c1-12)
else
  key=$(cat "$tools/go.mod" "$tools/go.sum" "$tools/cmd/etcd/main.go" <(go version) | sha256sum | cut -c1-12)
fi
# go.mod lists k8s.io/kubernetes inside a `require ( ... )` block; accept the one-line form too.
k8s_version=$(awk '($1=="require" && $2=="k8s.io/kubernetes") {print $3; exit}
                   ($1=="k8s.io/kubernetes") {print $2; exit}' "$tools/go.mod")
# An empty version would be linked into the binaries as gitVersion="", and every
# Kubernetes component panics at start-up parsing it (component-base compatibility).
if [[ -z "$k8s_version" ]]; then
  echo "build-tools: cannot find the k8s.io/kubernetes version in $tools/go.mod" >&2
  exit 1
fi
out="$cache_root/tools-$k8s_version-$key/bin"

if [[ $print_dir == 1 ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out"
minor=${k8s_version#v1.}; minor=${minor%%.*}
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

targets=(
  "etcd ./cmd/etcd"
  "kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler"
  "kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager"
  "kubectl k8s.io/kubernetes/cmd/kubectl"
  "kwok sigs.k8s.io/kwok/cmd/kwok"
  "helm helm.sh/helm/v3/cmd/helm"
)
if [[ $oldest == 1 ]]; then
  "$repo/hack/build-tools.sh"  # the shared binaries
  for name in etcd kubectl kwok helm; do
    ln -sfn "$shared/$name" "$out/$name"
  done
  targets=("${targets[@]:1:3}")
fi

# heartbeat PID MESSAGE START: while PID runs, print MESSAGE and the time since START (epoch
# seconds) every 30 s.
heartbeat() {
  local pid=$1 message=$2 started=$3 last now
  last=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    now=$(date +%s)
    if (( now - last >= 30 )) && kill -0 "$pid" 2>/dev/null; then
      echo "$message: $(( (now - started) / 60 ))m$(( (now - started) % 60 ))s elapsed"
      last=$now
    fi
  done
}
# A build still running when this script stops (Ctrl-C, an error) is stopped with it.
build_pid=""
trap 'if [[ -n "$build_pid" ]]; then kill "$build_pid" 2>/dev/null || true; fi' EXIT

total=${#targets[@]}
i=0
cd "$tools"
for entry in "${targets[@]}"; do
  i=$((i + 1))
  name=${entry%% *}
  pkg=${entry#* }
  if [[ -x "$out/$name" ]]; then
    echo "[$i/$total] $name: cached ($out/$name)"
    continue
  fi
  echo "[$i/$total] building $name from $pkg (first build on this machine; several minutes) ..."
  start=$(date +%s)
  # Build to a temp name and rename, so an interrupted build never leaves a broken binary.
  # In the background, so a heartbeat can say what is going on: a first build is silent for
  # minutes otherwise, which reads as a hang.
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg" &
  build_pid=$!
  heartbeat "$build_pid" "[$i/$total] still building $name" "$start"
  wait "$build_pid"
  mv "$out/.$name.tmp" "$out/$name"
  echo "[$i/$total] $name built in $(( $(date +%s) - start ))s"
done
echo "tools ready in $out"
