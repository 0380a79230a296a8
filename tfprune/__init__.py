"""tfprune: structured pruning (filters, channels, attention heads, MLP widths) for Keras 3 models.

model → ChannelGraph → scores → Plan → mask (zeros, same shapes) or rebuild (a new, smaller model) → export.
"""

import importlib
import typing

__version__ = "0.1.0"

# Public name -> the module that defines it. Each is imported on first use (PEP 562), so `import tfprune` and
# `tfprune --help` do not load TensorFlow; add new public names here (not as `from ... import` lines).
_PUBLIC = {
    "ChannelGraph": "tfprune.graph",
    "ExportError": "tfprune.errors",
    "Group": "tfprune.graph",
    "Plan": "tfprune.pruning.plans",
    "OutputChangeWarning": "tfprune.errors",
    "PlanError": "tfprune.errors",
    "RuntimeUnavailableError": "tfprune.errors",
    "SensitivityResult": "tfprune.criteria.sensitivity",
    "UnknownMACsError": "tfprune.errors",
    "UnsupportedModelError": "tfprune.errors",
    "benchmark": "tfprune.measurement.benchmarking",
    "count_macs": "tfprune.measurement.counting",
    "count_params": "tfprune.measurement.counting",
    "export": "tfprune.deployment.exporting",
    "fine_tune": "tfprune.training.fine_tuning",
    "mask": "tfprune.pruning.masking",
    "plan": "tfprune.pruning.planning",
    "plan_for_latency": "tfprune.pruning.targets",
    "plan_for_macs": "tfprune.pruning.targets",
    "prune": "tfprune.pruning.prune",
    "rebuild": "tfprune.pruning.rebuilding",
    "reconstruct": "tfprune.criteria.channel_pruning.reconstruction",
    "scratch_b_epochs": "tfprune.training.budgets",
    "sensitivity": "tfprune.criteria.sensitivity",
    "summary": "tfprune.measurement.summaries",
    "trace": "tfprune.graph",
}

# Public modules: `tfprune.callbacks` is the module `tfprune.callbacks`, `tfprune.models` is `tfprune.training.models`.
_MODULES = {
    "callbacks": "tfprune.callbacks",
    "criteria": "tfprune.criteria",
    "datasets": "tfprune.training.datasets",
    "layers": "tfprune.layers",
    "macs_model": "tfprune.measurement.macs_model",
    "models": "tfprune.training.models",
    "search": "tfprune.search",
}

__all__ = sorted({**_PUBLIC, **_MODULES})

# The same names for static readers (type checkers, the API reference's griffe), which cannot run __getattr__.
# `_PUBLIC` stays the runtime source of truth; tests/test_public_api.py checks that the two name the same
# modules. A public module at its own path (`tfprune.callbacks`, `tfprune.search`, ...) needs no line.
if typing.TYPE_CHECKING:
    from tfprune.criteria.channel_pruning.reconstruction import reconstruct as reconstruct
    from tfprune.criteria.sensitivity import SensitivityResult as SensitivityResult
    from tfprune.criteria.sensitivity import sensitivity as sensitivity
    from tfprune.deployment.exporting import export as export
    from tfprune.errors import ExportError as ExportError
    from tfprune.errors import OutputChangeWarning as OutputChangeWarning
    from tfprune.errors import PlanError as PlanError
    from tfprune.errors import RuntimeUnavailableError as RuntimeUnavailableError
    from tfprune.errors import UnknownMACsError as UnknownMACsError
    from tfprune.errors import UnsupportedModelError as UnsupportedModelError
    from tfprune.graph import ChannelGraph as ChannelGraph
    from tfprune.graph import Group as Group
    from tfprune.graph import trace as trace
    from tfprune.measurement import macs_model as macs_model
    from tfprune.measurement.benchmarking import benchmark as benchmark
    from tfprune.measurement.counting import count_macs as count_macs
    from tfprune.measurement.counting import count_params as count_params
    from tfprune.measurement.summaries import summary as summary
    from tfprune.pruning.masking import mask as mask
    from tfprune.pruning.planning import plan as plan
    from tfprune.pruning.plans import Plan as Plan
    from tfprune.pruning.prune import prune as prune
    from tfprune.pruning.rebuilding import rebuild as rebuild
    from tfprune.pruning.targets import plan_for_latency as plan_for_latency
    from tfprune.pruning.targets import plan_for_macs as plan_for_macs
    from tfprune.training import datasets as datasets
    from tfprune.training import models as models
    from tfprune.training.budgets import scratch_b_epochs as scratch_b_epochs
    from tfprune.training.fine_tuning import fine_tune as fine_tune


def __getattr__(name):
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    else:
        raise AttributeError(f"module 'tfprune' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
