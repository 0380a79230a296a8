"""Layers that create new channels from all (or a group of) their input channels: convolutions and Dense.

Their output channels start a new channel space; their input channels are whatever feeds them.
"""

import numpy as np

from tfprune.backends import variable_view
from tfprune.graph.rules.base import LayerRule, NotUnderstood, require_channels_last, single_input
from tfprune.graph.rules.passthrough import CHANNEL_SPANNING_ACTIVATIONS, activation_name


def _mark_fused_softmax(ctx, layer, out):
    if activation_name(getattr(layer, "activation", None)) in CHANNEL_SPANNING_ACTIVATIONS:
        ctx.mark_spanning(out)


class Dense(LayerRule):
    """`Dense`: kernel (in, units) on the last axis."""

    width_attribute = "units"
    filter_sides = ("out",)

    def propagate(self, ctx, layer, inputs):
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise NotUnderstood("a quantized or LoRA-enabled Dense is not pruned (its scales and LoRA kernels are "
                                "not sliced)")
        elems = single_input(inputs)
        ctx.record("in", elems)
        out = ctx.new_space(getattr(layer, self.width_attribute))
        ctx.record("out", out)
        _mark_fused_softmax(ctx, layer, out)
        return [out]

    def weight_index(self, layer, keep):
        return {"kernel": np.ix_(np.flatnonzero(keep["in"]), np.flatnonzero(keep["out"])),
                "bias": (np.flatnonzero(keep["out"]),)}

    def updated_config(self, layer, config, keep):
        return {**config, self.width_attribute: int(keep["out"].sum())}

    def filter_weights(self, layer):
        return [("out", variable_view(layer.kernel))]


class Conv(Dense):
    """`Conv1D/2D/3D`, including grouped convolution (`groups > 1`): kernel (*k, in/groups, filters).

    With groups, each group of input channels feeds its own group of filters; pruning keeps the same number of
    channels in every group on both sides, so the slim layer has the same `groups`. When every group has one input
    channel (a depthwise convolution written as `Conv2D(groups=channels)`), each input channel and its filters are
    pruned together, like `DepthwiseConv2D`, and `groups` shrinks instead.
    """

    width_attribute = "filters"

    def propagate(self, ctx, layer, inputs):
        require_channels_last(layer)
        elems = single_input(inputs)
        groups = getattr(layer, "groups", 1)
        ctx.record("in", elems)
        if groups > 1 and groups == len(elems):  # a depthwise convolution written as a grouped one
            out = np.repeat(elems, layer.filters // groups)
            ctx.record("out", out)
            return [out]
        out = ctx.new_space(layer.filters)
        ctx.record("out", out)
        if groups > 1:
            ctx.require_equal_blocks(elems, groups)
            ctx.require_equal_blocks(out, groups)
        _mark_fused_softmax(ctx, layer, out)
        return [out]

    def weight_index(self, layer, keep):
        rank = len(layer.kernel.shape)
        kept_out = np.flatnonzero(keep["out"])
        groups = getattr(layer, "groups", 1)
        if groups == len(keep["in"]) > 1:  # depthwise as grouped: whole groups go
            kernel = (slice(None),) * (rank - 1) + (kept_out,)
        elif groups == 1:
            kernel = (slice(None),) * (rank - 2) + np.ix_(np.flatnonzero(keep["in"]), kept_out)
        else:
            in_per_group = len(keep["in"]) // groups
            out_per_group = len(keep["out"]) // groups
            local_in = keep["in"].reshape(groups, in_per_group)
            # For each kept filter, the kept input channels of its own group (same count in every group).
            kept_local = np.stack([np.flatnonzero(row) for row in local_in])
            kernel = (slice(None),) * (rank - 2) + (kept_local[kept_out // out_per_group].T, kept_out[None, :])
        return {"kernel": kernel, "bias": (kept_out,)}


    def updated_config(self, layer, config, keep):
        config = super().updated_config(layer, config, keep)
        if config.get("groups", 1) == len(keep["in"]) > 1:
            config["groups"] = int(keep["in"].sum())
        return config


class ConvTranspose(Dense):
    """`Conv1DTranspose/2D/3D`: kernel (*k, filters, in)."""

    width_attribute = "filters"

    def propagate(self, ctx, layer, inputs):
        require_channels_last(layer)
        return super().propagate(ctx, layer, inputs)

    def weight_index(self, layer, keep):
        rank = len(layer.kernel.shape)
        kernel = (slice(None),) * (rank - 2) + np.ix_(np.flatnonzero(keep["out"]), np.flatnonzero(keep["in"]))
        return {"kernel": kernel, "bias": (np.flatnonzero(keep["out"]),)}

    def filter_weights(self, layer):
        return [("out", np.swapaxes(variable_view(layer.kernel), -1, -2))]


class DepthwiseConv(LayerRule):
    """`DepthwiseConv1D/2D`: output channel c*m + j comes from input channel c alone, so they are pruned together."""

    filter_sides = ("out",)

    def propagate(self, ctx, layer, inputs):
        require_channels_last(layer)
        elems = single_input(inputs)
        out = np.repeat(elems, layer.depth_multiplier)
        ctx.record("in", elems)
        ctx.record("out", out)
        return [out]

    def weight_index(self, layer, keep):
        rank = len(layer.kernel.shape)
        return {"kernel": (slice(None),) * (rank - 2) + (np.flatnonzero(keep["in"]),),
                "bias": (np.flatnonzero(keep["out"]),)}

    def filter_weights(self, layer):
        kernel = variable_view(layer.kernel)
        return [("out", kernel.reshape(kernel.shape[:-2] + (-1,)))]


class SeparableConv(Dense):
    """`SeparableConv1D/2D`: a depthwise kernel (*k, in, m) then a pointwise kernel (1.., in*m, filters)."""

    width_attribute = "filters"

    def propagate(self, ctx, layer, inputs):
        require_channels_last(layer)
        if layer.depth_multiplier < 1:
            raise NotUnderstood("depth_multiplier < 1")
        return super().propagate(ctx, layer, inputs)

    def weight_index(self, layer, keep):
        rank = len(layer.depthwise_kernel.shape)
        kept_in = np.flatnonzero(keep["in"])
        kept_mid = np.flatnonzero(np.repeat(keep["in"], layer.depth_multiplier))
        kept_out = np.flatnonzero(keep["out"])
        return {"depthwise_kernel": (slice(None),) * (rank - 2) + (kept_in,),
                "pointwise_kernel": (slice(None),) * (rank - 2) + np.ix_(kept_mid, kept_out),
                "bias": (kept_out,)}

    def filter_weights(self, layer):
        return [("out", variable_view(layer.pointwise_kernel))]
