"""Malformed, hostile and huge inputs, shared by the bad-input tests (unit and live)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

MIB = 1024 * 1024

# Values that break naive parsers: wrong types, extremes, NaN, unicode, control characters.
NASTY_SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    -(2**63),
    2**63,
    10**400,
    0.5,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    "",
    " ",
    "0",
    "-1",
    "1e400",
    "9" * 400,
    "nan",
    "inf",
    "null",
    "~",
    "yes",
    "H100\x00",
    "H\u0130100",  # dotted capital I: lower() changes the length
    "\uff28\uff29\uff2f\uff2f",  # fullwidth letters
    "💥" * 50,
    "\u202etxet",  # right-to-left override
    "a" * 70_000,
    "../../etc/passwd",
    "${HOME}",
    "{{ .Values }}",
    "'; DROP TABLE gpus; --",
]

nasty = st.one_of(
    st.sampled_from(NASTY_SCALARS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nasty_values() -> st.SearchStrategy[Any]:
    """Scalars plus small containers of them (a list where a scalar belongs and vice versa)."""
    return st.recursive(
        nasty,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=3),
        ),
        max_leaves=6,
    )


# Topology configs as YAML text: (id, text). Each must give a ConfigError, never another error.
CONFIG_TEXTS: list[tuple[str, str]] = [
    ("empty", ""),
    ("null", "null"),
    ("scalar", "42"),
    ("list", "- a\n- b"),
    ("tab-indent", "nodePools:\n\tp: {}"),
    ("unclosed-flow", "nodePools: {a: {gpus: [{type: H100"),
    ("duplicate-anchor-alias-loop", "a: &a [*a]"),
    ("python-tag", "!!python/object/apply:os.system ['true']"),
    ("binary-tag", "nodePools: !!binary aGVsbG8="),
    ("nul-bytes", "nodePools:\x00"),
    ("bom-and-garbage", "\ufeff\x01\x02nodePools"),
    ("unknown-top-key", "nodePool: {}"),
    ("pools-not-mapping", "nodePools: [a, b]"),
    ("no-pools", "nodePools: {}"),
    ("pool-null", "nodePools: {a: null}"),
    ("pool-no-gpus", "nodePools: {a: {otherDevices: []}}"),
    ("gpus-not-list", "nodePools: {a: {gpus: H100}}"),
    ("gpus-empty", "nodePools: {a: {gpus: []}}"),
    ("gpu-not-mapping", "nodePools: {a: {gpus: [H100]}}"),
    ("count-zero", "nodePools: {a: {gpus: [{type: H100, count: 0}]}}"),
    ("count-negative", "nodePools: {a: {gpus: [{type: H100, count: -8}]}}"),
    ("count-huge", "nodePools: {a: {gpus: [{type: H100, count: 1000000000000}]}}"),
    ("count-float", "nodePools: {a: {gpus: [{type: H100, count: 2.5}]}}"),
    ("count-string", "nodePools: {a: {gpus: [{type: H100, count: eight}]}}"),
    ("count-bool", "nodePools: {a: {gpus: [{type: H100, count: true}]}}"),
    ("count-nan", "nodePools: {a: {gpus: [{type: H100, count: .nan}]}}"),
    (
        "total-over-limit",
        "nodePools: {a: {gpus: [{type: H100, count: 40}, {type: L4, count: 40}]}}",
    ),
    ("unknown-product", "nodePools: {a: {gpus: [{type: GeForce 256}]}}"),
    ("unknown-product-unicode", 'nodePools: {a: {gpus: [{type: "\uff28\uff11\uff10\uff10"}]}}'),
    ("type-list", "nodePools: {a: {gpus: [{type: [H100]}]}}"),
    ("type-empty", "nodePools: {a: {gpus: [{type: ''}]}}"),
    ("memory-negative", "nodePools: {a: {gpus: [{type: H100, memory: -80Gi}]}}"),
    ("memory-zero", "nodePools: {a: {gpus: [{type: H100, memory: 0}]}}"),
    ("memory-bad-unit", "nodePools: {a: {gpus: [{type: H100, memory: 80parsecs}]}}"),
    ("memory-inf", "nodePools: {a: {gpus: [{type: H100, memory: .inf}]}}"),
    ("memory-nan", "nodePools: {a: {gpus: [{type: H100, memory: .nan}]}}"),
    ("memory-400-digits", "nodePools: {a: {gpus: [{type: H100, memory: " + "9" * 400 + "Gi}]}}"),
    ("memory-mapping", "nodePools: {a: {gpus: [{type: H100, memory: {Gi: 80}}]}}"),
    ("unknown-gpu-key", "nodePools: {a: {gpus: [{type: H100, colour: green}]}}"),
    ("legacy-no-count", "nodePools: {a: {gpuProduct: Tesla-K80}}"),
    ("legacy-count-string", "nodePools: {a: {gpuProduct: Tesla-K80, gpuCount: '2'}}"),
    ("legacy-memory-list", "nodePools: {a: {gpuProduct: H100, gpuCount: 2, gpuMemory: [1]}}"),
    ("profile-unknown", "nodePools: {a: {gpu: {profile: h9000}}}"),
    ("profile-backend", "nodePools: {a: {gpu: {backend: nvml, profile: h100}}}"),
    ("profile-no-profile", "nodePools: {a: {gpu: {}}}"),
    ("profile-overrides-list", "nodePools: {a: {gpu: {profile: h100, overrides: [1]}}}"),
    (
        "profile-device-count-bool",
        "nodePools: {a: {gpu: {profile: h100, overrides: {device_count: true}}}}",
    ),
    (
        "profile-device-count-huge",
        "nodePools: {a: {gpu: {profile: h100, overrides: {device_count: 99999}}}}",
    ),
    (
        "profile-total-bytes-negative",
        "nodePools: {a: {gpu: {overrides: {device_defaults: {name: X, memory: {total_bytes: -1}}}}}}",
    ),
    ("profile-name-list", "nodePools: {a: {gpu: {overrides: {device_defaults: {name: [1]}}}}}"),
    ("numa-zones-huge", "nodePools: {a: {gpus: [{type: H100}], numa: {zones: 1000}}}"),
    (
        "numa-per-zone-mismatch",
        "nodePools: {a: {gpus: [{type: H100, count: 2}], numa: {zones: 2, gpusPerZone: [5, 5]}}}",
    ),
    (
        "numa-per-zone-bools",
        "nodePools: {a: {gpus: [{type: H100}], numa: {zones: 2, gpusPerZone: [1, true]}}}",
    ),
    ("other-devices-not-list", "nodePools: {a: {gpus: [{type: H100}], otherDevices: x}}"),
    (
        "other-devices-count-huge",
        "nodePools: {a: {gpus: [{type: H100}], otherDevices: [{name: x, count: 99999999}]}}",
    ),
    ("resources-two-keys", "nodePools: {a: {gpu: {profile: h100}, resources: [{a: 1, b: 2}]}}"),
    ("resources-int-key", "nodePools: {a: {gpu: {profile: h100}, resources: [{5: 1}]}}"),
    ("mig-not-mapping", "nodePools: {a: {gpus: [{type: H100}], mig: all-1g}}"),
    ("mig-strategy-bad", "nodePools: {a: {gpus: [{type: H100}]}}\nmigStrategy: sometimes"),
    ("mig-strategy-list", "nodePools: {a: {gpus: [{type: H100}]}}\nmigStrategy: [none]"),
    ("label-key-int", "nodePools: {a: {gpus: [{type: H100}]}}\nnodePoolLabelKey: 5"),
    ("label-key-empty", "nodePools: {a: {gpus: [{type: H100}]}}\nnodePoolLabelKey: ''"),
    ("driver-version-list", "nodePools: {a: {gpus: [{type: H100}], driverVersion: [1]}}"),
    ("pool-name-int", "nodePools: {1: {gpus: [{type: H100}]}}"),
    ("pool-name-null", "nodePools: {~: {gpus: [{type: H100}]}}"),
    ("pool-name-complex", "nodePools: {? [a] : {gpus: [{type: H100}]}}"),
    ("helm-wrapper-bad", "topology: 5"),
    ("nested-100k", "[" * 50_000 + "]" * 50_000),
    ("nested-mapping-20k", "{a: " * 20_000 + "1" + "}" * 20_000),
    (
        "billion-laughs",
        "\n".join([f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]).replace(
            "*l0", "x"
        )
        + "\nnodePools: {p: {gpus: *l8}}",
    ),
    ("1MiB-string", "nodePools: {a: {gpus: [{type: '" + "x" * MIB + "'}]}}"),
    ("1MiB-binary", bytes(range(256)).decode("latin-1") * (MIB // 256)),
    (
        "1MiB-many-keys",
        "nodePools:\n  a:\n    gpus: [{type: H100}]\n"
        + "".join(f"    k{i}: v\n" for i in range(MIB // 12)),
    ),
]

# Documents that are valid YAML but wrong per field: the error must name the field's path.
CONFIG_PATHS: list[tuple[str, str]] = [
    ("nodePools: {a: {gpus: [{type: H100, count: 0}]}}", "nodePools.a.gpus[0].count"),
    ("nodePools: {a: {gpus: [{type: H100, memory: -1}]}}", "nodePools.a.gpus[0].memory"),
    ("nodePools: {a: {gpus: [{type: Nope}]}}", "nodePools.a.gpus[0].type"),
    ("nodePools: {a: {gpus: [{type: H100}], numa: {zones: 99}}}", "nodePools.a.numa.zones"),
    ("nodePools: {a: {gpus: [{type: H100}]}}\nmigStrategy: x", "migStrategy"),
    ("nodePools: {a: {gpuProduct: H100, gpuCount: -2}}", "nodePools.a.gpuCount"),
    ("nodePools: {a: {gpu: {profile: nope}}}", "nodePools.a.gpu.profile"),
]
