#!/usr/bin/env python3
"""Generate the chart's derived files: values.schema.json, templates/_defaults.tpl and the
values table of docs/chart.md.

The schema is written here, in a compact form, rather than by hand in JSON: every component has
the same knobs (image, resources, scheduling), every value may be null (a values file or a
`--reuse-values` upgrade may null any key), and every key needs a description. Helm validates
values against the generated file on lint/template/install, so a typo (`enabeld`) or a wrong
type fails with the path of the offending key.

templates/_defaults.tpl carries values.yaml into the templates (Helm does not expose the
chart's own defaults once a user overrides a key): a top-level value set to null (the reference
chart's render guard, and what `--reuse-values` upgrades from older charts produce) then falls
back to the chart's defaults rather than to nothing.

    hack/gen-chart.py           # rewrite both files
    hack/gen-chart.py --check   # exit 1 if a committed file is stale (tests run this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "fake-gpu-operator"
SCHEMA = CHART / "values.schema.json"
DEFAULTS = CHART / "templates" / "_defaults.tpl"
CATALOG = CHART / "templates" / "_gpu-catalog.tpl"
VALUES = CHART / "values.yaml"

Schema = dict[str, Any]
PULL_POLICIES = ["Always", "IfNotPresent", "Never", ""]
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
# A Kubernetes object name usable as a ConfigMap key prefix / DNS label.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A positive Kubernetes quantity (resource.Quantity syntax, no sign).
QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"


def nullable(schema: Schema) -> Schema:
    """The same schema, also accepting null (null means "the default")."""
    out = dict(schema)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        out["type"] = [*kind, "null"]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def obj(description: str, properties: dict[str, Schema], **extra: Any) -> Schema:
    return nullable(
        {
            "type": "object",
            "description": description,
            "additionalProperties": False,
            "properties": properties,
            **extra,
        }
    )


def string(description: str, **extra: Any) -> Schema:
    return nullable({"type": "string", "description": description, **extra})


def boolean(description: str) -> Schema:
    return nullable({"type": "boolean", "description": description})


def integer(description: str, **extra: Any) -> Schema:
    return nullable({"type": "integer", "description": description, **extra})


def free_object(description: str) -> Schema:
    """A Kubernetes-typed object (affinity, ...): checked by the apiserver, not here."""
    return nullable({"type": "object", "description": description})


COMPAT = "Reference chart key, accepted for compatibility; no effect here"


def compat(description: str = COMPAT) -> Schema:
    kinds = ["object", "boolean", "string", "number", "array"]
    return nullable({"type": kinds, "description": description})


# Nested keys of the reference chart (run-ai/fake-gpu-operator 0.2), checked like ours so a typo
# fails. What happens to each: docs/chart.md, "Values of the reference chart"; NOTES.txt names
# the ignored ones that are set, templates/_reference.tpl maps the others.
IGNORED = "Reference chart key, ignored (NOTES.txt names it)"
MAPPED = "Reference chart key, mapped onto"


def toggle(description: str, **extra: Schema) -> Schema:
    return obj(description, {"enabled": boolean("Reference chart key"), **extra})


MAX_REPLICAS = 1024  # fgo_common.dpsharing.MAX_REPLICAS
# A config name is a node label value (nvidia.com/device-plugin.config).
LABEL_VALUE = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"


def replicated_resources(strategy: str, *, rename: bool) -> Schema:
    """NVIDIA k8s-device-plugin's ReplicatedResources (sharing.timeSlicing / sharing.mps)."""
    resource: dict[str, Schema] = {
        "name": string("Resource to replicate (nvidia.com/gpu, nvidia.com/mig-...)",
                       pattern=r"^nvidia\.com/"),
        "replicas": integer(f"Replicas per device (2..{MAX_REPLICAS})", minimum=2,
                            maximum=MAX_REPLICAS),
        "devices": string("Which devices to replicate: only all (NVIDIA ignores others)",
                          enum=["all"]),
    }  # fmt: skip
    props: dict[str, Schema] = {
        "failRequestsGreaterThanOne": boolean(
            "Refuse a container asking for more than one replica (UnexpectedAdmissionError); "
            + ("default true under MPS" if not rename else "default false")
        ),
        "resources": {
            "type": "array",
            "minItems": 1,
            "description": "The replicated resources",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "replicas"],
                "properties": resource,
            },
        },
    }
    if rename:
        props["renameByDefault"] = boolean("Advertise <name>.shared (nvidia.com/gpu.shared)")
        resource["rename"] = string("Accepted and ignored, as by NVIDIA's plugin")
    else:
        props["renameByDefault"] = {
            "type": "boolean",
            "enum": [False],
            "description": "renaming shared resources is not supported with MPS",
        }
    return {
        "type": "object",
        "description": f"{strategy} replicas",
        "additionalProperties": False,
        "required": ["resources"],
        "properties": props,
    }


