"""KerasHub's Gemma attention (`CachedGemmaAttention`, and Gemma3's `CachedGemma3Attention`), read as one layer.

Its projections are `EinsumDense` layers to heads × head width ("btd,ndh->btnh" for the query, "bsd,kdh->bskh"
for the key and value, "btnh,nhd->btd" out), joined by a rotary embedding and `einsum`s over activations: the
structure of Llama's and Mistral's attention, so its rule is a `DecoderAttention`
(`tfprune.graph.rules.keras_hub_attention`) told where the projections are (`query_dense`, ...), that the input is
`x`, that the query and key norms' scales are copied whole, and how the layer is copied. The layer has
`num_query_heads` query heads in `num_key_value_heads` equal blocks, one block per key/value head (query head i
reads key/value head i // (num_query_heads // num_key_value_heads)), each head `head_dim` slots wide.

Channel spaces of the layer at path `p` (its input `x` is the query, the key and the value: self-attention), as
for every `DecoderAttention`:

* `p:kv_heads`: a key/value head with every query head that reads it (its key and value slices, and those query
  heads' query slices and rows of the output projection);
* `p:query_heads`: one query head; every key/value block keeps the same number (`num_query_heads` must stay a
  multiple of `num_key_value_heads`);
* or, when `num_query_heads == num_key_value_heads` (multi-head attention), one `p:heads`: a head's query, key and
  value slices and its rows of the output projection;
* `p:head_dim`: never pruned. The rotary embedding rotates slot i of every head with slot i + head_dim/2, and
  Gemma3's query and key norms (`RMSNormalization` over the head width, one scale per slot shared by every head)
  normalise over all slots; the norms are therefore copied whole, as the head width is.
* the output has the input's width (the residual stream), so it carries the input's channels.

The slim layer is the same KerasHub class with fewer heads (`head_dim` is a config argument of these classes, so
the heads keep their width). Its attention scale is 1/sqrt(head_dim), unchanged, when `query_head_dim_normalize`
(as KerasHub's decoder blocks always build it); otherwise it is 1/sqrt(hidden_dim // num_query_heads), which fewer
heads would change, so `slim_weights` multiplies the queries by the ratio of the old scale to the new (the query
projection, or Gemma3's query norm scale `s` as 1 + s, which multiplies the normalised query): the slim layer
computes exactly what the masked one does. A layer called with a key/value cache or a rotary offset
(`cache_update_index`, generation) is not pruned.

The layer has no `get_config` of its own and is made with a dtype policy object, so Keras has no config for it;
`GemmaAttention.config` gives it from its constructor's arguments, read back from the attributes the class keeps
(`kernel_initializer` serialised from `_kernel_initializer`), with the policy serialised.
"""

import keras
import numpy as np

from tfprune.graph.layer_configs import base_config, constructor_arguments
from tfprune.graph.rules.base import Boundary, NotUnderstood
from tfprune.graph.rules.keras_hub_attention import DecoderAttention


class GemmaAttention(DecoderAttention):
    """`CachedGemmaAttention` and `CachedGemma3Attention`: key/value heads and query heads (see the module
    docstring); the head width is never pruned.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> from keras_hub.src.models.gemma.gemma_attention import CachedGemmaAttention
    >>> x = keras.Input((6, 32))
    >>> mask = keras.Input((6, 6), dtype="int32")
    >>> attention = CachedGemmaAttention(head_dim=8, num_query_heads=4, num_key_value_heads=2, name="attention")
    >>> y = keras.layers.Dense(2, name="head")(attention(x, attention_mask=mask))
    >>> graph = tfprune.ChannelGraph(keras.Model([x, mask], y))
    >>> [(g.name, g.width) for g in graph.prunable_groups]
    [('attention:kv_heads', 2), ('attention:query_heads', 4)]
    >>> slim = tfprune.rebuild(graph.source, tfprune.plan(graph.source, {"attention:kv_heads": 0.5}, graph=graph))
    >>> slim.get_layer("attention").num_query_heads, slim.get_layer("attention").num_key_value_heads
    (2, 1)
    """

    projection_attributes = ("query_dense", "key_dense", "value_dense", "output_dense")
    input_argument = "x"

    def whole_weights(self, layer):
        """Gemma3's query and key norm scales (one per head-width slot, shared by every head), when it has them."""
        if not getattr(layer, "use_query_key_norm", False):
            return ()
        return (*layer.query_norm.weights, *layer.key_norm.weights)

    def propagate(self, ctx, layer, inputs):
        outputs = super().propagate(ctx, layer, inputs)
        self.config(layer)  # refuses, here rather than in rebuild, a layer whose arguments cannot be read back
        return outputs

    def config(self, layer):
        """The constructor's arguments, read back from the layer (it has no config of its own; see the module
        docstring)."""
        return gemma_attention_config(layer)

    def closed(self, why):
        return ClosedGemmaAttention(why)

    def slim_weights(self, layer, keep, values):
        heads = int(self.query_keep(keep).sum())
        if layer.query_head_dim_normalize or heads == layer.num_query_heads:
            return values  # the scale is 1/sqrt(head_dim), or the heads do not change
        hidden = layer.hidden_dim
        factor = np.sqrt((hidden // heads) / (hidden // layer.num_query_heads))  # old scale / new scale
        values = dict(values)
        if getattr(layer, "use_query_key_norm", False):  # the norm undoes a scaled projection: scale its output
            scale = values["query_norm/scale"]
            values["query_norm/scale"] = (factor * (1 + scale.astype(np.float64)) - 1).astype(scale.dtype)
        else:
            kernel = values["query/kernel"]
            values["query/kernel"] = (kernel * factor).astype(kernel.dtype)
        return values


def gemma_attention_config(layer):
    """The config of a Gemma attention layer: its constructor's arguments read back from the attributes it keeps
    (`kernel_initializer` from `_kernel_initializer`, serialised), and the base layer's (`layer_configs`)."""
    arguments, missing = constructor_arguments(layer, attributes={"kernel_initializer": "_kernel_initializer"})
    if missing:
        raise NotUnderstood(f"its constructor argument '{missing[0].name}' is not kept by the layer, so a slim copy "
                            "cannot be made")
    return {**base_config(layer), **arguments,
            "kernel_initializer": keras.initializers.serialize(arguments["kernel_initializer"])}


class ClosedGemmaAttention(Boundary):
    """A Gemma attention layer that is not pruned (called with a cache or a rotary offset, or with quantized or
    LoRA projections): a boundary, copied from `gemma_attention_config` (it has no config of its own)."""

    def config(self, layer):
        try:
            return gemma_attention_config(layer)
        except NotUnderstood as e:
            raise ValueError(str(e)) from None


# The KerasHub classes, by module and name (exact classes: a subclass may compute something else), so that
# keras-hub is not imported to match them.
RULES = {"keras_hub.src.models.gemma.gemma_attention.CachedGemmaAttention": GemmaAttention(),
         "keras_hub.src.models.gemma3.gemma3_attention.CachedGemma3Attention": GemmaAttention()}
