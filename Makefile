# fake-gpu-operator: the single entry point. `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.local/bin:$(PATH)

UV_RUN      := uv run --frozen --python 3.11
PYTEST      := $(UV_RUN) pytest
TOOLS_BIN    = $(shell hack/build-tools.sh --print-dir)
UNIT_PATHS  := libs services bench
STATE_DIR   ?= .fgo/cluster

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Install uv (pinned) and the Python workspace from uv.lock
	@hack/ensure-uv.sh

.PHONY: tools
tools: ## Build the pinned control-plane binaries once per machine (cached in ~/.cache/fgo)
	@hack/build-tools.sh

.PHONY: tools-oldest
tools-oldest: tools ## Build the oldest Kubernetes the chart accepts (v1.31, tools/oldest/go.mod) once per machine (~8-13 min on 2 cores; cached in ~/.cache/fgo)
	@hack/build-tools.sh --oldest

.PHONY: node-tools
node-tools: host-deps ## Build the real node's binaries once per machine (containerd, runc, CNI, crictl, kubelet; ~3 min)
	@hack/build-node-tools.sh

.PHONY: host-deps
host-deps: ## Install Debian packages the tests, images and the real node use (prometheus, debootstrap, buildah, iptables, conntrack, libseccomp-dev), idempotently
	@hack/install-host-deps.sh

.PHONY: lint
lint: setup ## ruff lint + format check
	$(UV_RUN) ruff check .
	$(UV_RUN) ruff format --check .

.PHONY: fmt
fmt: setup ## Apply ruff fixes and formatting
	$(UV_RUN) ruff check --fix .
	$(UV_RUN) ruff format .

.PHONY: types
types: setup ## mypy --strict over every package's src/
	$(UV_RUN) mypy libs/*/src services/*/src

.PHONY: unit
unit: setup tools ## Unit tests (pure logic, fast; the chart tests render with the pinned helm)
	$(PYTEST) -m "not integration and not e2e" $(UNIT_PATHS) tests/coherence tests/conformance tests/repo tests/chart tests/badinput

.PHONY: integration
integration: setup tools node-tools host-deps images ## Integration tests against the real local control plane (and a real node), the images as runc containers, the quick fault suite
	FGO_BIN_DIR=$(TOOLS_BIN) $(PYTEST) -m integration tests/images tests/integration tests/chart tests/badinput $(UNIT_PATHS) tests/faults

# The version matrix (issue 19): a representative subset (status-updater, device plugin KWOK
# mode, the DRA KWOK publisher, the default chart install with its exporter, the optional-API
# contract) against the oldest Kubernetes the chart accepts, which serves no resource.k8s.io
# version we speak. Its own control plane; the DRA-claim tests of the status-updater need DRA.
MATRIX_TESTS := tests/integration/test_optional_apis.py tests/integration/test_dra_versions.py \
	tests/integration/test_status_updater.py tests/integration/test_device_plugin_kwok.py \
	tests/integration/test_quiet_install.py \
	--deselect tests/integration/test_status_updater.py::test_dra_shared_claim_and_foreign_driver \
	--deselect tests/integration/test_status_updater.py::test_bad_inputs_are_reported_not_fatal

.PHONY: integration-oldest
integration-oldest: setup tools-oldest ## The integration subset on the oldest supported Kubernetes (v1.31.14; ~2-3 min)
	FGO_BIN_DIR=$$(hack/build-tools.sh --oldest --print-dir) $(PYTEST) -m integration $(MATRIX_TESTS)

.PHONY: e2e
e2e: setup tools node-tools host-deps images ## End-to-end scenarios: the chart installed into the local control plane, and on a real node (root)
	FGO_BIN_DIR=$(TOOLS_BIN) $(PYTEST) -m e2e tests/e2e

# The real-node modules run every pod of the chart from its image already; once is enough.
.PHONY: e2e-images
e2e-images: setup tools node-tools host-deps images ## The e2e scenarios again, every Deployment of the chart running from its image (runc)
	FGO_BIN_DIR=$(TOOLS_BIN) FGO_E2E_RUNTIME=containers $(PYTEST) -m e2e tests/e2e \
		--ignore=tests/e2e/test_real_node.py --ignore=tests/e2e/test_runai_real_node.py

.PHONY: test
test: lint types unit integration integration-oldest e2e e2e-images ## THE test command (CI runs this): lint, types, unit, integration (also on the oldest Kubernetes), e2e (processes and images)

