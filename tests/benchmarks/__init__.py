"""Tests of the benchmark suites and their peer implementations."""