def device_plugin_config() -> Schema:
    """devicePlugin.config: NVIDIA k8s-device-plugin configs by name (as the GPU operator's
    devicePlugin.config), selected per node by the nvidia.com/device-plugin.config label."""
    nvidia_config = {
        "type": "object",
        "description": "NVIDIA k8s-device-plugin config (version v1)",
        "additionalProperties": False,
        "properties": {
            "version": {"type": "string", "enum": ["v1"], "description": "Config version"},
            "flags": {"type": "object", "description": "Accepted; flags are not simulated"},
            "resources": {"type": "object", "description": "Accepted; not simulated"},
            "sharing": {
                "type": "object",
                "description": "One of timeSlicing or mps",
                "additionalProperties": False,
                "maxProperties": 1,
                "properties": {
                    "timeSlicing": replicated_resources("time-slicing", rename=True),
                    "mps": replicated_resources("MPS", rename=False),
                },
            },
        },
    }
    return obj(
        "GPU sharing (time-slicing / MPS) configs of NVIDIA's device plugin, selected per node "
        "by the label nvidia.com/device-plugin.config (docs/sharing.md)",
        {
            "default": string(
                "Config of nodes without the label (empty: not shared); must name a config"
            ),
            "configs": nullable(
                {
                    "type": "object",
                    "description": "Config name -> NVIDIA config (a mapping, or its YAML text as "
                    "in the GPU operator's ConfigMap)",
                    "propertyNames": {"pattern": LABEL_VALUE},
                    "additionalProperties": {"oneOf": [{"type": "string"}, nvidia_config]},
                }
            ),
        },
    )


def kubelet_plugin() -> Schema:
    probe = {
        key: integer(f"{MAPPED} the plugin's liveness probe", minimum=0)
        for key in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
    }
    plugin = obj(
        "The plugin container (reference chart)",
        {
            "securityContext": free_object(f"{IGNORED}: uid 0 without capabilities"),
            "resources": {**resources(), "description": f"{MAPPED} draPlugin.resources"},
            "healthcheckPort": integer(
                f"{MAPPED} draPlugin.healthcheckPort (0: ours kept)", minimum=0, maximum=65535
            ),
            "livenessProbe": obj(
                "Liveness probe (reference chart): the timings are used",
                {
                    **probe,
                    "service": string(f"{IGNORED} unless liveness"),
                    "successThreshold": integer(f"{IGNORED} (always 1 for liveness)"),
                },
            ),
        },
    )
    sched = scheduling(True)
    return obj(
        "The reference chart's DRA kubelet plugin keys, mapped onto draPlugin.* (a draPlugin key "
        "changed from its default wins)",
        {
            **{
                key: {**sched[key], "description": f"{MAPPED} draPlugin.{key}"}
                for key in ("priorityClassName", "nodeSelector", "tolerations", "affinity")
            },
            "podAnnotations": {
                **sched["podAnnotations"],
                "description": f"{MAPPED} draPlugin.podAnnotations (merged)",
            },
            "updateStrategy": free_object(f"{MAPPED} the DaemonSet's updateStrategy"),
            "podSecurityContext": free_object(f"{IGNORED}: fixed pod security context"),
            "kubeletRegistrarDirectoryPath": string(
                f"{MAPPED} draPlugin.kubeletRegistrarDirectoryPath"
            ),
            "kubeletPluginsDirectoryPath": string(
                f"{MAPPED} draPlugin.kubeletPluginsDirectoryPath"
            ),
            "containers": obj("Containers (reference chart)", {"plugin": plugin}),
        },
    )


def build_pull_secrets() -> Schema:
    return nullable(
        {
            "type": "array",
            "description": "Pull secrets of every pod ([{name: ...}])",
            "items": {
                "type": "object",
                "description": "A LocalObjectReference",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string", "description": "Secret name"}},
            },
        }
    )


def image(default_repository: str) -> Schema:
    return obj(
        "Image of this component",
        {
            "repository": string(
                f"Repository (default {default_repository}); a bare name is prefixed with "
                "image.registry, a name with a slash is used as is"
            ),
            "tag": string("Tag (default: image.tag, then the chart's appVersion)"),
            "pullPolicy": string("Pull policy (default: image.pullPolicy)", enum=PULL_POLICIES),
        },
    )


def resources() -> Schema:
    quantities = nullable(
        {
            "type": "object",
            "description": "Resource name -> quantity",
            "additionalProperties": {"type": ["string", "number"]},
        }
    )
    return obj(
        "Container resources",
        {
            "requests": {**quantities, "description": "Requests (cpu, memory)"},
            "limits": {**quantities, "description": "Limits (cpu, memory)"},
            "claims": nullable({"type": "array", "description": "DRA claims of the container"}),
        },
    )


