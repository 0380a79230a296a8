"""Measurement: `count_macs`, `count_params` and the per-layer counts, the analytic `MacsModel` of a plan, `summary`
(before and after), and the latency benchmark (`benchmark`) with its subprocess worker."""
