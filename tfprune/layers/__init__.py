"""Keras layers that tfprune inserts into models during training or search, or builds into slim models."""

import importlib
import typing

from tfprune.layers.kept_channel_normalization import KeptChannelNormalization
from tfprune.layers.markov_channel_gate import MarkovChannelGate

# Layers built on keras-hub (an optional dependency) are imported on first use, so that `import tfprune.layers`
# does not load keras-hub.
_ON_KERAS_HUB = {"LlamaAttentionWithHeadDim": "tfprune.layers.llama_attention",
                 "QwenAttentionWithHeadDim": "tfprune.layers.qwen_attention"}

__all__ = ["KeptChannelNormalization", "LlamaAttentionWithHeadDim", "MarkovChannelGate", "QwenAttentionWithHeadDim"]

if typing.TYPE_CHECKING:  # for static readers (the API reference's griffe), which cannot run __getattr__
    from tfprune.layers.llama_attention import LlamaAttentionWithHeadDim as LlamaAttentionWithHeadDim
    from tfprune.layers.qwen_attention import QwenAttentionWithHeadDim as QwenAttentionWithHeadDim


def __getattr__(name):
    if name in _ON_KERAS_HUB:
        return getattr(importlib.import_module(_ON_KERAS_HUB[name]), name)
    raise AttributeError(f"module 'tfprune.layers' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
