"""Benchmarks; their JSON output is committed under bench/results/."""
