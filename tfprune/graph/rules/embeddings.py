"""Embedding tables: token embeddings (`keras.layers.Embedding`, `ReversibleEmbedding` with its tied output
projection), KerasHub's learned `PositionEmbedding` and ViT's patch-and-position embedding.

An embedding's width is the hidden (residual) width of the transformer it feeds: a token table starts that channel
space, and a position table follows it. The KerasHub classes are matched by their exact class
(`KERAS_HUB_RULES`, looked up by `rules.rule_for`), so keras-hub is never imported here.
"""

import numpy as np

from tfprune.backends import variable_view
from tfprune.graph.rules.base import LayerRule, NotUnderstood, require_channels_last, single_input


def _kept(keep):
    return np.flatnonzero(keep)


class Embedding(LayerRule):
    """`Embedding` and `ReversibleEmbedding`: the table (vocabulary, width) starts a channel space of `output_dim`
    channels. A reverse call (`reverse=True`, logits = hidden · tableᵀ, or · `reverse_embeddings` when untied)
    reads the same channels, so a tied output projection is pruned with the input embedding; its vocabulary logits
    are a channel space of their own, never pruned."""

    filter_sides = ("out",)

    def propagate(self, ctx, layer, inputs):
        if getattr(layer, "quantization_mode", None):
            raise NotUnderstood(f"it is quantized ({layer.quantization_mode})")
        arguments = ctx.arguments(layer)
        if arguments.get("reverse", False):
            elems = arguments["inputs"][0]
            if elems is None:
                raise NotUnderstood("its reverse call reads a tensor without a known channel axis")
            ctx.record("out", elems)  # the same channels as the table's width (tied to the forward call's)
            return [ctx.new_space(layer.input_dim, name=f"{ctx.path}:logits",
                                  fixed_reason=f"vocabulary logits of '{ctx.path}'")]
        out = ctx.new_space(layer.output_dim)
        ctx.record("out", out)
        return [out]

    def weight_index(self, layer, keep):
        kept = _kept(keep["out"])
        return {"embeddings": (slice(None), kept), "reverse_embeddings": (kept, slice(None))}

    def updated_config(self, layer, config, keep):
        return {**config, "output_dim": int(keep["out"].sum())}

    def filter_weights(self, layer):
        return [("out", variable_view(layer.embeddings))]


class PositionEmbedding(LayerRule):
    """KerasHub's learned `PositionEmbedding`: a table (sequence length, width) sliced to its input's length; the
    width is its input's channels, which pass through."""

    def propagate(self, ctx, layer, inputs):
        elems = inputs[0] if inputs else None
        if elems is None or ctx.output_shapes[0][-1] != len(elems):
            raise NotUnderstood("expects one input tensor whose channels it takes")
        ctx.record("in", elems)
        return [elems]

    def weight_index(self, layer, keep):
        return {"embeddings": (slice(None), _kept(keep["in"]))}


class ViTPatchingAndEmbedding(LayerRule):
    """KerasHub's `ViTPatchingAndEmbedding`: a patch Conv2D (image channels in, `hidden_dim` out), a class token
    and a position table of `hidden_dim` channels, added together: one new channel space."""

    filter_sides = ("out",)
    macs_bilinear = True  # its MACs (the patch convolution) are proportional to (input channels × hidden width)

    def propagate(self, ctx, layer, inputs):
        require_channels_last(layer)
        elems = single_input(inputs)
        ctx.record("in", elems)
        out = ctx.new_space(layer.hidden_dim)
        ctx.record("out", out)
        return [out]

    def weight_index(self, layer, keep):
        kept_in, kept_out = _kept(keep["in"]), _kept(keep["out"])
        return {"class_token": (Ellipsis, kept_out),
                "patch_embedding/kernel": (Ellipsis, *np.ix_(kept_in, kept_out)),
                "patch_embedding/bias": (kept_out,),
                "position_embedding/embeddings": (slice(None), kept_out)}

    def updated_config(self, layer, config, keep):
        return {**config, "hidden_dim": int(keep["out"].sum()), "num_channels": int(keep["in"].sum())}

    def filter_weights(self, layer):
        return [("out", variable_view(layer.patch_embedding.kernel))]


_EMBEDDING = Embedding()
KERAS_HUB_RULES = {
    "keras_hub.src.layers.modeling.reversible_embedding.ReversibleEmbedding": _EMBEDDING,
    "keras_hub.src.layers.modeling.position_embedding.PositionEmbedding": PositionEmbedding(),
    "keras_hub.src.models.vit.vit_layers.ViTPatchingAndEmbedding": ViTPatchingAndEmbedding(),
}

