"""Helpers of the chart tests (imported by conftest.py and the test modules): the pinned
helm/kubectl, rendering, the values matrix."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fake-gpu-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Namespaced objects must follow the release namespace; render into one that is not the
# reference's hard-coded gpu-operator, so a leftover hard-coded name shows up.
NAMESPACE = "sim-gpus"


def bin_dir_default() -> Path:
    explicit = os.environ.get("FGO_BIN_DIR")
    if explicit:
        return Path(explicit)
    out = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


@dataclass(frozen=True)
class Rendered:
    """One ``helm template`` run: the raw text (comments kept) and the parsed objects."""

    text: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise KeyError(f"{kind}/{name} not rendered; have {self.names()}")

    def names(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "DaemonSet")]


class HelmFailed(AssertionError):
    """helm exited non-zero; the message is its stderr."""


@dataclass(frozen=True)
class Helm:
    bin_dir: Path
    kube_version: str

    @property
    def helm(self) -> str:
        return str(self.bin_dir / "helm")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # HOME-like dirs of helm in a temp dir: no repo config or cache of the user is read.
        env = {**os.environ, "HELM_CACHE_HOME": _HELM_HOME, "HELM_CONFIG_HOME": _HELM_HOME,
               "HELM_DATA_HOME": _HELM_HOME}  # fmt: skip
        result = subprocess.run(
            [self.helm, *args], capture_output=True, text=True, env=env, check=False
        )
        if check and result.returncode != 0:
            raise HelmFailed(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template_args(
        self,
        values: list[Path] | None = None,
        sets: list[str] | None = None,
        *,
        namespace: str = NAMESPACE,
        release: str = "fgo",
        chart: Path = CHART,
        extra: list[str] | None = None,
    ) -> list[str]:
        args = ["template", release, str(chart), "--namespace", namespace,
                "--kube-version", self.kube_version]  # fmt: skip
        for path in values or []:
            args += ["-f", str(path)]
        for item in sets or []:
            args += ["--set", item]
        return args + (extra or [])

    def render(
        self,
        values: list[Path] | None = None,
        sets: list[str] | None = None,
        **kwargs: Any,
    ) -> Rendered:
        text = self.run(*self.template_args(values, sets, **kwargs)).stdout
        objects = [o for o in yaml.safe_load_all(text) if o]
        return Rendered(text, objects)

    def render_error(self, values: list[Path] | None = None, sets: list[str] | None = None,
                     **kwargs: Any) -> str:  # fmt: skip
        """stderr of a render that must fail."""
        result = self.run(*self.template_args(values, sets, **kwargs), check=False)
        assert result.returncode != 0, f"rendering was expected to fail: {sets} {values}"
        return result.stderr

    def notes(
        self,
        values: list[Path] | None = None,
        sets: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> str:
        """NOTES.txt as `helm install` would print it (rendered through a copy of the chart:
        `helm template` does not render NOTES and `helm install --dry-run` needs a cluster)."""
        with tempfile.TemporaryDirectory(prefix="fgo-notes-") as tmp:
            chart = Path(tmp) / "chart"
            shutil.copytree(CHART, chart)
            notes = (chart / "templates" / "NOTES.txt").read_text()
            (chart / "templates" / "_notes_preview.tpl").write_text(
                '{{- define "notes.preview" }}' + notes + "{{- end }}"
            )
            (chart / "templates" / "notes-preview.yaml").write_text(
                'kind: NotesPreview\nmetadata: {name: notes}\ntext: {{ include "notes.preview" . | toJson }}\n'
            )
            rendered = self.render(values, sets, chart=chart, extra=extra)
            return str(rendered.get("NotesPreview", "notes")["text"])


_HELM_HOME = tempfile.mkdtemp(prefix="fgo-helm-home-")


def values_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")
