"""Render the Helm chart with Helm's own engine and validate manifests against Kubernetes schemas.

Rendering uses ``helm-python-sdk`` (PyPI: ``helm_python``, which binds Helm v4's Go SDK as a
shared library, so the templates run through the real Helm/Go-template/Sprig engine, offline).
Validation uses ``kubernetes-validate`` (PyPI), which ships the Kubernetes OpenAPI-derived JSON
schemas and needs no cluster. Both are optional test tools: ``require_tools`` skips with the
package to install when one is missing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "damselfly"
RELEASE = "df"
NAMESPACE = "damselfly"

_TOOLS = {
    "helm_python": "pip install helm-python-sdk (Helm v4's engine; renders the chart offline)",
    "kubernetes_validate": "pip install kubernetes-validate (offline Kubernetes JSON schemas)",
}


def require_tools() -> None:
    for module, how in _TOOLS.items():
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: {how}")


@dataclass(frozen=True)
class Manifest:
    source: str  # the template it came from, e.g. damselfly/templates/dfdaemon-daemonset.yaml
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every manifest the chart renders for ``values`` (templates' YAML documents, in order)."""
    import helm_python

    chart = helm_python.Chart.load(CHART)
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    for source, text in sorted(out.items()):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                manifests.append(Manifest(source, doc))
    return manifests


def render_error(values: dict[str, Any]) -> str:
    """The message of the render failure ``values`` cause (fails the test when it renders)."""
    import helm_python

    chart = helm_python.Chart.load(CHART)
    with pytest.raises(helm_python.HelmError) as info:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(info.value)


def notes(values: dict[str, Any] | None = None) -> str:
    import helm_python

    out = helm_python.Chart.load(CHART).render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for source, text in out.items() if source.endswith("NOTES.txt"))


def validate(manifest: Manifest, kube_version: str) -> None:
    """Strict schema validation (unknown fields are errors); raises with the path on failure."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest.body, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
        raise AssertionError(
            f"{manifest.source}: {manifest.kind}/{manifest.name} is invalid for Kubernetes "
            f"{kube_version} at {path or '(root)'}: {e.message}"
        ) from e


def one(manifests: list[Manifest], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [m.body for m in manifests if m.kind == kind and m.name.endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec.get(key, []) if c["name"] == name)
