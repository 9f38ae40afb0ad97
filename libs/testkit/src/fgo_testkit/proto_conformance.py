"""Compare our .proto files with the official kubelet ones, at the descriptor level.

Both sides are compiled by protoc into FileDescriptorProtos and compared on everything that
shapes the wire format or the gRPC surface: package, services, methods (names, input/output
types, streaming), messages and nested messages, enums, oneofs, fields (name, number, type,
type name, label, proto3 ``optional``, JSON name, ``packed``), map entries and reserved ranges.
Declaration order, comments and Go-only options are not compared.

Used by tests/conformance; needs grpcio-tools (a dev dependency) only for ``compile_proto``.
"""

from __future__ import annotations

import importlib.resources
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from google.protobuf import descriptor_pb2

__all__ = ["compare_files", "compile_proto", "pinned_kubelet_version", "strip_gogo"]

_F = descriptor_pb2.FieldDescriptorProto

_GOGO_IMPORT = re.compile(
    r'^[ \t]*import[ \t]+(?:public[ \t]+|weak[ \t]+)?"github\.com/gogo/protobuf/[^"]*";[ \t]*\n?',
    re.M,
)
_GOGO_FILE_OPTION = re.compile(r"^[ \t]*option[ \t]*\(gogoproto\.\w+\)[^;]*;[ \t]*\n?", re.M)
_GOGO_FIELD_OPTION = re.compile(r'\(gogoproto\.\w+\)\s*=\s*(?:"[^"]*"|[\w.]+)')


def strip_gogo(text: str) -> str:
    """Remove gogoproto imports and options: they shape generated Go code, not the wire.

    Older k8s.io/kubelet releases import github.com/gogo/protobuf/gogoproto/gogo.proto and set
    options such as ``[(gogoproto.customname) = "ID", (gogoproto.nullable) = false]``. Stripping
    them (rather than stubbing gogo.proto) works whatever option names a release uses.
    """
    text = _GOGO_IMPORT.sub("", text)
    text = _GOGO_FILE_OPTION.sub("", text)
    text = _GOGO_FIELD_OPTION.sub("", text)
    # Tidy the separators left behind, then drop option lists that became empty.
    text = re.sub(r"\[(\s*,)+", "[", text)
    text = re.sub(r",(\s*,)+", ",", text)
    text = re.sub(r",\s*\]", "]", text)
    return re.sub(r"[ \t]*\[\s*\]", "", text)


def pinned_kubelet_version(go_mod: Path) -> str:
    """The k8s.io/kubelet version matching go.mod's k8s.io/kubernetes (v1.X.Y -> v0.X.Y)."""
    text = go_mod.read_text()
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+v1\.(\d+)\.(\d+)\b", text, re.M)
    if match is None:
        raise ValueError(f"no k8s.io/kubernetes v1.x.y requirement in {go_mod}")
    version = f"v0.{match.group(1)}.{match.group(2)}"
    # Where go.mod also names k8s.io/kubelet (require or replace), it must agree.
    for other in re.findall(r"k8s\.io/kubelet\s+(v\d+\.\d+\.\d+)", text):
        if other != version:
            raise ValueError(f"{go_mod} pins k8s.io/kubelet {other}, expected {version}")
    return version


