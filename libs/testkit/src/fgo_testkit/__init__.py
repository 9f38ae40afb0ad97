"""Test helpers shared by the tests and benchmarks of several packages; never installed in an
image (no service depends on this distribution, and tests/repo/test_layering.py fails if shipped
code imports it or a shipped package grows a test helper of its own).

- ``kubelet``            kubelet-side peers (device plugin, DRA, plugin registration,
                         podresources) over real unix sockets, on asyncio and grpc.aio
- ``proto_conformance``  our kubelet .proto files against the official ones, by descriptor
- ``status_updater``     the status-updater as a real subprocess, and reading its records
"""
