"""Benchmarks of the zoo's kernels and models against their peers (see ``python -m benchmarks``)."""
