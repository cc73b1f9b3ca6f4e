"""Benchmarks (`make bench`): latency and throughput figures, written to bench-results/."""
