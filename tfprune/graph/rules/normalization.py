"""Layers with one weight entry per channel: BatchNormalization, LayerNormalization, GroupNormalization, PReLU,
Normalization and per-channel Rescaling."""

import numpy as np

from tfprune.graph.rules.base import LayerRule, NotUnderstood, last_axis_index, single_input


def _is_last_axis(axis, rank):
    axes = [a % rank for a in np.atleast_1d(axis).tolist()]
    return axes == [rank - 1]


class PerChannelWeights(LayerRule):
    """Channels pass through; every weight has the channels on its last axis."""

    spans_channels = False

    def propagate(self, ctx, layer, inputs):
        elems = single_input(inputs)
        if hasattr(layer, "axis") and not _is_last_axis(layer.axis, len(ctx.input_shapes[0])):
            raise NotUnderstood(f"axis={layer.axis} is not the channel axis alone")
        ctx.record("in", elems)
        if self.spans_channels:
            ctx.mark_spanning(elems)
        self.constrain(ctx, layer, elems)
        return [elems]

    def constrain(self, ctx, layer, elems):
        pass

    def weight_index(self, layer, keep):
        return {w.name: last_axis_index(len(w.shape), keep["in"]) for w in layer.weights if len(w.shape)}


class BatchNormalization(PerChannelWeights):
    """gamma, beta, moving mean and variance per channel. Exact: removing channels leaves the others unchanged."""


class PReLU(PerChannelWeights):
    """alpha has the channels on its last axis (spatial axes may be shared)."""


class LayerNormalization(PerChannelWeights):
    """Statistics over the channels: pruning is allowed but changes the kept channels' values (not exact)."""

    spans_channels = True


class GroupNormalization(PerChannelWeights):
    """Statistics over each group of channels: every group keeps the same number of channels."""

    spans_channels = True

    def constrain(self, ctx, layer, elems):
        ctx.require_equal_blocks(elems, layer.groups)


class Normalization(PerChannelWeights):
    """Preprocessing `Normalization` over the channel axis: mean and variance per channel, in weights or config."""

    def updated_config(self, layer, config, keep):
        config = dict(config)
        for key in ("mean", "variance"):
            if config.get(key) is not None:
                values = np.asarray(config[key])
                config[key] = values[last_axis_index(values.ndim, keep["in"])].tolist() if values.ndim else config[key]
        return config


class Rescaling(PerChannelWeights):
    """`Rescaling`: scalar scale and offset pass through; per-channel lists are sliced."""

    def updated_config(self, layer, config, keep):
        config = dict(config)
        for key in ("scale", "offset"):
            values = np.asarray(config[key])
            if values.ndim:
                if values.shape[-1] != len(keep["in"]):
                    raise NotUnderstood(f"{key} of shape {values.shape} is not per channel")
                config[key] = values[last_axis_index(values.ndim, keep["in"])].tolist()
        return config


class LayerScale(PerChannelWeights):
    """ConvNeXt's `LayerScale` (keras.applications): one learned scale per channel."""

    def updated_config(self, layer, config, keep):
        return {**config, "projection_dim": int(keep["in"].sum())}
