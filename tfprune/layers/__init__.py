"""Keras layers that tfprune inserts into models during training or search."""

from tfprune.layers.markov_channel_gate import MarkovChannelGate

__all__ = ["MarkovChannelGate"]
