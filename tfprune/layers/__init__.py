"""Keras layers that tfprune inserts into models during training or search."""

from tfprune.layers.kept_channel_normalization import KeptChannelNormalization
from tfprune.layers.markov_channel_gate import MarkovChannelGate

__all__ = ["KeptChannelNormalization", "MarkovChannelGate"]
