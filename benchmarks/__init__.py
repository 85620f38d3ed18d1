"""Benchmarks: workloads, and the scripts that measure the scheduler with them."""
