"""Our kubelet .proto files are wire-identical to the official ones of the pinned release.

Both are compiled by protoc into descriptors and compared with
fgo_testkit.proto_conformance.compare_files; the official files come from the Go module proxy
(see conftest.py). The negative tests prove the comparator notices each kind of change.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fgo_testkit.proto_conformance import compare_files, compile_proto, strip_gogo
from google.protobuf import descriptor_pb2

OUR_PROTO_ROOT = Path(__file__).resolve().parents[2] / "libs" / "kubelet-api" / "proto"

# Our proto tree mirrors k8s.io/kubelet/pkg/apis, so every file we have is checked against the
# official file at the same path; a new API gets its conformance test by being added.
PROTOS = tuple(sorted(str(p.relative_to(OUR_PROTO_ROOT)) for p in OUR_PROTO_ROOT.rglob("*.proto")))
REQUIRED = {
    "deviceplugin/v1beta1/api.proto",
    "dra/v1/api.proto",
    "dra/v1beta1/api.proto",
    "pluginregistration/v1/api.proto",
}

_F = descriptor_pb2.FieldDescriptorProto


def test_the_kubelet_apis_we_need_are_all_there() -> None:
    assert set(PROTOS) >= REQUIRED


def test_pinned_version_follows_kubernetes(kubelet_version: str) -> None:
    assert re.fullmatch(r"v0\.\d+\.\d+", kubelet_version)


@pytest.mark.parametrize("rel_path", PROTOS)
def test_matches_official_definition(rel_path: str, official_proto_root: Path) -> None:
    assert (official_proto_root / rel_path).is_file(), f"pinned k8s.io/kubelet lacks {rel_path}"
    ours = compile_proto(OUR_PROTO_ROOT, rel_path)
    theirs = compile_proto(official_proto_root, rel_path)
    # Guard against vacuous success: the official file really defines things.
    assert theirs.service and theirs.message_type
    diffs = compare_files(ours, theirs)
    assert diffs == [], "\n".join(diffs)


def test_comparator_catches_a_renumbered_field_in_an_altered_official_copy(
    official_proto_root: Path, tmp_path: Path
) -> None:
    rel = "dra/v1/api.proto"
    altered = tmp_path / rel
    altered.parent.mkdir(parents=True)
    text, count = re.subn(
        r"(string\s+pool_name\s*=\s*)2\s*;", r"\g<1>7;", (official_proto_root / rel).read_text()
    )
    assert count == 1
    altered.write_text(text)
    diffs = compare_files(compile_proto(OUR_PROTO_ROOT, rel), compile_proto(tmp_path, rel))
    assert diffs == ["message Device field pool_name number: ours 2 != official 7"]


# Descriptor-level mutations of one side; each must produce a diff naming what changed.
# These need no network, so the comparator is proven even where `go` is missing.


def _field(fd: descriptor_pb2.FileDescriptorProto, message: str, field: str) -> _F:
    msg = next(m for m in fd.message_type if m.name == message)
    return next(f for f in msg.field if f.name == field)


def _method(fd: descriptor_pb2.FileDescriptorProto, service: str, method: str) -> object:
    svc = next(s for s in fd.service if s.name == service)
    return next(m for m in svc.method if m.name == method)


Mutation = Callable[[descriptor_pb2.FileDescriptorProto], object]

MUTATIONS: list[tuple[str, str, Mutation, str]] = [
    (
        "package",
        "dra/v1/api.proto",
        lambda fd: setattr(fd, "package", "v1"),
        "package: ours 'v1'",
    ),
    (
        "field renamed",
        "dra/v1/api.proto",
        lambda fd: setattr(_field(fd, "Device", "pool_name"), "name", "pool"),
        "message Device field pool: not in the official definition",
    ),
    (
        "field type",
        "deviceplugin/v1beta1/api.proto",
        lambda fd: setattr(_field(fd, "NUMANode", "ID"), "type", _F.TYPE_INT32),
        "message NUMANode field ID type: ours 'TYPE_INT32' != official 'TYPE_INT64'",
    ),
    (
        "field label",
        "deviceplugin/v1beta1/api.proto",
        lambda fd: setattr(
            _field(fd, "ContainerAllocateRequest", "devices_ids"), "label", _F.LABEL_OPTIONAL
        ),
        "message ContainerAllocateRequest field devices_ids label",
    ),
    (
        "message type of a field",
        "dra/v1/api.proto",
        lambda fd: setattr(
            _field(fd, "NodePrepareResourcesRequest", "claims"),
            "type_name",
            ".k8s.io.kubelet.pkg.apis.dra.v1.Device",
        ),
        "message NodePrepareResourcesRequest field claims type_name",
    ),
    (
        "proto3 optional dropped",
        "dra/v1/api.proto",
        lambda fd: _field(fd, "Device", "share_id").ClearField("proto3_optional"),
        "message Device field share_id proto3_optional",
    ),
    (
        "server streaming dropped",
        "deviceplugin/v1beta1/api.proto",
        lambda fd: setattr(_method(fd, "DevicePlugin", "ListAndWatch"), "server_streaming", False),
        "service DevicePlugin method ListAndWatch server_streaming",
    ),
    (
        "method output type",
        "pluginregistration/v1/api.proto",
        lambda fd: setattr(
            _method(fd, "Registration", "GetInfo"), "output_type", ".pluginregistration.InfoRequest"
        ),
        "service Registration method GetInfo output_type",
    ),
    (
        "method removed",
        "deviceplugin/v1beta1/api.proto",
        lambda fd: next(s for s in fd.service if s.name == "DevicePlugin").method.pop(),
        "service DevicePlugin method PreStartContainer: missing from ours",
    ),
    (
        "map entry value type",
        "deviceplugin/v1beta1/api.proto",
        lambda fd: setattr(
            next(
                n
                for m in fd.message_type
                if m.name == "ContainerAllocateResponse"
                for n in m.nested_type
                if n.name == "EnvsEntry"
            ).field[1],
            "type",
            _F.TYPE_BYTES,
        ),
        "message ContainerAllocateResponse message EnvsEntry field value type",
    ),
    (
        "map becomes a plain message",
        "dra/v1/api.proto",
        lambda fd: next(
            n
            for m in fd.message_type
            if m.name == "NodePrepareResourcesResponse"
            for n in m.nested_type
        ).options.ClearField("map_entry"),
        "message NodePrepareResourcesResponse message ClaimsEntry map_entry",
    ),
    (
        "message removed",
        "pluginregistration/v1/api.proto",
        lambda fd: fd.message_type.pop(),
        "missing from ours",
    ),
    (
        "enum added",
        "dra/v1beta1/api.proto",
        lambda fd: fd.enum_type.add(name="Extra").value.add(name="EXTRA_UNSPECIFIED", number=0),
        "enum Extra: not in the official definition",
    ),
]


@pytest.mark.parametrize(
    ("rel_path", "mutate", "expected"),
    [pytest.param(rel, mutate, expected, id=name) for name, rel, mutate, expected in MUTATIONS],
)
def test_comparator_catches_mutation(rel_path: str, mutate: Mutation, expected: str) -> None:
    original = compile_proto(OUR_PROTO_ROOT, rel_path)
    assert compare_files(original, original) == []
    altered = descriptor_pb2.FileDescriptorProto()
    altered.CopyFrom(original)
    mutate(altered)
    diffs = compare_files(altered, original)
    assert any(expected in d for d in diffs), diffs


def test_comparator_catches_renumbering_in_our_text(tmp_path: Path) -> None:
    rel = "deviceplugin/v1beta1/api.proto"
    shutil.copytree(OUR_PROTO_ROOT, tmp_path, dirs_exist_ok=True)
    altered = tmp_path / rel
    altered.write_text(altered.read_text().replace("string health = 2;", "string health = 4;"))
    diffs = compare_files(compile_proto(tmp_path, rel), compile_proto(OUR_PROTO_ROOT, rel))
    assert diffs == ["message Device field health number: ours 4 != official 2"]


GOGO_SAMPLE = """\
syntax = "proto3";