def compile_proto(proto_root: Path, rel_path: str) -> descriptor_pb2.FileDescriptorProto:
    """Compile ``proto_root/rel_path`` with grpc_tools' protoc; return its descriptor."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="fgo-protoc-") as tmp:
        out = Path(tmp) / "set.pb"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"-I{well_known}",
                f"--descriptor_set_out={out}",
                rel_path,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed on {proto_root / rel_path}:\n{result.stderr}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return next(f for f in files if f.name == rel_path)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def compare_files(
    ours: descriptor_pb2.FileDescriptorProto, theirs: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """Every difference that matters, as readable lines; an empty list means conformant."""
    diffs: list[str] = []
    _eq(diffs, "syntax", ours.syntax or "proto2", theirs.syntax or "proto2")
    _eq(diffs, "package", ours.package, theirs.package)
    _eq(
        diffs,
        "imports",
        sorted(_non_gogo(ours.dependency)),
        sorted(_non_gogo(theirs.dependency)),
    )
    _by_name(diffs, "service", ours.service, theirs.service, _compare_service)
    _by_name(diffs, "message", ours.message_type, theirs.message_type, _compare_message)
    _by_name(diffs, "enum", ours.enum_type, theirs.enum_type, _compare_enum)
    _by_name(diffs, "extension", ours.extension, theirs.extension, _compare_field)
    return diffs


def _non_gogo(deps: Iterable[str]) -> list[str]:
    return [d for d in deps if not d.startswith("github.com/gogo/protobuf/")]


def _eq(diffs: list[str], where: str, ours: object, theirs: object) -> None:
    if ours != theirs:
        diffs.append(f"{where}: ours {ours!r} != official {theirs!r}")


def _by_name(
    diffs: list[str],
    kind: str,
    ours: Sequence[_N],
    theirs: Sequence[_N],
    compare: Callable[[list[str], str, _N, _N], None],
) -> None:
    ours_by = {item.name: item for item in ours}
    theirs_by = {item.name: item for item in theirs}
    for name in sorted(theirs_by.keys() - ours_by.keys()):
        diffs.append(f"{kind} {name}: missing from ours")
    for name in sorted(ours_by.keys() - theirs_by.keys()):
        diffs.append(f"{kind} {name}: not in the official definition")
    for name in sorted(ours_by.keys() & theirs_by.keys()):
        compare(diffs, f"{kind} {name}", ours_by[name], theirs_by[name])


def _compare_service(
    diffs: list[str],
    where: str,
    ours: descriptor_pb2.ServiceDescriptorProto,
    theirs: descriptor_pb2.ServiceDescriptorProto,
) -> None:
    _by_name(diffs, f"{where} method", ours.method, theirs.method, _compare_method)


def _compare_method(
    diffs: list[str],
    where: str,
    ours: descriptor_pb2.MethodDescriptorProto,
    theirs: descriptor_pb2.MethodDescriptorProto,
) -> None:
    for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
        _eq(diffs, f"{where} {attr}", getattr(ours, attr), getattr(theirs, attr))


def _compare_message(
    diffs: list[str],
    where: str,
    ours: descriptor_pb2.DescriptorProto,
    theirs: descriptor_pb2.DescriptorProto,
) -> None:
    _eq(diffs, f"{where} map_entry", ours.options.map_entry, theirs.options.map_entry)
    _eq(diffs, f"{where} oneofs", _oneof_names(ours), _oneof_names(theirs))
    _eq(diffs, f"{where} reserved ranges", _ranges(ours), _ranges(theirs))
    _eq(diffs, f"{where} reserved names", sorted(ours.reserved_name), sorted(theirs.reserved_name))
    _eq(
        diffs,
        f"{where} extension ranges",
        sorted((r.start, r.end) for r in ours.extension_range),
        sorted((r.start, r.end) for r in theirs.extension_range),
    )
    _by_name(diffs, f"{where} field", ours.field, theirs.field, _field_comparer(ours, theirs))
    _by_name(diffs, f"{where} message", ours.nested_type, theirs.nested_type, _compare_message)
    _by_name(diffs, f"{where} enum", ours.enum_type, theirs.enum_type, _compare_enum)
    _by_name(diffs, f"{where} extension", ours.extension, theirs.extension, _compare_field)


def _oneof_names(message: descriptor_pb2.DescriptorProto) -> list[str]:
    return sorted(o.name for o in message.oneof_decl)


def _ranges(message: descriptor_pb2.DescriptorProto) -> list[tuple[int, int]]:
    return sorted((r.start, r.end) for r in message.reserved_range)


def _field_comparer(
    ours_parent: descriptor_pb2.DescriptorProto, theirs_parent: descriptor_pb2.DescriptorProto
) -> Callable[[list[str], str, _F, _F], None]:
    def compare(diffs: list[str], where: str, ours: _F, theirs: _F) -> None:
        _compare_field(diffs, where, ours, theirs)
        # Oneof membership by name: indexes depend on declaration order.
        _eq(diffs, f"{where} oneof", _oneof_of(ours_parent, ours), _oneof_of(theirs_parent, theirs))

    return compare


def _oneof_of(parent: descriptor_pb2.DescriptorProto, field: _F) -> str | None:
    if not field.HasField("oneof_index"):
        return None
    return parent.oneof_decl[field.oneof_index].name


def _compare_field(diffs: list[str], where: str, ours: _F, theirs: _F) -> None:
    _eq(diffs, f"{where} number", ours.number, theirs.number)
    _eq(diffs, f"{where} label", _F.Label.Name(ours.label), _F.Label.Name(theirs.label))
    _eq(diffs, f"{where} type", _F.Type.Name(ours.type), _F.Type.Name(theirs.type))
    for attr in ("type_name", "json_name", "proto3_optional", "default_value", "extendee"):
        _eq(diffs, f"{where} {attr}", getattr(ours, attr), getattr(theirs, attr))
    _eq(diffs, f"{where} packed", _packed(ours), _packed(theirs))


def _packed(field: _F) -> bool | None:
    return field.options.packed if field.options.HasField("packed") else None


def _compare_enum(
    diffs: list[str],
    where: str,
    ours: descriptor_pb2.EnumDescriptorProto,
    theirs: descriptor_pb2.EnumDescriptorProto,
) -> None:
    _eq(
        diffs,
        f"{where} values",
        sorted((v.name, v.number) for v in ours.value),
        sorted((v.name, v.number) for v in theirs.value),
    )
    _eq(diffs, f"{where} allow_alias", ours.options.allow_alias, theirs.options.allow_alias)
