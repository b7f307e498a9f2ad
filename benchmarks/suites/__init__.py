"""Benchmark suites: one module a kernel (see ``benchmarks/common.py`` for the interface)."""
