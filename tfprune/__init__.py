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
    "Plan": "tfprune.pruning.plans",
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
    "datasets": "tfprune.training.datasets",
    "layers": "tfprune.layers",
    "macs_model": "tfprune.measurement.macs_model",
    "models": "tfprune.training.models",
    "search": "tfprune.search",
}

__all__ = sorted({**_PUBLIC, **_MODULES})


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
