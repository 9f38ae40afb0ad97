"""Fast (libyaml) reading and writing of per-node records.

The record's YAML is what ``NodeTopology.to_yaml``/``from_yaml`` produce; the pure-Python PyYAML
they use costs tens of milliseconds per 8-GPU record, which at hundreds of nodes is most of the
controller's CPU. The C emitter/parser produce/accept the same documents.
"""

from __future__ import annotations

from typing import Any

import yaml
from fgo_common.topology import NodeTopology, TopologyFormatError

_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dump_record(record: NodeTopology) -> str:
    return str(yaml.dump(record.to_dict(), Dumper=_Dumper, sort_keys=False))


def load_record(text: str, node_name: str) -> NodeTopology:
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader (C or Python)
    except yaml.YAMLError as exc:
        raise TopologyFormatError(f"node topology is not valid YAML: {exc}") from exc
    return NodeTopology.from_dict(raw, node_name)
