"""Helpers for the tests, the demo and the benchmarks; a dev dependency, never installed in a service image."""
