"""Benchmark scripts, a package run as modules from the repository root.

``python -m benchmarks.bench_inference --quick`` (see benchmarks/README.md); the scripts import
their helpers as ``benchmarks._common`` and ``benchmarks.torch_deeplab``, and their worker
processes run as modules too, from the repository root.
"""
