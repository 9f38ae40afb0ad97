"""`make bench`: scale and performance scenarios on the local control plane (issue 10).

Run with ``uv run --group bench python -m bench.run``; see docs/benchmarks.md.
"""
