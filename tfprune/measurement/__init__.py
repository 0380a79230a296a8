"""Measurement: `count_macs`, `count_params` and the per-layer counts, the cost models of a plan (`costs`: MACs,
params and latency from per-layer tables), `summary` (before and after), and the latency benchmark (`benchmark`) with
its subprocess workers."""
