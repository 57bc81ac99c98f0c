"""Benchmarks of humanaes against a reference implementation of the official inference flow.

Entry point: ``python -m benchmarks.run --suite cpu|gpu --json out.json`` (see docs/benchmarks.md).
"""
