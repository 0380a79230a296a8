"""Flatten and Reshape: channels keep their place when the last axis is kept; otherwise each output feature is
traced back to the channel it came from (Flatten→Dense: one channel becomes H·W input rows of the Dense)."""

import math

import numpy as np

from tfprune.graph.rules.base import LayerRule, NotUnderstood, single_input


def trace_flat_positions(elems, in_shape, out_shape):
    """Elements of the output's last axis when a (…, C) tensor is reshaped in row-major order, or None."""
    if out_shape[-1] == len(elems) and in_shape[-1] == len(elems):
        return elems
    if any(d is None for d in in_shape[1:]) or any(d is None for d in out_shape[1:]):
        return None
    flat = np.tile(elems, math.prod(in_shape[1:-1]))
    rows = flat.reshape(-1, out_shape[-1])
    return rows[0] if (rows == rows[0]).all() else None


class Reshape(LayerRule):
    """`Reshape`, `Flatten` and `keras.ops.reshape`."""

    def propagate(self, ctx, layer, inputs):
        elems = single_input(inputs)
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise NotUnderstood("data_format='channels_first'")
        out = trace_flat_positions(elems, ctx.input_shapes[0], ctx.output_shapes[0])
        if out is None:
            raise NotUnderstood("mixes the channel axis with others in a way that cannot be traced")
        ctx.record("out", out)
        return [out]

    def updated_config(self, layer, config, keep):
        for key in ("target_shape", "newshape"):  # Reshape layer, keras.ops.reshape
            if key in config and config[key][-1] != -1:
                config = {**config, key: (*config[key][:-1], int(keep["out"].sum()))}
        return config


def _keeps_last_axis(key, rank):
    """Whether indexing a tensor of `rank` axes with `key` (ints, slices, one Ellipsis) takes every channel of its
    last axis and leaves it last."""
    key = list(key) if isinstance(key, tuple | list) else [key]
    if not all(k is Ellipsis or isinstance(k, int | slice) and not isinstance(k, bool) for k in key):
        return False
    if key.count(Ellipsis) > 1:
        return False
    if Ellipsis in key:
        after = key[key.index(Ellipsis) + 1:]
        return not after or after[-1] == slice(None)
    return len(key) < rank or key[-1] == slice(None)


class GetItemOp(LayerRule):
    """`x[...]` (`keras.ops` GetItem) with ints and slices that take the whole last axis, as a class-token pooling
    `x[:, 0, :]` does: the channels pass through."""

    def propagate(self, ctx, layer, inputs):
        if len(inputs) != 1 or inputs[0] is None:
            raise NotUnderstood("is indexed by tensors")
        key = tuple(ctx.constant_arguments)  # the key's ints, slices and Ellipsis, in order
        if not _keeps_last_axis(key, len(ctx.input_shapes[0])):
            raise NotUnderstood("indexes the channel axis")
        if ctx.output_shapes[0][-1] != len(inputs[0]):
            raise NotUnderstood("changes the last axis")
        return [inputs[0]]