def scheduling(node_agent: bool) -> dict[str, Schema]:
    affinity = "Affinity"
    if node_agent:
        affinity += (
            "; with restrictToSimulatedPools the pool label is added to every required node "
            "selector term"
        )
    return {
        "resources": resources(),
        "nodeSelector": nullable(
            {
                "type": "object",
                "description": "Node selector (label -> value)",
                "additionalProperties": {"type": "string"},
            }
        ),
        "tolerations": nullable(
            {
                "type": "array",
                "description": "Tolerations",
                "items": {"type": "object"},
            }
        ),
        "affinity": free_object(affinity),
        "priorityClassName": string("PriorityClass of the pods"),
        "podAnnotations": nullable(
            {
                "type": "object",
                "description": "Extra pod annotations",
                "additionalProperties": {"type": "string"},
            }
        ),
    }


def extra_env() -> Schema:
    return nullable(
        {
            "type": "array",
            "description": "Extra environment variables of the container (EnvVar objects): "
            "settings of the service the chart has no value for (see the service's README)",
            "items": {
                "type": "object",
                "description": "An EnvVar",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": ENV_NAME, "description": "Variable name"},
                    "value": {"type": "string", "description": "Value"},
                    "valueFrom": {"type": "object", "description": "EnvVarSource (fieldRef, ...)"},
                },
            },
        }
    )


def component(
    description: str,
    repository: str,
    *,
    enabled: str,
    node_agent: bool = False,
    central: bool = False,
    extra: dict[str, Schema] | None = None,
) -> Schema:
    return obj(
        description,
        {
            "enabled": boolean(enabled),
            **({"replicas": replicas()} if central else {}),
            "image": image(repository),
            **scheduling(node_agent),
            "extraEnv": extra_env(),
            **(extra or {}),
        },
    )


def replicas() -> Schema:
    return integer(
        "Pods; above 1 they elect a leader (leaderElection), get a PodDisruptionBudget and "
        "prefer different nodes",
        minimum=1,
        maximum=5,
    )


def leader_election() -> Schema:
    def seconds(description: str) -> Schema:
        return nullable({"type": "number", "description": description, "exclusiveMinimum": 0})

    return obj(
        "Leader election of the central services through coordination.k8s.io Leases "
        "(docs/reliability.md)",
        {
            "enabled": boolean("Elect even with one replica (always on for replicas > 1)"),
            "leaseDurationSeconds": seconds(
                "How long a standby waits after the Lease last changed before taking over"
            ),
            "renewDeadlineSeconds": seconds(
                "A leader that has not renewed for this long stops writing (< the duration)"
            ),
            "retryPeriodSeconds": seconds("Renewal and standby check period (< the deadline)"),
        },
    )


# What fgo_common.units.parse_memory_mib accepts: a positive integer (MiB) or a number with a unit.
MEMORY: Schema = {
    "description": "Memory override: 12GB, 80Gi, 81559MiB or an integer (MiB)",
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": 16777216},
        {
            "type": "string",
            "maxLength": 24,
            "pattern": r"^\s*[0-9]{1,12}(\.[0-9]+)?\s*([KkMmGgTt]([Ii]|[Ii]?[Bb])?|[Bb])?\s*$",
        },
    ],
}


