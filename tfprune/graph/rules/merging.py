"""Layers that combine tensors: elementwise merges (Add, Multiply, ...) tie channel c of every input together;
Concatenate on the channel axis places its inputs' channels side by side."""

import numpy as np

from tfprune.graph.rules.base import LayerRule, NotUnderstood
from tfprune.graph.rules.passthrough import ElementwiseOp


def merge_elementwise(ctx, inputs):
    """Channel c of every full-width input is one channel; inputs of width 1 broadcast and tie nothing."""
    if any(elems is None for elems in inputs):
        raise NotUnderstood("an input has no known channel axis")
    width = ctx.output_shapes[0][-1]
    full = [elems for elems in inputs if len(elems) == width]
    if not full or any(len(elems) not in (1, width) for elems in inputs):
        raise NotUnderstood("inputs do not broadcast on the channel axis")
    for elems in full[1:]:
        ctx.union(full[0], elems)
    return [full[0]]


class ElementwiseMerge(LayerRule):
    """`Add`, `Subtract`, `Multiply`, `Average`, `Maximum`, `Minimum`, including squeeze-excite style broadcast,
    and InceptionResNetV2's `CustomScaleLayer` (x + scale·r, a scalar scale)."""

    def propagate(self, ctx, layer, inputs):
        return merge_elementwise(ctx, inputs)


class BinaryOp(ElementwiseOp):
    """A keras.ops arithmetic operation: between two tensors it merges, with a scalar it acts per element."""

    def propagate(self, ctx, layer, inputs):
        if len(inputs) >= 2:
            return merge_elementwise(ctx, inputs)
        return super().propagate(ctx, layer, inputs)


class Concatenate(LayerRule):
    """On the channel axis the output is the inputs' channels in order; on another axis channel c is shared."""

    def propagate(self, ctx, layer, inputs):
        if any(elems is None for elems in inputs):
            raise NotUnderstood("an input has no known channel axis")
        rank = len(ctx.output_shapes[0])
        if layer.axis % rank == rank - 1:
            return [np.concatenate(inputs)]
        return merge_elementwise(ctx, inputs)