# `make demo REAL_NODE=1` (root): also a real kubelet + containerd node running the chart's pods
# and a GPU pod to `kubectl exec ... nvidia-smi` into (needs the node tools and the images).
REAL_NODE ?=

.PHONY: demo
demo: setup tools $(if $(REAL_NODE),node-tools images) ## Start a local simulated GPU cluster with two KWOK GPU nodes and a GPU pod (REAL_NODE=1: plus a real node)
	FGO_BIN_DIR=$(TOOLS_BIN) $(UV_RUN) fgo demo --state-dir $(STATE_DIR) $(if $(REAL_NODE),--real-node)

.PHONY: cluster-up
cluster-up: setup tools ## Start the local control plane only
	FGO_BIN_DIR=$(TOOLS_BIN) $(UV_RUN) fgo cluster up --state-dir $(STATE_DIR)

.PHONY: cluster-down
cluster-down: setup ## Stop the local control plane and `make demo`'s services (STATE_DIR=... for another state dir)
	$(UV_RUN) fgo cluster down --state-dir $(STATE_DIR)

# `make bench` knobs (docs/benchmarks.md); e.g. `make bench BENCH_NODES=100` for a quick run.
BENCH_NODES      ?= 100,500,1000
BENCH_PODS       ?= 200
BENCH_SCHED_PODS ?= 500
BENCH_RATE       ?= 0
BENCH_SCENARIOS  ?= nvidia-smi,components,bringup,exporter,footprint,churn,scheduler
BENCH_ARGS       ?=

.PHONY: bench
bench: setup tools ## Scale/performance scenarios -> bench-results/latest/report.md (not part of `test`)
	@# The images ship compiled bytecode (UV_COMPILE_BYTECODE=1); so do the services measured here.
	$(UV_RUN) python -m compileall -q -j 0 .venv/lib libs services > /dev/null
	FGO_BIN_DIR=$(TOOLS_BIN) $(UV_RUN) --group bench python -m bench.run \
		--nodes $(BENCH_NODES) --pods $(BENCH_PODS) --sched-pods $(BENCH_SCHED_PODS) \
		--rate $(BENCH_RATE) --scenarios $(BENCH_SCENARIOS) $(BENCH_ARGS)

# `make soak` (docs/reliability.md): the fault suite repeated for SOAK_SECONDS in total, outages
# of 10-30 s; the table goes to bench-results/faults/soak-latest.md. Not part of `test`.
SOAK_SECONDS ?= 3600

.PHONY: soak
soak: setup tools host-deps ## Fault suite repeated for SOAK_SECONDS (default 1 h) -> bench-results/faults/
	FGO_BIN_DIR=$(TOOLS_BIN) FGO_FAULT_SOAK_SECONDS=$(SOAK_SECONDS) $(PYTEST) -m integration tests/faults

# Images and chart (docs/chart.md). `make images REGISTRY=ghcr.io/me TAG=dev PUSH=1`.
REGISTRY ?= ghcr.io/fake-gpu-operator
TAG      ?=

.PHONY: images
images: host-deps ## Build one image per service: docker buildx if an engine runs, else buildah as root (REGISTRY, TAG, PUSH=1, PLATFORMS)
	REGISTRY=$(REGISTRY) TAG=$(TAG) hack/images.sh

.PHONY: chart
chart: setup tools ## Check and package the Helm chart into dist/ (CHART_VERSION, APP_VERSION)
	FGO_BIN_DIR=$(TOOLS_BIN) hack/chart-package.sh

.PHONY: chart-test
chart-test: setup tools ## Chart: lint/render matrix (unit) + its objects on the local control plane
	FGO_BIN_DIR=$(TOOLS_BIN) $(PYTEST) tests/chart

.PHONY: e2e-kind
e2e-kind: setup tools ## End-to-end scenarios on kind with the real images (needs Docker and kind)
	FGO_BIN_DIR=$(TOOLS_BIN) hack/e2e-kind.sh

.PHONY: protos
protos: setup ## Regenerate gRPC stubs from our kubelet .proto files
	hack/gen-protos.sh

.PHONY: clean
clean: ## Remove local state, caches and build output (not the tool cache)
	rm -rf .fgo build dist .pytest_cache .mypy_cache .ruff_cache