def topology() -> Schema:
    gpu = {
        "type": "object",
        "additionalProperties": False,
        "description": "count GPUs of one product on every node of the pool",
        "anyOf": [{"required": ["type"]}, {"required": ["profile"]}],
        "properties": {
            "type": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "Product name, alias or profile key (docs/profiles.md); an "
                "unknown product needs memory",
            },
            "profile": {
                "type": "string",
                "minLength": 1,
                "description": "Profile key (alternative to type)",
            },
            "memory": MEMORY,
            "count": {
                "type": "integer",
                "minimum": 1,
                "maximum": 64,
                "description": "GPUs of this type per node (default 1)",
            },
        },
    }
    other_device = {
        "type": "object",
        "additionalProperties": False,
        "description": "An extra extended resource advertised on every node of the pool",
        "required": ["name", "count"],
        "properties": {
            "name": {"type": "string", "description": "Resource name, e.g. example.com/nic"},
            "count": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1024,
                "description": "Quantity per node",
            },
        },
    }
    pool = {
        "type": "object",
        "description": "A node pool in one of three shapes: gpus (seed), gpuProduct/gpuCount/"
        "gpuMemory (legacy) or gpu (profile form); see docs/configuration.md",
        "additionalProperties": False,
        "dependencies": {"gpuProduct": ["gpuCount"], "gpuMemory": ["gpuCount"]},
        "properties": {
            "gpus": {
                "type": "array",
                "minItems": 1,
                "description": "Seed shape: the GPUs of each node in this pool",
                "items": gpu,
            },
            "gpuProduct": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "Legacy shape: product name",
            },
            "gpuCount": {
                "type": "integer",
                "minimum": 1,
                "maximum": 64,
                "description": "Legacy shape: GPUs per node",
            },
            "gpuMemory": {
                **MEMORY,
                "description": "Legacy shape: memory per GPU (MiB, or with a unit)",
            },
            "otherDevices": {
                "type": "array",
                "description": "Extra extended resources per node",
                "items": other_device,
            },
            "gpu": {
                "type": "object",
                "description": "Profile form: {backend, profile, overrides}",
                "additionalProperties": False,
                "properties": {
                    "backend": {
                        "type": "string",
                        "enum": ["fake", "mock"],
                        "description": "fake; mock (the reference's nvml-mock) runs as fake, "
                        "with a TopologyConfigWarning Event",
                    },
                    "profile": {"type": "string", "description": "Profile key or product name"},
                    "overrides": {
                        "type": "object",
                        "description": "Deep-merged over the profile: device_count, "
                        "device_defaults.{name, memory.total_bytes}, "
                        "system.{driver_version, cuda_version}",
                    },
                },
            },
            "resources": {
                "type": "array",
                "description": "Profile form: extra extended resources as [{<name>: <count>}]",
                "items": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
            "numa": {
                "type": "object",
                "description": "NUMA layout (the keys fgo_common.config accepts)",
                "additionalProperties": False,
                "properties": {
                    "zones": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 16,
                        "description": "NUMA nodes per node (0: default split)",
                    },
                    "gpusPerZone": {
                        "type": "array",
                        "maxItems": 16,
                        "description": "GPUs on each NUMA node; must sum to the pool's GPUs",
                        "items": {"type": "integer", "minimum": 0, "maximum": 64},
                    },
                    "topologyManagerPolicy": {
                        "type": "string",
                        "enum": ["none", "best-effort", "restricted", "single-numa-node"],
                        "description": "Kubelet Topology Manager policy the NodeResourceTopology "
                        "objects report (default single-numa-node)",
                    },
                    "topologyManagerScope": {
                        "type": "string",
                        "enum": ["container", "pod"],
                        "description": "Topology Manager scope reported (default container)",
                    },
                    "cpuPerZone": {
                        "type": ["string", "number"],
                        "pattern": QUANTITY,
                        "description": "CPUs per zone, a quantity (16, 15500m); default: the "
                        "node's allocatable CPUs / zones",
                    },
                    "memPerZone": {
                        "type": ["string", "number"],
                        "pattern": QUANTITY,
                        "description": "Memory per zone, a quantity (64Gi); default: the node's "
                        "allocatable memory / zones",
                    },
                    "distances": {
                        "type": "object",
                        "description": "NUMA distances reported as zone costs",
                        "additionalProperties": False,
                        "properties": {
                            "self": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 255,
                                "description": "Distance of a zone to itself (default 10)",
                            },
                            "remote": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 255,
                                "description": "Distance between two zones (default 21)",
                            },
                        },
                    },
                },
            },
            "nvlinkDomain": {
                "type": "object",
                "description": "Multi-node NVLink (GB200/GB300 NVL72): the pool's nodes form "
                "NVLink cliques, labelled nvidia.com/gpu.clique=<clusterUUID>.<clique id> "
                "(docs/computedomains.md)",
                "additionalProperties": False,
                "required": ["cliqueSize"],
                "properties": {
                    "cliqueSize": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 72,
                        "description": "Nodes per clique (NVL72: 18); a node's clique is the "
                        "number its name ends with, 1-based, divided by cliqueSize",
                    },
                    "clusterUUID": {
                        "type": "string",
                        "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                        "[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
                        "description": "Fabric cluster UUID in the label (default: derived "
                        "from the pool name)",
                    },
                },
            },
            "mig": {
                "type": "object",
                "description": "MIG layout: a static config, or dynamic (DRA claims create the "
                "instances)",
                "additionalProperties": False,
                "properties": {
                    "config": {
                        "type": "string",
                        "description": "mig-parted layout name (all-1g.10gb, all-balanced ...) or "
                        "a migConfigs entry",
                    },
                    "dynamic": {
                        "type": "boolean",
                        "description": "Dynamic MIG: DRA claims create MIG instances through "
                        "shared counters (docs/mig.md); not together with config",
                    },
                },
            },
            "driverVersion": {
                "type": ["string", "number"],
                "description": "Driver version override",
            },
            "cudaVersion": {"type": ["string", "number"], "description": "CUDA version override"},
        },
    }
    return obj(
        "GPU topology, rendered into ConfigMap topology (key topology.yml)",
        {
            "nodePoolLabelKey": string("Node label whose value names the node's pool", minLength=1),
            "migStrategy": string(
                "MIG strategy (as NVIDIA's device plugin / GFD)", enum=["none", "single", "mixed"]
            ),
            "nodePools": nullable(
                {
                    "type": "object",
                    "description": "Pool name -> pool; empty: pool default with 2 x Tesla K80",
                    "propertyNames": {"pattern": r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"},
                    "additionalProperties": pool,
                }
            ),
            "migConfigs": nullable(
                {
                    "type": "object",
                    "description": "Custom MIG configs (mig-parted mig-configs format) named by a "
                    "pool's mig.config or the nvidia.com/mig.config node label; see docs/mig.md",
                    "additionalProperties": {"type": "array", "items": {"type": "object"}},
                }
            ),
            "gpuOperator": compat("Accepted for compatibility, ignored"),
        },
    )


def build() -> Schema:
    node_plugin_paths = {
        "kubeletRegistrarDirectoryPath": string("Kubelet plugin registration directory"),
        "kubeletPluginsDirectoryPath": string(
            "Kubelet plugins directory (our socket goes in a subdirectory)"
        ),
        "cdiRoot": string("Directory of CDI specs the container runtime reads"),
        "healthcheckPort": integer("gRPC health port (liveness probe)", minimum=1, maximum=65535),
        "podAnnotations": scheduling(True)["podAnnotations"],
    }
    props: dict[str, Schema] = {
        "nameOverride": string("Override of the chart name in labels"),
        "topology": topology(),
        "cluster": free_object(
            "Topology document rendered into ConfigMap topology instead of topology "
            "(the reference's `cluster` key); same shapes"
        ),
        "topologyConfigMap": obj(
            "ConfigMap topology",
            {"enabled": boolean("Render it (off: manage ConfigMap topology yourself)")},
        ),
        "prometheus": obj(
            "Prometheus used for inference (Knative) utilisation",
            {"url": string("Base URL, e.g. http://prometheus-operated.runai:9090")},
        ),
        "environment": obj(
            "Environment",
            {
                "openshift": boolean(
                    "Reference chart key; true is ignored (no SCC roles or CSV are rendered, "
                    "NOTES.txt says what to grant)"
                ),
                "resourceReservationNamespace": string("Namespace of Run:ai GPU reservation pods"),
                "fakeCSVVersion": string(f"{IGNORED}: no ClusterServiceVersion"),
            },
        ),
        "restrictToSimulatedPools": boolean(
            "Node agents only run on nodes carrying topology.nodePoolLabelKey (never on real "
            "GPU nodes)"
        ),
        "logLevel": string("Log level of every service", enum=LOG_LEVELS),
        "telemetrySeed": integer(
            "Seed of the telemetry model (exporter metrics and nvidia-smi in pods of both "
            "node plugins agree on it)",
            minimum=0,
        ),
        "leaderElection": leader_election(),
        "image": obj(
            "Image defaults of every component",
            {
                "registry": string("Registry prefix of bare repository names"),
                "tag": string("Default tag (empty: the chart's appVersion)"),
                "pullPolicy": string("Default pull policy", enum=PULL_POLICIES),
            },
        ),
        "imagePullSecrets": build_pull_secrets(),
        "statusUpdater": component(
            "The central controller: node records, allocations, utilisation",
            "status-updater",
            enabled="Run the status-updater (every other component reads what it writes)",
            central=True,
            extra={
                "disableNodeLabeling": boolean(
                    "Do not add/remove nvidia.com/gpu.deploy.* node labels"
                ),
                "defaultUtilization": string(
                    "Utilisation of a GPU pod without annotation: N or N-M (percent); empty: "
                    '50-90. The reference reports 100 for such pods: set `"100"` to keep its '
                    "numbers",
                    pattern=r"^$|^[0-9]{1,3}(-[0-9]{1,3})?$",
                ),
                # A string too: `--set` passes 0.5 as a string (only integers are parsed).
                "migReconfigureSeconds": nullable(
                    {
                        "type": ["number", "string"],
                        "description": "How long nvidia.com/mig.config.state stays pending "
                        "before a requested MIG layout is applied (seconds, >= 0)",
                        "minimum": 0,
                        "pattern": r"^[0-9]+(\.[0-9]+)?$",
                    }
                ),
                "podPatchRbac": toggle(
                    f"{IGNORED} unless enabled: pods patch is always granted (admissionPolicy "
                    "narrows it)"
                ),
                "runaiIntegration": obj(
                    "Run:ai integration (reference chart key): the PrometheusRule "
                    "fake-gpu-operator-kwok-dcgm in namespace runai (docs/runai.md)",
                    {
                        "enabled": boolean(
                            "Create the rule once namespace runai exists (and the "
                            "monitoring.coreos.com CRD is installed); off: delete it"
                        ),
                        "pollingInterval": string(
                            "How often the rule is checked, a Go duration (30s, 2m, 1h30m)",
                            pattern=r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
                        ),
                    },
                ),
            },
        ),
        "devicePlugin": component(
            "Kubelet device plugin DaemonSet (nodes with a kubelet)",
            "device-plugin",
            enabled="Run the device plugin DaemonSet",
            node_agent=True,
            extra={
                "visibleDevicesEnvName": string(
                    "Env var carrying the allocated GPU UUIDs into containers "
                    "(FGO_VISIBLE_DEVICES next to the real NVIDIA runtime)",
                    pattern=ENV_NAME,
                ),
                "config": device_plugin_config(),
            },
        ),
        "kwokGpuDevicePlugin": component(
            "GPU capacity of KWOK nodes (device-plugin image, DEVICE_PLUGIN_MODE=kwok)",
            "device-plugin",
            enabled="Run the KWOK capacity controller",
            central=True,
        ),
        "draPlugin": component(
            "Kubelet DRA plugin DaemonSet for driver gpu.nvidia.com (nodes with a kubelet)",
            "dra-plugin",
            enabled="Run the DRA kubelet plugin DaemonSet",
            node_agent=True,
            extra={
                **node_plugin_paths,
                "visibleDevicesEnvName": string(
                    "Env var carrying the allocated GPU UUIDs into containers (CDI)",
                    pattern=ENV_NAME,
                ),
                "deviceNaming": string(
                    "Names of full-GPU devices (also for the kwok-dra-plugin): nvidia "
                    "(gpu-<minor>, NVIDIA's DRA driver) or reference (gpu-<uuid>, "
                    "run-ai/fake-gpu-operator 0.2)",
                    enum=["nvidia", "reference"],
                ),
                "featureGates": obj(
                    "NVIDIA DRA driver feature gates for GPU sharing through opaque "
                    "GpuConfig/MigDeviceConfig in claims (docs/sharing.md); a claim asking for a "
                    "strategy that is off fails to prepare, as with NVIDIA's driver",
                    {
                        "TimeSlicingSettings": boolean("sharing.strategy TimeSlicing"),
                        "MPSSupport": boolean("sharing.strategy MPS"),
                    },
                ),
                "serviceAccount": obj(
                    f"{IGNORED}: the plugin runs as fgo-dra-plugin, created by the chart",
                    {
                        "create": boolean("Reference chart key"),
                        "name": string("Reference chart key"),
                        "annotations": free_object("Reference chart key"),
                    },
                ),
                "kubeletPlugin": kubelet_plugin(),
                "imagePullSecrets": {
                    **build_pull_secrets(),
                    "description": f"{MAPPED} the plugin pod's imagePullSecrets (added)",
                },
            },
        ),
        "kwokDraPlugin": component(
            "ResourceSlices of KWOK nodes (driver gpu.nvidia.com)",
            "kwok-dra-plugin",
            enabled="Run the kwok-dra-plugin",
            central=True,
        ),
        "computeDomainDraPlugin": component(
            "ComputeDomains (docs/computedomains.md): CRD computedomains.resource.nvidia.com, "
            "DeviceClasses compute-domain-default-channel.nvidia.com and "
            "compute-domain-daemon.nvidia.com, the compute-domain-controller",
            "compute-domain-controller",
            enabled="Render the ComputeDomain CRD and DeviceClasses and run the "
            "compute-domain-controller (the reference's switch)",
            central=True,
            extra={
                "kwokChannels": boolean(
                    "Publish a channel-0 ResourceSlice (driver compute-domain.nvidia.com) for "
                    "every KWOK GPU node (label nvidia.com/gpu.present=true; the reference's "
                    "kwok-compute-domain-dra-plugin, which takes every KWOK node)"
                ),
                "healthcheckPort": compat(IGNORED),
                "kubeletPlugin": obj(
                    "The kubelet plugin of driver compute-domain.nvidia.com on nodes with a "
                    "kubelet: DaemonSet fgo-compute-domain-dra-plugin, the dra-plugin image with "
                    "DRIVER_MODE=compute-domain (the node's channel-0 ResourceSlice, channel "
                    "claims prepared with CDI device-node stand-ins); kubelet and CDI paths are "
                    "draPlugin's",
                    {
                        "enabled": boolean("Run it (with computeDomainDraPlugin.enabled)"),
                        "image": image("dra-plugin"),
                        **scheduling(True),
                        "healthcheckPort": integer(
                            "gRPC health port (liveness probe)", minimum=1, maximum=65535
                        ),
                        "extraEnv": extra_env(),
                    },
                ),
            },
        ),
        "deviceClasses": obj(
            "DeviceClasses gpu.nvidia.com and mig.nvidia.com",
            {
                "enabled": boolean(
                    "Render them when a DRA plugin is enabled (off when the real NVIDIA DRA "
                    "driver owns them)"
                )
            },
        ),
        "statusExporter": component(
            "dcgm-exporter compatible metrics and GPU feature discovery labels",
            "status-exporter",
            enabled="Run the status-exporter (DaemonSet, and the KWOK Deployment)",
            node_agent=True,
            extra={
                "port": integer("Port of /metrics and of the Services", minimum=1, maximum=65535),
                "dcgmExporterVersion": string(
                    "dcgm-exporter release to reproduce (empty: the exporter's default)"
                ),
                "hostnameLabel": string(
                    "Host label name (empty: what dcgmExporterVersion uses)",
                    enum=["", "Hostname", "hostname"],
                ),
                "referenceHostname": boolean(
                    "Per-node mode: Hostname value nvidia-dcgm-exporter-<hash> like the reference"
                ),
                "emptyPodLabels": boolean("Empty pod/namespace/container labels on idle GPUs"),
                "extraMetrics": nullable(
                    {
                        "type": "array",
                        "description": (
                            "Extra DCGM fields and dcgm-exporter's own families, e.g. "
                            "DCGM_FI_PROF_SM_ACTIVE, DCGM_EXP_XID_ERRORS_COUNT"
                        ),
                        "items": {"type": "string", "pattern": r"^DCGM_(FI|EXP)_[A-Z0-9_]+$"},
                    }
                ),
                "kwok": obj(
                    "The Deployment serving every KWOK GPU node",
                    {
                        "enabled": boolean("Run it"),
                        "replicas": replicas(),
                        **scheduling(False),
                        "prometheusRule": toggle(f"{IGNORED}: no PrometheusRule"),
                        "perNodeTargets": boolean(
                            "One scrape target per KWOK node (/metrics/<node>, listed at "
                            "/http_sd); with serviceMonitor.enabled, a ScrapeConfig with "
                            "httpSDConfigs instead of this exporter's ServiceMonitor"
                        ),
                    },
                ),
                "serviceMonitor": obj(
                    "Prometheus operator ServiceMonitors for both exporters",
                    {
                        "enabled": boolean("Render them (needs the monitoring.coreos.com/v1 API)"),
                        "interval": string("Scrape interval", pattern=r"^([0-9]+(ms|s|m|h))+$"),
                        "labels": nullable(
                            {
                                "type": "object",
                                "description": "Extra labels (e.g. release: kube-prometheus-stack)",
                                "additionalProperties": {"type": "string"},
                            }
                        ),
                    },
                ),
                "topologyMaxExportInterval": string(
                    f"{IGNORED}: metrics are computed at every scrape"
                ),
                "nodeResourceTopology": obj(
                    "NodeResourceTopology objects (topology.node.k8s.io/v1alpha2) for the nodes "
                    "of pools with a numa block, published by the status-updater (docs/numa.md)",
                    {
                        "enabled": boolean("Publish them; available follows the pods holding GPUs"),
                        "installCRD": boolean(
                            "Install the CRD with the chart (default true; kept on uninstall; "
                            "left alone when another installer owns it)"
                        ),
                    },
                ),
                "podResources": obj(
                    "A fake kubelet podresources v1 socket (List, GetAllocatableResources, Get) "
                    "and sysfs NUMA files per node, served by the per-node exporter (DaemonSet) "
                    "from the node's record and its pool's numa block (docs/numa.md)",
                    {
                        "enabled": boolean("Serve them (the reference's key)"),
                        "socketDir": string(
                            "Host directory of the socket kubelet.sock (hostPath); never the "
                            "kubelet's own /var/lib/kubelet/pod-resources",
                            pattern="^/",
                        ),
                        "sysfsDir": string(
                            "Host directory that stands for /sys: devices/system/node/node<z>/"
                            "cpulist, cpumap, distance, node/online, possible, has_cpu, "
                            "has_memory, cpu/online, possible, present (hostPath)",
                            pattern="^/",
                        ),
                    },
                ),
            },
        ),
        "admissionPolicy": obj(
            "ValidatingAdmissionPolicies narrowing the pods patch of the device-plugin node "
            "agent and the status-updater to their own annotation (docs/security.md)",
            {
                "enabled": boolean(
                    "Render them (only where the cluster serves admissionregistration.k8s.io/v1 "
                    "ValidatingAdmissionPolicy)"
                )
            },
        ),
        "runai": obj(
            "Run:ai / KAI surface on nodes with a kubelet (docs/runai.md)",
            {
                "preloaderStubs": boolean(
                    "The node agents (device plugin, DRA plugin) install no-op "
                    "/var/lib/runai/shared/{memory,pid}/preloader.so, which Run:ai's fractional "
                    "GPU pods LD_PRELOAD (the reference always installs them)"
                ),
                "nvidiaSmi": boolean(
                    "A MutatingAdmissionPolicy gives the containers of fractional pods "
                    "(annotation gpu-fraction or gpu-memory, no GPU of their own) nvidia-smi: "
                    "read-only hostPath mounts of the node agents' bundle, launcher and state "
                    "dir, FGO_POD_UID (downward API) and FGO_SEED. Rendered only where the "
                    "cluster serves admissionregistration.k8s.io/v1 MutatingAdmissionPolicy "
                    "(Kubernetes 1.36+); skips namespaces whose Pod Security level forbids "
                    "hostPath"
                ),
                "procFiles": boolean(
                    "The node-mode exporter writes Run:ai's per-pod GPU files of fractional pods "
                    "under the node's /var/lib/runai/proc (pod/<uid>/metrics/gpu/<idx>/"
                    "utilization.sm, memory.allocated; events); it then runs as uid 0 without "
                    "capabilities (the reference always writes them)"
                ),
            },
        ),
        "runtimeClass": obj(
            "RuntimeClass nvidia (handler runc)",
            {"enabled": boolean("Render it (off where NVIDIA's GPU operator owns it)")},
        ),
        "builtinProfiles": obj(
            "Built-in GPU profiles",
            {"enabled": boolean("Accepted for compatibility: built-in profiles are in the code")},
        ),
        "customProfiles": nullable(
            {
                "type": "object",
                "description": "Extra GPU products: name -> profile (reference profile.yaml "
                "shape; device_defaults.name and .memory.total_bytes, system.driver_version and "
                ".cuda_version are used), rendered into ConfigMap topology key profiles.yml; "
                "pools name them as their GPU type (docs/profiles.md)",
                "propertyNames": {"pattern": DNS_LABEL},
                "additionalProperties": {"type": "object"},
            }
        ),
    }
    for key in (
        "topologyServer",
        "migFaker",
        "nvmlMock",
        "gpuOperator",
        "nvidiaDraDriver",
        "ubuntu",
        "computeDomainController",
        "kwokComputeDomainDraPlugin",
        "gpu-operator",
        "nvidia-dra-driver-gpu",
        "global",
    ):
        props[key] = free_object("Helm's global values (unused)") if key == "global" else compat()
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "fake-gpu-operator values",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }


