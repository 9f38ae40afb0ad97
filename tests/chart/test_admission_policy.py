"""Unit tier: the ValidatingAdmissionPolicies narrowing the two cluster-wide `patch pods` grants
(templates/admission-policy.yaml). What they let through and deny on a real apiserver is
tests/integration/test_admission_policy.py; here: when they render, and with what.
"""

from __future__ import annotations

from typing import Any

import pytest
from chartlib import NAMESPACE, Helm, Rendered

VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
OWN_KEY = {
    "device-plugin": "fake-gpu-operator/allocated-devices",
    "status-updater": "run.ai/reserve_for_gpu_index",
}


def render(
    helm: Helm, sets: list[str] | None = None, *, served: bool = True, **kw: Any
) -> Rendered:
    extra = ["--api-versions", VAP_API] if served else []
    return helm.render(sets=sets, extra=extra, **kw)


def policies(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in rendered.of_kind("ValidatingAdmissionPolicy")}


def expressions(policy: dict[str, Any]) -> str:
    spec = policy["spec"]
    parts = [v["expression"] for v in spec["validations"]]
    parts += [v["expression"] for v in spec.get("variables", [])]
    return "\n".join(parts)


def test_one_policy_and_binding_per_identity_by_default(helm: Helm) -> None:
    rendered = render(helm)
    assert sorted(policies(rendered)) == [
        "fgo-fgo-device-plugin-pods",
        "fgo-fgo-status-updater-pods",
    ]
    bindings = {
        b["metadata"]["name"]: b for b in rendered.of_kind("ValidatingAdmissionPolicyBinding")
    }
    assert sorted(bindings) == sorted(policies(rendered))
    for name, binding in bindings.items():
        assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
        assert "namespace" not in binding["metadata"]


@pytest.mark.parametrize("component", sorted(OWN_KEY))
def test_policy_matches_only_its_service_account_updating_pods(helm: Helm, component: str) -> None:
    policy = policies(render(helm))[f"fgo-fgo-{component}-pods"]
    spec = policy["spec"]
    assert "namespace" not in policy["metadata"]
    assert policy["metadata"]["labels"]["app.kubernetes.io/component"] == component
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]}
    ]
    (condition,) = spec["matchConditions"]
    username = f"system:serviceaccount:{NAMESPACE}:fgo-{component}"
    assert condition["expression"] == f'request.userInfo.username == "{username}"'
    text = expressions(policy)
    # Its own annotation is the only exception; labels, spec, owners, finalizers compared.
    assert f"'{OWN_KEY[component]}'" in text
    other = next(k for c, k in OWN_KEY.items() if c != component)
    assert other not in text
    for field in ("labels", "ownerReferences", "finalizers"):
        assert f"object.metadata.{field}" in text and f"oldObject.metadata.{field}" in text
    assert "object.spec == oldObject.spec" in text
    for validation in spec["validations"]:
        assert validation["reason"] == "Forbidden"
        assert validation.get("message") or validation.get("messageExpression")


def test_device_plugin_is_held_to_its_token_node(helm: Helm) -> None:
    text = expressions(policies(render(helm))["fgo-fgo-device-plugin-pods"])
    assert f"request.userInfo.extra['{NODE_NAME_EXTRA}']" in text
    assert "object.spec.nodeName in" in text


def test_status_updater_is_held_to_the_reservation_namespace(helm: Helm) -> None:
    sets = ["environment.resourceReservationNamespace=my-reservations"]
    text = expressions(policies(render(helm, sets))["fgo-fgo-status-updater-pods"])
    assert 'object.metadata.namespace == "my-reservations"' in text
    assert NODE_NAME_EXTRA not in text


def test_off_when_disabled(helm: Helm) -> None:
    rendered = render(helm, ["admissionPolicy.enabled=false"])
    assert not rendered.of_kind("ValidatingAdmissionPolicy")
    assert not rendered.of_kind("ValidatingAdmissionPolicyBinding")
    # A null value means the default: on.
    assert len(policies(render(helm, ["admissionPolicy=null"]))) == 2


def test_absent_where_the_api_is_not_served(helm: Helm) -> None:
    rendered = render(helm, served=False)
    assert not rendered.of_kind("ValidatingAdmissionPolicy")
    assert not rendered.of_kind("ValidatingAdmissionPolicyBinding")


def test_only_for_enabled_components(helm: Helm) -> None:
    assert sorted(policies(render(helm, ["devicePlugin.enabled=false"]))) == [
        "fgo-fgo-status-updater-pods"
    ]
    # The status-updater is off only with every reader of its records (validate.yaml).
    off = [f"{c}.enabled=false" for c in ("statusUpdater", "devicePlugin", "kwokGpuDevicePlugin",
                                          "statusExporter")]  # fmt: skip
    assert not render(helm, off).of_kind("ValidatingAdmissionPolicy")


def test_names_and_usernames_follow_release_and_namespace(helm: Helm) -> None:
    rendered = render(helm, release="other", namespace="elsewhere")
    names = sorted(policies(rendered))
    assert names == ["other-fgo-device-plugin-pods", "other-fgo-status-updater-pods"]
    for policy in policies(rendered).values():
        (condition,) = policy["spec"]["matchConditions"]
        assert "system:serviceaccount:elsewhere:fgo-" in condition["expression"]


def test_notes_say_whether_the_policy_is_installed(helm: Helm) -> None:
    served = helm.notes(extra=["--api-versions", VAP_API])
    assert "Admission policy: pod patches of fgo-device-plugin" in served
    assert "fgo-status-updater" in served and "does not serve" not in served
    # Without the API the policy is left out, and NOTES say so.
    assert "does not serve admissionregistration.k8s.io/v1" in helm.notes()
    off = helm.notes(sets=["admissionPolicy.enabled=false"], extra=["--api-versions", VAP_API])
    assert "Admission policy" not in off and "does not serve" not in off
