"""tfprune: structured (filter and channel) pruning for Keras 3 convolutional networks.

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
    "Plan": "tfprune.plans",
    "PlanError": "tfprune.errors",
    "RuntimeUnavailableError": "tfprune.errors",
    "SensitivityResult": "tfprune.sensitivity_analysis",
    "UnknownMACsError": "tfprune.errors",
    "UnsupportedModelError": "tfprune.errors",
    "benchmark": "tfprune.benchmarking",
    "callbacks": "tfprune.callbacks",
    "count_macs": "tfprune.counting",
    "count_params": "tfprune.counting",
    "datasets": "tfprune.datasets",
    "export": "tfprune.exporting",
    "layers": "tfprune.layers",
    "macs_model": "tfprune.macs_model",
    "fine_tune": "tfprune.fine_tuning",
    "mask": "tfprune.masking",
    "models": "tfprune.models",
    "plan": "tfprune.planning",
    "plan_for_macs": "tfprune.macs_target",
    "prune": "tfprune.pruning",
    "rebuild": "tfprune.rebuilding",
    "reconstruct": "tfprune.reconstruction",
    "scratch_b_epochs": "tfprune.budgets",
    "search": "tfprune.search",
    "sensitivity": "tfprune.sensitivity_analysis",
    "summary": "tfprune.summaries",
    "trace": "tfprune.graph",
}

__all__ = sorted(_PUBLIC)

# The same names for static readers (type checkers, the API reference's griffe), which cannot run __getattr__.
# `_PUBLIC` stays the runtime source of truth; tests/test_public_api.py checks that the two name the same
# modules. A public name that is itself a top-level module of tfprune (`callbacks`, `search`, ...) needs no line.
if typing.TYPE_CHECKING:
    from tfprune.benchmarking import benchmark as benchmark
    from tfprune.budgets import scratch_b_epochs as scratch_b_epochs
    from tfprune.counting import count_macs as count_macs
    from tfprune.counting import count_params as count_params
    from tfprune.errors import ExportError as ExportError
    from tfprune.errors import PlanError as PlanError
    from tfprune.errors import RuntimeUnavailableError as RuntimeUnavailableError
    from tfprune.errors import UnknownMACsError as UnknownMACsError
    from tfprune.errors import UnsupportedModelError as UnsupportedModelError
    from tfprune.exporting import export as export
    from tfprune.fine_tuning import fine_tune as fine_tune
    from tfprune.graph import ChannelGraph as ChannelGraph
    from tfprune.graph import Group as Group
    from tfprune.graph import trace as trace
    from tfprune.macs_target import plan_for_macs as plan_for_macs
    from tfprune.masking import mask as mask
    from tfprune.planning import plan as plan
    from tfprune.plans import Plan as Plan
    from tfprune.pruning import prune as prune
    from tfprune.rebuilding import rebuild as rebuild
    from tfprune.reconstruction import reconstruct as reconstruct
    from tfprune.sensitivity_analysis import SensitivityResult as SensitivityResult
    from tfprune.sensitivity_analysis import sensitivity as sensitivity
    from tfprune.summaries import summary as summary


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tfprune' has no attribute {name!r}")
    value = importlib.import_module(module)
    if module != f"tfprune.{name}":
        value = getattr(value, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
