"""Tests of the benchmarks/ scripts (not of the installed package)."""
