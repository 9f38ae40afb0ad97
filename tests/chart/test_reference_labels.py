"""The reference chart's labels and selectors on our objects (issue 18, points 2 and 3).

Users of run-ai/fake-gpu-operator select its pods and Services by ``app``/``component`` labels
(``kubectl wait -l app=status-updater``, ServiceMonitors on ``app=nvidia-dcgm-exporter``). The
two workloads that keep the reference's names must keep its selectors: ``spec.selector`` is
immutable, so any other one fails ``helm upgrade`` from a reference release (tests/e2e has the
upgrade itself).
"""

from __future__ import annotations

import pytest
from chartlib import Rendered

# (kind, our name) -> the reference's labels for that component (upstream chart 0.2.0).
REFERENCE_POD_LABELS = {
    ("Deployment", "fgo-status-updater"): {"app": "status-updater", "component": "status-updater"},
    ("DaemonSet", "fgo-device-plugin"): {"app": "device-plugin", "component": "device-plugin"},
    ("Deployment", "fgo-kwok-gpu-capacity"): {
        "app": "kwok-gpu-device-plugin",
        "component": "kwok-gpu-device-plugin",
    },
    ("Deployment", "fgo-kwok-dra-plugin"): {
        "app": "kwok-dra-plugin",
        "component": "kwok-dra-plugin",
    },
    ("DaemonSet", "nvidia-dcgm-exporter"): {
        "app": "nvidia-dcgm-exporter",
        "component": "status-exporter",
    },
    ("Deployment", "nvidia-dcgm-exporter-kwok"): {"app": "nvidia-dcgm-exporter-kwok"},
    ("DaemonSet", "fgo-dra-plugin"): {"app.kubernetes.io/component": "kubeletplugin"},
}

# Workloads with the reference's names: exactly its selectors.
REFERENCE_SELECTORS = {
    ("DaemonSet", "nvidia-dcgm-exporter"): {"app": "nvidia-dcgm-exporter"},
    ("Deployment", "nvidia-dcgm-exporter-kwok"): {"app": "nvidia-dcgm-exporter-kwok"},
}


@pytest.mark.parametrize(("kind", "name"), sorted(REFERENCE_POD_LABELS))
def test_pods_carry_the_reference_labels(everything: Rendered, kind: str, name: str) -> None:
    workload = everything.get(kind, name)
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    expected = REFERENCE_POD_LABELS[(kind, name)]
    assert {k: pod_labels.get(k) for k in expected} == expected
    # Our own selector labels stay: our Services and tools select by them.
    assert pod_labels["app.kubernetes.io/instance"] == "fgo"
    selector = workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the selector must match the pod template"


@pytest.mark.parametrize(("kind", "name"), sorted(REFERENCE_SELECTORS))
def test_reference_named_workloads_keep_the_reference_selector(
    everything: Rendered, kind: str, name: str
) -> None:
    assert everything.get(kind, name)["spec"]["selector"] == {
        "matchLabels": REFERENCE_SELECTORS[(kind, name)]
    }


def test_other_workloads_select_by_our_labels_only(everything: Rendered) -> None:
    for workload in everything.workloads():
        key = (workload["kind"], workload["metadata"]["name"])
        if key in REFERENCE_SELECTORS:
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }, key


@pytest.mark.parametrize(
    ("name", "app"),
    [("nvidia-dcgm-exporter", "nvidia-dcgm-exporter"),
     ("nvidia-dcgm-exporter-kwok", "nvidia-dcgm-exporter-kwok")],
)  # fmt: skip
def test_metrics_services_carry_the_reference_app_label(
    everything: Rendered, name: str, app: str
) -> None:
    service = everything.get("Service", name)
    assert service["metadata"]["labels"]["app"] == app
    assert [p["name"] for p in service["spec"]["ports"]] == ["gpu-metrics"]


def test_node_exporter_pods_say_they_are_the_container_toolkit(everything: Rendered) -> None:
    """Run:ai's node checks look for app.kubernetes.io/name=nvidia-container-toolkit pods (issue
    27); the reference gives it to its exporter pods. Ours: the node-mode exporter's pods only,
    and the Service and ServiceMonitor still find what they select."""
    daemonset = everything.get("DaemonSet", "nvidia-dcgm-exporter")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/name"] == "nvidia-container-toolkit"
    kwok_pods = everything.get("Deployment", "nvidia-dcgm-exporter-kwok")["spec"]["template"]
    assert kwok_pods["metadata"]["labels"]["app.kubernetes.io/name"] == "fake-gpu-operator"
    for name, pods in (("nvidia-dcgm-exporter", pod_labels),
                       ("nvidia-dcgm-exporter-kwok", kwok_pods["metadata"]["labels"])):  # fmt: skip
        service = everything.get("Service", name)
        assert service["spec"]["selector"].items() <= pods.items(), name
        monitor = everything.get("ServiceMonitor", name)
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items(), name
