"""Helpers for the tests, the chaos script and the benchmarks (never used by the service)."""
