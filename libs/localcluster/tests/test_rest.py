from __future__ import annotations

from fgo_localcluster import manifests
from fgo_localcluster.rest import object_path


def test_object_paths_of_core_group_cluster_and_namespaced_objects() -> None:
    assert object_path(manifests.operator_namespace()) == "/api/v1/namespaces/gpu-operator"
    gpu_class = manifests.nvidia_device_classes()[0]
    assert object_path(gpu_class) == "/apis/resource.k8s.io/v1/deviceclasses/gpu.nvidia.com"
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "n1", "namespace": "kube-node-lease"},
    }
    assert object_path(lease) == "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "d"}}
    assert object_path(cm) == "/api/v1/namespaces/d/configmaps/x"
