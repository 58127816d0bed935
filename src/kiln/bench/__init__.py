"""Variants and their measured scores: quality, latency, throughput, memory, size."""
