"""The channel dependency graph of a Keras model and the per-layer rules it is built from."""

from tfprune.graph.channel_graph import ChannelGraph, Group, Member
from tfprune.graph.tracing import trace

__all__ = ["ChannelGraph", "Group", "Member", "trace"]
