"""Unit tier: the MutatingAdmissionPolicy giving Run:ai/KAI fractional pods nvidia-smi
(templates/runai-nvidia-smi.yaml, runai.nvidiaSmi, issue 27). What it does to pods on a real
apiserver is tests/integration/test_runai_nvidia_smi.py; here: when it renders, and that its
paths are the ones the node agents install and nvidia-smi reads (fgo_common.nodestate).
"""

from __future__ import annotations

from typing import Any

from chartlib import Helm, Rendered
from fgo_common.nodestate import (
    DEFAULT_STATE_DIR,
    SMI_CONTAINER_DIR,
    SMI_CONTAINER_PATHS,
    SMI_HOST_DIR,
    SMI_LAUNCHER_HOST_PATH,
)

MAP_API = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"
NAME = "fgo-fgo-runai-nvidia-smi"


def render(helm: Helm, sets: list[str] | None = None, *, served: bool = True) -> Rendered:
    return helm.render(sets=sets, extra=["--api-versions", MAP_API] if served else [])


def policy(rendered: Rendered) -> dict[str, Any] | None:
    found = rendered.of_kind("MutatingAdmissionPolicy")
    assert len(found) <= 1
    return found[0] if found else None


def test_rendered_by_default_where_served(helm: Helm) -> None:
    rendered = render(helm)
    p = policy(rendered)
    assert p is not None and p["metadata"]["name"] == NAME
    assert "namespace" not in p["metadata"]
    assert p["metadata"]["labels"]["app.kubernetes.io/component"] == "status-updater"
    spec = p["spec"]
    # A policy error must never keep a user's pod from being created; applied once.
    assert spec["failurePolicy"] == "Ignore"
    assert spec["reinvocationPolicy"] == "Never"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
    ]
    assert [c["name"] for c in spec["matchConditions"]] == [
        "fractional",
        "no-volume-of-ours",
        "not-a-reservation-pod",
        "no-gpu-of-its-own",
    ]
    assert [m["patchType"] for m in spec["mutations"]] == ["JSONPatch"]
    bindings = rendered.of_kind("MutatingAdmissionPolicyBinding")
    assert [b["metadata"]["name"] for b in bindings] == [NAME]
    assert bindings[0]["spec"] == {"policyName": NAME}


def test_not_rendered_without_the_api_or_when_off(helm: Helm) -> None:
    assert policy(render(helm, served=False)) is None
    assert not render(helm, served=False).of_kind("MutatingAdmissionPolicyBinding")
    assert policy(render(helm, ["runai.nvidiaSmi=false"])) is None
    # Fractions are the status-updater's: without it no record names a fractional pod.
    off = ["statusUpdater", "devicePlugin", "kwokGpuDevicePlugin", "draPlugin", "kwokDraPlugin"]
    sets = [f"{c}.enabled=false" for c in [*off, "statusExporter"]]
    assert policy(render(helm, sets)) is None


def test_paths_are_the_node_agents_and_nvidia_smis(helm: Helm) -> None:
    spec = policy(render(helm))["spec"]  # type: ignore[index]
    patch = spec["mutations"][0]["jsonPatch"]["expression"]
    for host, kind in (
        (SMI_HOST_DIR, "Directory"),
        (SMI_LAUNCHER_HOST_PATH, "File"),
        (SMI_HOST_DIR.rsplit("/", 1)[0] + "/state", "DirectoryOrCreate"),
    ):
        assert f'path: "{host}", type: "{kind}"' in patch
    for container_path in (SMI_CONTAINER_DIR, *SMI_CONTAINER_PATHS, DEFAULT_STATE_DIR):
        assert f'mountPath: "{container_path}", readOnly: true' in patch
        assert f"'{container_path}'" in patch  # containers mounting it themselves are skipped
    assert patch.count("readOnly: true") == 4
    assert 'name: "FGO_POD_UID"' in patch and 'fieldPath: "metadata.uid"' in patch


def test_seed_and_reservation_namespace_come_from_values(helm: Helm) -> None:
    default = policy(render(helm))["spec"]  # type: ignore[index]
    assert "FGO_SEED" not in default["mutations"][0]["jsonPatch"]["expression"]
    conditions = {c["name"]: c["expression"] for c in default["matchConditions"]}
    assert conditions["not-a-reservation-pod"] == 'request.namespace != "runai-reservation"'
    spec = policy(
        render(helm, ["telemetrySeed=42", "environment.resourceReservationNamespace=held"])
    )["spec"]  # type: ignore[index]
    assert 'name: "FGO_SEED", value: "42"' in spec["mutations"][0]["jsonPatch"]["expression"]
    conditions = {c["name"]: c["expression"] for c in spec["matchConditions"]}
    assert conditions["not-a-reservation-pod"] == 'request.namespace != "held"'


def test_notes_mention_it_only_where_it_is_installed(helm: Helm) -> None:
    line = "Run:ai/KAI fractional pods (annotation gpu-fraction or gpu-memory) get nvidia-smi"
    assert line in helm.notes(extra=["--api-versions", MAP_API])
    assert line not in helm.notes()
    assert line not in helm.notes(sets=["runai.nvidiaSmi=false"], extra=["--api-versions", MAP_API])
