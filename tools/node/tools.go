//go:build tools

// Package tools records the real node's binaries this module builds so `go mod tidy` keeps
// them: containerd 2.x (CRI + CDI), its runc shim and ctr, runc, the CNI plugins the node
// uses, and crictl. kubelet is built from ../go.mod (the control plane's Kubernetes pin).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/opencontainers/runc"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
