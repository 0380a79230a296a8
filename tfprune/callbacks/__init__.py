"""Keras callbacks that prune or prepare pruning during `model.fit`."""

from tfprune.callbacks.dropnet import DropNet
from tfprune.callbacks.group_lasso import GroupLasso
from tfprune.callbacks.network_slimming import NetworkSlimming
from tfprune.callbacks.pruning_callback import PruningCallback
from tfprune.callbacks.weight_snapshot import WeightSnapshot

__all__ = ["DropNet", "GroupLasso", "NetworkSlimming", "PruningCallback", "WeightSnapshot"]
