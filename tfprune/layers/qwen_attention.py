"""QwenAttentionWithHeadDim: KerasHub's Qwen attention with its head width given, for slim Qwen models.

KerasHub's `QwenAttention` (of `QwenBackbone`) derives its head width from its input, `hidden_dim //
num_query_heads`, as Llama's does (`tfprune.layers.llama_attention`): a Qwen whose attention lost query heads must
keep the width of every head, so its slim attention is this subclass, which takes `head_dim` as a config argument
and computes exactly what `QwenAttention` computes (its `call` is inherited unchanged), with projections of
`num_query_heads` and `num_key_value_heads` heads of `head_dim` slots (the query, key and value with their biases)
and the attention scale 1/sqrt(head_dim).

It is registered with Keras as "tfprune>QwenAttentionWithHeadDim": importing it (`from tfprune.layers import
QwenAttentionWithHeadDim`) before `keras.saving.load_model` lets a slim Qwen load from a `.keras` file. It needs
keras-hub, which `import tfprune` does not load.
"""

import keras
from keras_hub.src.layers.modeling.rotary_embedding import RotaryEmbedding
from keras_hub.src.models.qwen.qwen_attention import QwenAttention

from tfprune.layers.llama_attention import GivenHeadDim, build_projections


@keras.saving.register_keras_serializable(package="tfprune")
class QwenAttentionWithHeadDim(GivenHeadDim, QwenAttention):
    """KerasHub's `QwenAttention` with an explicit head width (see the module docstring).

    Args:
        num_query_heads: query heads; a multiple of `num_key_value_heads` (query head i reads key/value head
            i // (num_query_heads // num_key_value_heads), as in `QwenAttention`).
        num_key_value_heads: key/value heads.
        head_dim: slots per head (even: the rotary embedding rotates pairs of slots).
        **kwargs: the other arguments of `QwenAttention` (rotary embedding settings, initializers, `dropout`,
            sliding window) and of `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from tfprune.layers import QwenAttentionWithHeadDim
    >>> layer = QwenAttentionWithHeadDim(num_query_heads=2, num_key_value_heads=1, head_dim=8)
    >>> tuple(layer(np.ones((1, 5, 32), "float32")).shape)  # 32 channels, 2 heads of 8 slots (not 16)
    (1, 5, 32)
    >>> tuple(layer._query_dense.kernel.shape), tuple(layer._query_dense.bias.shape)
    ((32, 2, 8), (2, 8))
    >>> QwenAttentionWithHeadDim.from_config(layer.get_config()).head_dim
    8
    """

    def build(self, inputs_shape):
        build_projections(self, inputs_shape, biased=True)
        self.rotary_embedding_layer = RotaryEmbedding(
            max_wavelength=self.rope_max_wavelength, scaling_factor=self.rope_scaling_factor,
            dtype=self.dtype_policy)
        self.built = True

    def get_config(self):
        return {**super().get_config(), "head_dim": self.head_dim}
