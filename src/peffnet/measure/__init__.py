"""Measurement: throughput, latency, memory, rooflines and the paper's efficiency plots."""
