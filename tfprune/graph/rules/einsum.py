"""`EinsumDense` read from its equation.

An `EinsumDense` whose equation contracts the input's last axis with a 2-D kernel into a new last axis, every other
axis passing through in order (`ab,bc->ac`, `abc,cd->abd`, `...b,bc->...c`), is a `Dense`: it is pruned like one.
Any other equation (a projection to heads × head width, a contraction over another axis) makes more than one
channel axis, which the channel graph does not follow outside an attention layer: such a layer stays a boundary,
and says why.
"""

from tfprune.backends import variable_view
from tfprune.graph.rules.base import NotUnderstood, single_input
from tfprune.graph.rules.producers import Dense


def dense_axes(equation):
    """`(input axis, output axis)` letters of an `EinsumDense` equation that computes a Dense, or None.

    Args:
        equation: the layer's `equation`.

    Example:

    >>> dense_axes("abc,cd->abd"), dense_axes("...b,bc->...c"), dense_axes("abc,cde->abde")
    (('c', 'd'), ('b', 'c'), None)
    """
    left, arrow, output = equation.replace(" ", "").partition("->")
    inputs = left.split(",")
    if not arrow or len(inputs) != 2:
        return None
    data, kernel = inputs
    if data.startswith("...") != output.startswith("..."):
        return None
    data, output = data.removeprefix("..."), output.removeprefix("...")
    if "." in data + kernel + output or len(kernel) != 2 or not data or not output:
        return None
    c_in, c_out = kernel
    if (data[-1] != c_in or output[-1] != c_out or data[:-1] != output[:-1] or c_in in output or c_out in data
            or len(set(data + c_out)) != len(data) + 1):
        return None
    return c_in, c_out


class EinsumDense(Dense):
    """`EinsumDense` used as a Dense (see the module docstring); kernel (in, out), bias on the output axis."""

    def propagate(self, ctx, layer, inputs):
        axes = dense_axes(layer.equation)
        if axes is None:
            raise NotUnderstood(f"equation '{layer.equation}' is not a Dense over the last axis (input last axis "
                                "contracted with a 2-D kernel into a new last axis); only that form is pruned")
        if layer.bias_axes not in (None, axes[1]):
            raise NotUnderstood(f"bias_axes='{layer.bias_axes}' is not the output axis '{axes[1]}'")
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise NotUnderstood("a quantized or LoRA-enabled EinsumDense is not pruned")
        elems = single_input(inputs)
        ctx.record("in", elems)
        out = ctx.new_space(layer.kernel.shape[-1])
        ctx.record("out", out)
        return [out]

    def updated_config(self, layer, config, keep):
        output_shape = config["output_shape"]
        width = int(keep["out"].sum())
        output_shape = width if isinstance(output_shape, int) else (*tuple(output_shape)[:-1], width)
        return {**config, "output_shape": output_shape}

    def filter_weights(self, layer):
        return [("out", variable_view(layer.kernel))]

    def weight_index(self, layer, keep):
        index = super().weight_index(layer, keep)
        return index if layer.bias is not None else {"kernel": index["kernel"]}
