"""Benchmarks that measure and print tables (never pass/fail on time in tests)."""
