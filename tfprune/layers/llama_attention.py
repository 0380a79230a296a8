"""LlamaAttentionWithHeadDim: KerasHub's Llama attention with its head width given, for slim Llama models.

KerasHub's `LlamaAttention` derives its head width from its input: `hidden_dim // num_query_heads`. A Llama whose
attention lost query heads must keep the width of every head (the rotary embedding and the trained projections
fix it), so the slim attention cannot be a `LlamaAttention` of fewer heads: with 32 channels and 4 → 2 query
heads, it would make heads of 16 instead of 8. This subclass takes `head_dim` as a config argument and computes
exactly what `LlamaAttention` computes (its `call` is inherited unchanged: rotary embedding, repeated key/value
heads, causal mask, fused or einsum attention, the cache), with projections of `num_query_heads` and
`num_key_value_heads` heads of `head_dim` slots and the attention scale 1/sqrt(head_dim).

`tfprune.rebuild` makes one for every pruned (or copied) Llama attention; it also gives the layer a `get_config`
that `from_config` accepts, which `LlamaAttention`'s own does not (keras-hub 0.32 reads an attribute it never
sets). It is registered with Keras as "tfprune>LlamaAttentionWithHeadDim": importing it (`from tfprune.layers
import LlamaAttentionWithHeadDim`) before `keras.saving.load_model` lets a slim Llama load from a `.keras` file.
It needs keras-hub, which `import tfprune` does not load.
"""

import math

import keras
from keras_hub.src.models.llama.llama_attention import LlamaAttention
from keras_hub.src.models.llama.llama_rotary_embedding import LlamaRotaryEmbedding

_ROPE = ("rope_max_wavelength", "rope_position_scaling_factor", "rope_frequency_adjustment_factor",
         "rope_low_freq_factor", "rope_high_freq_factor", "rope_pretraining_sequence_length")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return value


def check_heads(num_query_heads, num_key_value_heads, head_dim):
    """Refuse head counts and a head width that a rotary grouped-query attention cannot have (ValueError)."""
    _positive_int("num_query_heads", num_query_heads)
    _positive_int("num_key_value_heads", num_key_value_heads)
    _positive_int("head_dim", head_dim)
    if num_query_heads % num_key_value_heads:
        raise ValueError(f"num_query_heads ({num_query_heads}) must be a multiple of num_key_value_heads "
                         f"({num_key_value_heads}): every key/value head is read by as many query heads.")
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (the rotary embedding rotates pairs of slots); got {head_dim}.")


def build_projections(layer, inputs_shape, biased=False):
    """What KerasHub's `LlamaAttention.build` (and `QwenAttention.build`) make but the rotary embedding, with
    `layer.head_dim` in place of hidden_dim // num_query_heads: the query, key, value and output projections (the
    first three with biases when `biased`, as Qwen's have), the softmax, the dropout, the einsum equations and the
    scale 1/sqrt(head_dim). The sub-layers are made in KerasHub's order and with its names, so that weights copy
    over one to one."""
    hidden_dim, head_dim = inputs_shape[-1], layer.head_dim
    layer._inv_norm_factor = 1.0 / math.sqrt(head_dim)
    common = {"kernel_initializer": layer.kernel_initializer, "dtype": layer.dtype_policy}

    def projection(name, equation, heads, bias_axes):
        extra = {"bias_axes": bias_axes, "bias_initializer": layer.bias_initializer} if biased else {}
        dense = keras.layers.EinsumDense(equation=equation, output_shape=(None, heads, head_dim), name=name,
                                         **common, **extra)
        dense.build(inputs_shape)
        return dense

    layer._query_dense = projection("query", "bqm,muh->bquh", layer.num_query_heads, "uh")
    layer._key_dense = projection("key", "bkm,mvh->bkvh", layer.num_key_value_heads, "vh")
    layer._value_dense = projection("value", "bkm,mvh->bkvh", layer.num_key_value_heads, "vh")
    layer._softmax = keras.layers.Softmax(axis=-1, dtype="float32", name="attention_softmax")
    layer._dropout_layer = keras.layers.Dropout(rate=layer.dropout, dtype=layer.dtype_policy)
    layer._output_dense = keras.layers.EinsumDense(equation="bquh,uhm->bqm", output_shape=(None, hidden_dim),
                                                   name="attention_output", **common)
    layer._output_dense.build((None, None, layer.num_query_heads, head_dim))
    layer._dot_product_equation = "bquh,bkuh->buqk"
    layer._combine_equation = "buqk,bkuh->bquh"


class GivenHeadDim:
    """Mixin before a KerasHub grouped-query attention class: its constructor takes `head_dim` too (checked with
    `check_heads`), which the class's `build` reads through `build_projections`."""

    def __init__(self, num_query_heads, num_key_value_heads, head_dim, **kwargs):
        check_heads(num_query_heads, num_key_value_heads, head_dim)
        super().__init__(num_query_heads=num_query_heads, num_key_value_heads=num_key_value_heads, **kwargs)
        self.head_dim = head_dim


@keras.saving.register_keras_serializable(package="tfprune")
class LlamaAttentionWithHeadDim(GivenHeadDim, LlamaAttention):
    """KerasHub's `LlamaAttention` with an explicit head width (see the module docstring).

    Args:
        num_query_heads: query heads; a multiple of `num_key_value_heads` (query head i reads key/value head
            i // (num_query_heads // num_key_value_heads), as in `LlamaAttention`).
        num_key_value_heads: key/value heads.
        head_dim: slots per head (even: the rotary embedding rotates pairs of slots).
        **kwargs: the other arguments of `LlamaAttention` (rotary embedding settings, `kernel_initializer`,
            `dropout`) and of `keras.layers.Layer`.

    Example:

    >>> import numpy as np
    >>> from tfprune.layers import LlamaAttentionWithHeadDim
    >>> layer = LlamaAttentionWithHeadDim(num_query_heads=2, num_key_value_heads=1, head_dim=8)
    >>> tuple(layer(np.ones((1, 5, 32), "float32")).shape)  # 32 channels, 2 heads of 8 slots (not 16)
    (1, 5, 32)
    >>> tuple(layer._query_dense.kernel.shape)
    (32, 2, 8)
    >>> LlamaAttentionWithHeadDim.from_config(layer.get_config()).head_dim
    8
    """

    def build(self, inputs_shape):
        build_projections(self, inputs_shape)
        self.rotary_embedding_layer = LlamaRotaryEmbedding(
            max_wavelength=self.rope_max_wavelength,
            position_scaling_factor=self.rope_position_scaling_factor,
            frequency_adjustment_factor=self.rope_frequency_adjustment_factor,
            low_freq_factor=self.rope_low_freq_factor,
            high_freq_factor=self.rope_high_freq_factor,
            pretraining_sequence_length=self.rope_pretraining_sequence_length,
            dtype=self.dtype_policy,
        )
        self.built = True

    def get_config(self):
        return {**keras.layers.Layer.get_config(self), **attention_arguments(self), "head_dim": self.head_dim}


def attention_arguments(layer):
    """The constructor arguments of a KerasHub `LlamaAttention` (or of this subclass) but the head width, read
    from its attributes (its own `get_config` fails in keras-hub 0.32)."""
    return {"num_query_heads": layer.num_query_heads, "num_key_value_heads": layer.num_key_value_heads,
            **{name: getattr(layer, name) for name in _ROPE},
            "kernel_initializer": keras.initializers.serialize(layer.kernel_initializer), "dropout": layer.dropout}
