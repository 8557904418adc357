"""Peer implementations (other frameworks) that the benchmark suites compare against."""
