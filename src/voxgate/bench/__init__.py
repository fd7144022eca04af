"""Benchmarks and soak runs: a real node in its own process, driven through the real protocol."""