package sample;

import "github.com/gogo/protobuf/gogoproto/gogo.proto";

option (gogoproto.goproto_stringer_all) = false;
option (gogoproto.stringer_all) =  true;
option go_package = "example.com/sample";

message Device {
  string ID = 1 [(gogoproto.customname) = "ID"];
  repeated int32 ids = 2 [packed = true, (gogoproto.nullable) = false];
  map<string, string> envs = 3 [(gogoproto.nullable) = false, (gogoproto.moretags) = "x"];
  bool ok = 4;
}
"""

PLAIN_SAMPLE = """\
syntax = "proto3";

package sample;

option go_package = "example.com/sample";

message Device {
  string ID = 1;
  repeated int32 ids = 2 [packed = true];
  map<string, string> envs = 3;
  bool ok = 4;
}
"""


def test_strip_gogo_keeps_the_wire_definition(tmp_path: Path) -> None:
    stripped = strip_gogo(GOGO_SAMPLE)
    assert "gogo" not in stripped
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "s.proto").write_text(stripped)
    (tmp_path / "b" / "s.proto").write_text(PLAIN_SAMPLE)
    diffs = compare_files(
        compile_proto(tmp_path / "a", "s.proto"), compile_proto(tmp_path / "b", "s.proto")
    )
    assert diffs == []
