"""The KWOK capacity controller is told when the kwok-dra-plugin publishes the same GPUs."""

from __future__ import annotations

from chartlib import CHART, Helm


def capacity_env(helm: Helm, values: str, sets: list[str] | None = None) -> dict[str, str]:
    rendered = helm.render([CHART / "ci" / values], sets)
    (container,) = rendered.get("Deployment", "fgo-kwok-gpu-capacity")["spec"]["template"]["spec"][
        "containers"
    ]
    return {e["name"]: str(e.get("value")) for e in container["env"]}


def test_dra_shares_gpus_follows_kwok_dra_plugin(helm: Helm) -> None:
    # The seed README's KWOK values: both paths on the same KWOK nodes.
    assert capacity_env(helm, "seed-readme-values.yaml").get("DRA_SHARES_GPUS") == "true"
    assert "DRA_SHARES_GPUS" not in capacity_env(helm, "defaults-values.yaml")
    off = capacity_env(helm, "seed-readme-values.yaml", ["kwokDraPlugin.enabled=false"])
    assert "DRA_SHARES_GPUS" not in off
