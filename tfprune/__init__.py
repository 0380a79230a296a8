"""tfprune: structured (filter and channel) pruning for Keras 3 convolutional networks.

model → ChannelGraph → scores → Plan → mask (zeros, same shapes) or rebuild (a new, smaller model) → export.
"""

import importlib

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
