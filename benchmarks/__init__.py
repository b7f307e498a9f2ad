"""Benchmarks of npquant's kernels against NumPy and peer libraries (see README.md here)."""