def render_schema() -> str:
    return json.dumps(build(), indent=2) + "\n"


COMMON_KNOBS = (
    "image",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "podAnnotations",
    "extraEnv",
)
DOC = ROOT / "docs" / "chart.md"
BEGIN = "<!-- BEGIN values table: generated by hack/gen-chart.py -->"
END = "<!-- END values table -->"


def _default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict | list) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, dict | list):
        return "see values.yaml"
    return json.dumps(value)


def values_table() -> str:
    """The values reference of docs/chart.md: every key, its default, its description."""
    import yaml

    schema = build()["properties"]
    defaults = yaml.safe_load(VALUES.read_text())
    rows = ["| key | default | description |", "|---|---|---|"]

    def walk(prefix: str, node: Schema, value: Any, depth: int) -> None:
        props = node.get("properties")
        is_component = props is not None and "image" in props and "resources" in props
        if props and depth < 3 and (depth == 0 or isinstance(value, dict)):
            for key, sub in props.items():
                if is_component and key in COMMON_KNOBS:
                    continue
                sub_value = value.get(key) if isinstance(value, dict) else None
                walk(f"{prefix}.{key}" if prefix else key, sub, sub_value, depth + 1)
            if depth > 0 and not is_component:
                return
            if depth > 0:
                knobs = ", ".join(f"`{k}`" for k in COMMON_KNOBS if k in props)
                rows.append(f"| `{prefix}.{{...}}` | | per-component knobs: {knobs} |")
            return
        text = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{prefix}` | `{_default(value)}` | {text} |")

    walk("", {"properties": schema}, defaults, 0)
    return "\n".join(rows)


def render_doc() -> str | None:
    if not DOC.is_file():
        return None
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC.relative_to(ROOT)}: values table markers missing")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{values_table()}\n{END}{tail}"


def render_defaults() -> str:
    values = VALUES.read_text()
    if "{{" in values or "}}" in values:
        raise SystemExit("values.yaml must not contain template delimiters")
    return (
        "{{/* Generated by hack/gen-chart.py from values.yaml; do not edit. The chart's default\n"
        "values, for top-level keys a user set to null (see fgo.get in _helpers.tpl). */}}\n"
        '{{- define "fgo.defaults" -}}\n' + values.rstrip() + "\n{{- end -}}\n"
    )


def render_catalog() -> str:
    """The names a pool may give as GPU type or profile, in the status-updater's normalised
    form (fgo_common.profiles.normalise_product), so templates/validate.yaml refuses at install
    time what the status-updater would refuse at run time."""
    from fgo_common.profiles import BUILTIN_CATALOG, normalise_product

    names = {
        normalise_product(name)
        for profile in BUILTIN_CATALOG
        for name in (profile.key, profile.name, *profile.aliases)
    }
    return (
        "{{/* Generated by hack/gen-chart.py from fgo_common.profiles; do not edit. Built-in GPU\n"
        "names, normalised like fgo_common.profiles.normalise_product (validate.yaml). */}}\n"
        '{{- define "fgo.builtinGpuNames" -}}\n' + " ".join(sorted(names)) + "\n{{- end -}}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    outputs = {
        SCHEMA: render_schema(),
        DEFAULTS: render_defaults(),
        CATALOG: render_catalog(),
    }
    doc = render_doc()
    if doc is not None:
        outputs[DOC] = doc
    if args.check:
        stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run hack/gen-chart.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
