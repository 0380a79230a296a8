"""Layers that leave every channel where it is: activations, dropout, pooling, padding, resizing, elementwise ops."""

import numbers

import numpy as np

from tfprune.graph.rules.base import LayerRule, NotUnderstood, require_channels_last, single_input

CHANNEL_SPANNING_ACTIVATIONS = ("softmax", "log_softmax")


def activation_name(activation):
    return getattr(activation, "__name__", str(activation))


class PassThrough(LayerRule):
    """Output channel c is input channel c. Layers that mix channels (softmax over channels) say so."""

    def propagate(self, ctx, layer, inputs):
        require_channels_last(layer)
        elems = single_input(inputs)
        shape = ctx.output_shapes[0] if len(ctx.output_shapes) == 1 else None
        if shape is None or shape[-1] != len(elems):
            raise NotUnderstood("changes the last axis")
        if self.spans_channels(layer, len(shape)):
            ctx.mark_spanning(elems)
        return [elems]

    def spans_channels(self, layer, rank):
        return False


class CheckedChannelwise(PassThrough):
    """A layer tfprune could not open but that was shown, by running it, to act on every channel alone and in the
    same way (a learnable scalar affine, a custom activation written with TensorFlow ops): channels pass through,
    and the layer is copied unchanged (it has no weight indexed by channels)."""


class ActivationLayer(PassThrough):
    """`Activation(...)`: softmax-like functions span the channels; all others act per channel."""

    def spans_channels(self, layer, rank):
        return activation_name(layer.activation) in CHANNEL_SPANNING_ACTIVATIONS

    def new_layer(self, layer, config):
        try:
            return super().new_layer(layer, config)
        except (TypeError, ValueError):  # a Python lambda as activation: copy it with the very same function
            return type(layer)(layer.activation, name=layer.name, dtype=layer.dtype_policy)


class AxisSpanningLayer(PassThrough):
    """Softmax or UnitNormalization: mixes channels when its axis is the channel axis, else per channel."""

    def spans_channels(self, layer, rank):
        axes = np.atleast_1d(layer.axis)
        return bool(np.any((axes == -1) | (axes == rank - 1)))


class ElementwiseOp(PassThrough):
    """A keras.ops operation applied elementwise to one tensor, with only scalar constants beside it."""

    def propagate(self, ctx, layer, inputs):
        for value in ctx.constant_arguments:
            if not isinstance(value, numbers.Number | bool | str | type(None)) and np.ndim(value) != 0:
                raise NotUnderstood("has a non-scalar constant operand")
        return super().propagate(ctx, layer, inputs)

    def spans_channels(self, layer, rank):
        if type(layer).__name__ in ("Softmax", "LogSoftmax"):
            return AxisSpanningLayer().spans_channels(layer, rank)
        return False


class PermuteLayer(PassThrough):
    """`Permute` keeps the channels when the last axis stays last."""

    def propagate(self, ctx, layer, inputs):
        if tuple(layer.dims)[-1] != len(layer.dims):
            raise NotUnderstood("moves the channel axis")
        return super().propagate(ctx, layer, inputs)


class SplitOp(LayerRule):
    """`keras.ops.split` into equal sections: on the channel axis each output takes its share of the channels, and
    every section keeps the same number; on another axis every output has all the channels."""

    def propagate(self, ctx, layer, inputs):
        elems = single_input(inputs)
        rank = len(ctx.input_shapes[0])
        if layer.axis % rank != rank - 1:
            return [elems] * len(ctx.output_shapes)
        if not isinstance(layer.indices_or_sections, int):
            raise NotUnderstood("splits the channels at explicit indices")
        ctx.require_equal_blocks(elems, layer.indices_or_sections)
        return np.split(elems, layer.indices_or_sections)


class ReductionOp(LayerRule):
    """`keras.ops.mean/max/min/sum` over axes other than the channel axis (global pooling written with ops): the
    channels pass through."""

    def propagate(self, ctx, layer, inputs):
        elems = single_input(inputs)
        rank = len(ctx.input_shapes[0])
        if layer.axis is None:
            raise NotUnderstood("reduces over every axis, the channels too")
        axes = [a % rank for a in np.atleast_1d(layer.axis).tolist()]
        if rank - 1 in axes:
            raise NotUnderstood("reduces over the channel axis")
        if ctx.output_shapes[0][-1] != len(elems):
            raise NotUnderstood("changes the last axis")
        return [elems]
