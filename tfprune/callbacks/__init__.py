"""Keras callbacks that prune or prepare pruning during `model.fit`."""

from tfprune.callbacks.weight_snapshot import WeightSnapshot

__all__ = ["WeightSnapshot"]
