"""tfprune: structured (filter and channel) pruning for Keras 3 convolutional networks.

model → ChannelGraph → scores → Plan → mask (zeros, same shapes) or rebuild (a new, smaller model) → export.
"""

__version__ = "0.1.0"

from tfprune import callbacks
from tfprune.benchmarking import benchmark
from tfprune.budgets import scratch_b_epochs
from tfprune.counting import count_macs, count_params
from tfprune.errors import PlanError, UnsupportedModelError
from tfprune.exporting import export
from tfprune.graph import ChannelGraph, Group
from tfprune.masking import mask
from tfprune.planning import plan
from tfprune.plans import Plan
from tfprune.pruning import prune
from tfprune.rebuilding import rebuild
from tfprune.sensitivity_analysis import SensitivityResult, sensitivity
from tfprune.summaries import summary

__all__ = [
    "ChannelGraph",
    "Group",
    "Plan",
    "PlanError",
    "SensitivityResult",
    "UnsupportedModelError",
    "benchmark",
    "callbacks",
    "count_macs",
    "count_params",
    "export",
    "mask",
    "plan",
    "prune",
    "rebuild",
    "scratch_b_epochs",
    "sensitivity",
    "summary",
]
