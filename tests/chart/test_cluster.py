"""Integration tier of the chart: the rendered objects against the real local control plane.

- Strict schema validation: every matrix entry's objects through
  ``kubectl apply --dry-run=server --validate=strict`` (the apiserver of the pinned Kubernetes
  version; an unknown or misspelt field is an error, not a silently dropped key).
- ``helm install`` of every matrix entry (into a namespace other than gpu-operator), then
  ``helm upgrade`` to another entry and ``helm uninstall``; afterwards every resource type the
  apiserver serves is listed and nothing of the release may be left.

The services do not run here (that is tests/e2e); these tests are about the chart's objects.
No `--wait` on install: the Deployments' pods cannot start without a kubelet (KWOK nodes are
tainted), so Helm would wait for readiness forever.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from chartlib import CHART, CI_VALUES, Helm, values_id
from fgo_localcluster.cluster import LocalCluster
from fgo_localcluster.testing import unique_name

pytestmark = pytest.mark.integration

# Objects every namespace has, whoever made it.
NAMESPACE_DEFAULTS = {"ConfigMap/kube-root-ca.crt", "ServiceAccount/default"}
_TYPES: dict[Path, list[tuple[str, bool]]] = {}


@dataclass(frozen=True)
class Kube:
    bin_dir: Path
    kubeconfig: Path
    helm: Helm

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self._env(),
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def helm_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "helm"), *args],
            capture_output=True,
            text=True,
            env=self._env(),
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def listable_types(self) -> list[tuple[str, bool]]:
        """(resource, namespaced) for every type the apiserver can list (asked once)."""
        if self.kubeconfig in _TYPES:
            return _TYPES[self.kubeconfig]
        out = []
        for namespaced in (True, False):
            names = self.kubectl(
                "api-resources", "--verbs=list", f"--namespaced={str(namespaced).lower()}",
                "-o", "name",
            ).stdout.split()  # fmt: skip
            out += [(n, namespaced) for n in names]
        _TYPES[self.kubeconfig] = out
        return out

    def objects_with_label(self, selector: str, *, derived: bool = True) -> list[str]:
        """Every object of any type, in any namespace, matching ``selector``; without
        ``derived``, only top-level ones (no owner, not Endpoints a controller keeps)."""
        found = []
        types = self.listable_types()
        # Events are not ours to clean up (and expire on their own).
        names = [n for n, _ in types if n not in ("events", "events.events.k8s.io")]
        result = self.kubectl("get", ",".join(names), "-A", "-l", selector, "-o", "json")
        for item in json.loads(result.stdout)["items"]:
            owned = item["metadata"].get("ownerReferences") or item["kind"] == "Endpoints"
            if owned and not derived:
                continue
            ns = item["metadata"].get("namespace", "")
            found.append(f"{item['kind']}/{ns + '/' if ns else ''}{item['metadata']['name']}")
        return found

    def objects_in_namespace(self, namespace: str) -> set[str]:
        names = [n for n, namespaced in self.listable_types() if namespaced]
        names = [n for n in names if n not in ("events", "events.events.k8s.io")]
        result = self.kubectl("get", ",".join(names), "-n", namespace, "-o", "json")
        return {f"{i['kind']}/{i['metadata']['name']}" for i in json.loads(result.stdout)["items"]}


@pytest.fixture(scope="module")
def kube(local_cluster: LocalCluster, helm: Helm) -> Kube:
    return Kube(local_cluster.bin_dir, local_cluster.kubeconfig, helm)


@pytest.fixture
def test_namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_name(f"chart-{request.node.name.removeprefix('test_')}", 40)
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_rendered_objects_pass_strict_server_side_validation(
    kube: Kube, ci_values: Path, test_namespace: str
) -> None:
    rendered = kube.helm.render([ci_values], namespace=test_namespace).text
    result = kube.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=rendered, check=False
    )
    assert result.returncode == 0, result.stderr
    # Every object was seen by the apiserver ("... created/configured (server dry run)").
    count = len([o for o in yaml.safe_load_all(rendered) if o])
    assert result.stdout.count("(server dry run)") == count, result.stdout


def test_strict_validation_catches_a_misspelt_field(kube: Kube, test_namespace: str) -> None:
    """The check above can fail: the same command refuses an unknown field."""
    bad = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": test_namespace},
            "dta": {"a": "b"},
        }
    )
    result = kube.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=bad, check=False
    )
    assert result.returncode != 0 and 'unknown field "dta"' in result.stderr


def _next(values: Path) -> Path:
    """Another matrix entry to upgrade to (the next one, cyclically)."""
    return CI_VALUES[(CI_VALUES.index(values) + 1) % len(CI_VALUES)]


def test_install_upgrade_uninstall_leave_nothing_behind(
    kube: Kube, ci_values: Path, test_namespace: str
) -> None:
    release = unique_name(f"r-{values_id(ci_values)}", 30)
    selector = f"app.kubernetes.io/instance={release}"

    def install(command: str, values: Path) -> None:
        out = kube.helm_cmd(
            command, release, str(CHART), "--namespace", test_namespace, "-f", str(values),
        )  # fmt: skip
        assert "STATUS: deployed" in out.stdout, out.stdout
        assert "Next steps" in out.stdout, "NOTES.txt was not printed"
        manifest = kube.helm_cmd("get", "manifest", release, "--namespace", test_namespace)
        expected = _names(manifest.stdout)
        present = set(kube.objects_with_label(selector, derived=False))
        assert expected <= present, f"missing after {command}: {sorted(expected - present)}"

    install("install", ci_values)
    install("upgrade", _next(ci_values))
    # Nothing of the first revision that the second does not render survives the upgrade.
    manifest = kube.helm_cmd("get", "manifest", release, "--namespace", test_namespace)
    assert set(kube.objects_with_label(selector, derived=False)) == _names(manifest.stdout)

    kube.helm_cmd("uninstall", release, "--namespace", test_namespace, "--wait")
    # Derived objects (ReplicaSets, Pods, Endpoints...) go with the garbage collector.
    _eventually_empty(lambda: kube.objects_with_label(selector), f"objects of {release}")
    _eventually_empty(
        lambda: sorted(kube.objects_in_namespace(test_namespace) - NAMESPACE_DEFAULTS),
        f"objects in {test_namespace}",
    )


def _eventually_empty(probe: Callable[[], list[str]], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while left := probe():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} left after {timeout_s:.0f}s: {left}", pytrace=False)
        time.sleep(1)  # noqa: TID251 - a synchronous test: there is no event loop to block


def _names(manifest: str) -> set[str]:
    out = set()
    for obj in yaml.safe_load_all(manifest):
        if obj:
            ns = obj["metadata"].get("namespace", "")
            out.add(f"{obj['kind']}/{ns + '/' if ns else ''}{obj['metadata']['name']}")
    return out


def test_install_into_gpu_operator_with_the_seed_command(kube: Kube) -> None:
    """The seed's Quick Start: `helm upgrade -i gpu-operator ... --namespace gpu-operator
    --create-namespace` (run twice: the second is an upgrade), then uninstall."""
    release = unique_name("gpu-operator", 30)
    args = ["upgrade", "-i", release, str(CHART), "--namespace", "gpu-operator",
            "--create-namespace"]  # fmt: skip
    first = kube.helm_cmd(*args)
    assert "STATUS: deployed" in first.stdout
    second = kube.helm_cmd(*args)
    assert "REVISION: 2" in second.stdout
    kube.helm_cmd("uninstall", release, "--namespace", "gpu-operator", "--wait")
    _eventually_empty(
        lambda: kube.objects_with_label(f"app.kubernetes.io/instance={release}"),
        f"objects of {release}",
    )


def test_existing_foreign_device_classes_are_left_alone(kube: Kube, test_namespace: str) -> None:
    """The local cluster (like a cluster with NVIDIA's DRA driver) already has DeviceClass
    gpu.nvidia.com: installing with DRA must neither fail on it nor take it over."""
    before = kube.kubectl("get", "deviceclass", "gpu.nvidia.com", "-o", "json", check=False)
    if before.returncode != 0:
        pytest.fail("the local cluster's bootstrap DeviceClass gpu.nvidia.com is missing")
    release = unique_name("r-dra", 30)
    kube.helm_cmd("install", release, str(CHART), "--namespace", test_namespace,
                  "-f", str(CHART / "ci" / "kwok-dra-values.yaml"))  # fmt: skip
    after = json.loads(kube.kubectl("get", "deviceclass", "gpu.nvidia.com", "-o", "json").stdout)
    assert after["metadata"]["uid"] == json.loads(before.stdout)["metadata"]["uid"]
    assert "meta.helm.sh/release-name" not in after["metadata"].get("annotations", {})
    kube.helm_cmd("uninstall", release, "--namespace", test_namespace, "--wait")
    still = kube.kubectl("get", "deviceclass", "gpu.nvidia.com", check=False)
    assert still.returncode == 0, "uninstall deleted a DeviceClass that was not ours"
