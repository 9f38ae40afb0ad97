#!/usr/bin/env bash
# Package the Helm chart into dist/ (make chart), after checking it: the generated files are
# current (hack/gen-chart.py --check) and `helm lint --strict` passes.
#
#   make chart                               # dist/fake-gpu-operator-<version>.tgz
#   make chart CHART_VERSION=0.2.0 APP_VERSION=0.2.0
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin_dir="${FGO_BIN_DIR:-$(hack/build-tools.sh --print-dir)}"
helm="$bin_dir/helm"
[ -x "$helm" ] || { echo "make chart: $helm is missing; run make tools" >&2; exit 2; }
kube_version="$("$bin_dir/kubectl" version --client -o json | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -1)"

uv run --frozen python hack/gen-chart.py --check
"$helm" lint --strict --kube-version "$kube_version" charts/fake-gpu-operator
args=()
[ -n "${CHART_VERSION:-}" ] && args+=(--version "$CHART_VERSION")
[ -n "${APP_VERSION:-}" ] && args+=(--app-version "$APP_VERSION")
mkdir -p dist
"$helm" package charts/fake-gpu-operator --destination dist "${args[@]}"
