"""count_macs() and count_params(): the compute and the size of a Keras model, in total and per layer.

MACs (multiply-accumulate operations) are those of the linear maps, the usual convention of papers and of op
counters such as Torch-Pruning's: convolutions (plain, grouped, transposed, depthwise, separable), `Dense`,
`EinsumDense`, and in attention the projections and the two products of activations, QKᵀ and AV. Everything else
(biases, normalisation, activations, softmax, scaling, masking, pooling, merges, resizing, embedding lookups)
counts 0 MACs. They are counted for one input example (batch size 1) from the symbolic shapes of every call of
every layer.

Custom layers are counted inside: the model is traced first (`tfprune.trace`), and a layer that stays closed but
has weights (its own, used directly in `call`, or its sub-layers') is counted through a trace of its call, where
`keras.ops` convolutions, `matmul` (and `@`), `einsum`, `tensordot`, `dot`, `inner`, `outer`, `vdot` and
`dot_product_attention` count their MACs; a closed
`MultiHeadAttention` or `GroupQueryAttention` is counted by formula (`tfprune.measurement.attention_macs`). A layer
with weights whose call cannot be traced has unknown MACs: an `UnknownMACsError` naming it, or with
`unknown_macs="lower_bound"` a warning and 0 for that layer.
"""

import dataclasses
import math
import os
import sys
import warnings

import keras
from keras import tree
from keras.src.applications.convnext import LayerScale as ConvNeXtLayerScale
from keras.src.ops import nn as nn_ops
from keras.src.ops import numpy as numpy_ops

from tfprune.errors import UnknownMACsError
from tfprune.graph.keras_nodes import is_graph_model, model_inputs, run_nodes
from tfprune.graph.rules import rule_for
from tfprune.graph.rules.keras_hub_attention import DecoderAttention
from tfprune.graph.tracing import ConstantOutputError, first_line, open_model, trace_call
from tfprune.measurement.attention_macs import (
    UnknownCostError,
    UnknownSizeError,
    attention_layer_macs,
    call_arguments,
    dot_macs,
    dot_product_attention_macs,
    einsum_dense_macs,
    einsum_macs,
    einsum_output_shape,
    flat_product_macs,
    inner_macs,
    matmul_macs,
    tensordot_macs,
)

L = keras.layers

_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSED_CONVS = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE_CONVS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE_CONVS = (L.SeparableConv1D, L.SeparableConv2D)
# Keras layers with weights and no MACs by the convention above.
_ZERO_MACS = (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization, L.UnitNormalization, L.PReLU,
              L.Normalization, L.Embedding, ConvNeXtLayerScale, L.RMSNormalization)
UNKNOWN_MACS = ("raise", "lower_bound")


@dataclasses.dataclass
class LayerCount:
    """What one layer of a model holds and computes.

    Attributes:
        path: the layer's name, prefixed by the names of the sub-models it sits in ("backbone/conv1").
        kind: the layer's class name.
        params: the number of its weights (trainable and non-trainable) not already counted for an earlier layer.
        macs: multiply-accumulate operations for one input example, summed over all its calls.
        channels: the channel count of its first call's (first) output, or None for a scalar output.
        calls: how many times the layer is called in the model.
        argument_shapes: for an attention layer (`MultiHeadAttention`, `GroupQueryAttention`, KerasHub's decoder
            attention read by a `tfprune.graph.rules.keras_hub_attention.DecoderAttention`), `{parameter name:
            shape}` of the tensor arguments of each call, with the sizes it was counted for (a sub-model built for
            any sequence length and called on a fixed one has them fixed here, not in its own graph); empty for
            other layers and when MACs are not counted.
    """

    path: str
    kind: str
    params: int = 0
    macs: int = 0
    channels: int | None = None
    calls: int = 0
    argument_shapes: list = dataclasses.field(default_factory=list)


def layer_counts(model, unknown_macs="raise") -> dict:
    """Parameters, MACs and output channels of every layer of a model, in execution order.

    Nested Functional and Sequential sub-models are entered: their layers appear as "submodel/layer" (the
    sub-model itself has no entry), and so are custom layers and subclassed models, through their trace
    (`tfprune.trace`): an opened custom layer's layers appear as "block/layer". A shared layer has one entry whose
    MACs sum all of its calls.

    Args:
        model: a built `keras.Model` (Functional, Sequential, subclassed, or a trace).
        unknown_macs: "raise" (an `UnknownMACsError` for a layer with weights whose MACs cannot be known) or
            "lower_bound" (count such a layer as 0 MACs, with a warning naming it).

    Returns:
        `{path: LayerCount}`, ordered as the layers first run.

    Raises:
        UnsupportedModelError: for a subclassed model that cannot be traced or a Sequential model without an input
            shape.
        UnknownMACsError: for a layer with weights whose MACs cannot be known (with `unknown_macs="raise"`).
        ValueError: when a convolution or Dense layer's input or output size is not fixed.

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> counts = tfprune.measurement.counting.layer_counts(model)
    >>> counts["conv"].macs, counts["conv"].params, counts["conv"].channels
    (3888, 108, 4)
    """
    opened = open_model(model)
    counter = _Counter(macs=True, unknown_macs=unknown_macs, channelwise=opened.channelwise)
    counter.walk(opened.model)
    if counter.unknown:
        layers = "; ".join(f"'{path}' ({why})" for path, why in counter.unknown.items())
        warnings.warn(f"MACs of {len(counter.unknown)} layer(s) with weights are unknown and counted as 0, so the "
                      f"total is a lower bound: {layers}.", stacklevel=_caller_stacklevel())
    return counter.counts


def _caller_stacklevel():
    """The `stacklevel` of `warnings.warn` (called by this module's caller) that points at the first frame outside
    tfprune, so that a warning names the user's line, not an internal one."""
    package = os.path.dirname(os.path.abspath(sys.modules[__name__.split(".")[0]].__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def layer_macs(model, unknown_macs="raise") -> dict:
    """MACs of every layer of a graph model for one input example, keyed by layer path ("submodel/layer").

    Layers that compute no MACs (normalisation, activations, pooling, ...) have no entry.

    Args:
        model: a built `keras.Model` with a fixed input size.
        unknown_macs: as in `layer_counts`.

    Returns:
        `{path: MACs}` in execution order; a layer called several times sums all its calls.

    Example:

    >>> import keras, tfprune
    >>> model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5, name="fc")])
    >>> tfprune.measurement.counting.layer_macs(model)
    {'fc': 50}
    """
    return {path: c.macs for path, c in layer_counts(model, unknown_macs).items() if c.macs}


def count_macs(model, unknown_macs="raise") -> int:
    """Multiply-accumulate operations of one forward pass of `model` on one input example (batch size 1).

    Counts the multiply-accumulates of the linear maps, the standard convention: for an output of spatial size S,
    Conv (1D/2D/3D, grouped): S · prod(kernel_size) · C_in/groups · filters;
    DepthwiseConv (1D/2D): S · prod(kernel_size) · C_in · depth_multiplier;
    SeparableConv (1D/2D): the depthwise part plus S · C_in · depth_multiplier · filters;
    Conv Transpose (1D/2D/3D): input spatial size · prod(kernel_size) · C_in · filters (each input position
    scatters one kernel);
    Dense: every position of the output but the last axis · input features · units;
    EinsumDense, and `keras.ops.einsum` of two operands: the product of the sizes of all distinct indices of its
    equation but the batch's; `keras.ops.matmul` (and `@`), `tensordot`, `dot`, `inner`: the output size but the
    batch · the contracted size; `outer`: one per output element; `vdot`: one per element of an operand (an
    activation's batch axis counts 1 in all of them). An elementwise product followed by a sum (`ops.sum(a * b)`)
    counts 0, although it computes a contraction: write it as one of the products above.
    Attention counts its projections and both products of activations. For `MultiHeadAttention` with query
    length T_q, key/value length T_k, H heads of key size Dk and value size Dv (GroupQueryAttention: H query
    heads, H_kv key/value heads in the key and value projections):
    query T_q·E_q·H·Dk + key T_k·E_k·H·Dk + value T_k·E_v·H·Dv + output T_q·H·Dv·E_out + QKᵀ H·T_q·T_k·Dk +
    AV H·T_q·T_k·Dv; `keras.ops.dot_product_attention` on query (B, T, N, H), key (B, S, K, H) and value
    (B, S, K, Hv) counts N·T·S·H + N·T·S·Hv (its QKᵀ and AV; K < N is grouped-query attention), and the layers
    around it that project to heads (`EinsumDense`) count as above. Causal attention (`use_causal_mask`,
    `is_causal`) counts as full attention (the masked half is computed, then discarded). A tied embedding used as
    the output projection (KerasHub's `ReversibleEmbedding` with `reverse=True`) counts as its matmul.
    Everything else counts 0: biases, normalisation, activations, softmax, scaling, masking, pooling, merges,
    embedding lookups, and weights added or concatenated (a position embedding, a class token).
    Nested Functional/Sequential sub-models are entered, custom layers and subclassed models are counted inside
    through their trace (`tfprune.trace`), and a layer called twice counts twice. A sequence model (a KerasHub
    backbone) is counted for a fixed length: call it on `keras.Input((length,), dtype="int32")` inputs.

    Args:
        model: a built `keras.Model` whose convolutions have a fixed input size (build it on e.g.
            `keras.Input((224, 224, 3))`, not `(None, None, 3)`).
        unknown_macs: "raise" (default): a layer with weights whose MACs cannot be known (its call cannot be
            traced, or it holds an einsum of three operands) raises `UnknownMACsError` naming it. "lower_bound":
            such layers count 0, with one warning naming all of them, and the result is a lower bound. (Pruning
            never needs MACs: an unknown layer only stays closed there.)

    Returns:
        The MAC count as an int (FLOPs are about twice this).

    Raises:
        UnsupportedModelError: for a subclassed model that cannot be traced or a Sequential model without an input
            shape.
        UnknownMACsError: with `unknown_macs="raise"`, for a layer with weights whose MACs cannot be known.
        ValueError: when a layer that computes MACs has an unknown input or output size.

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((32, 32, 3))
    >>> x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))
    >>> tfprune.count_macs(model)  # 32*32*9*3*8 + 8*10
    221264
    >>> tokens = keras.Input((10, 16))
    >>> attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    >>> tfprune.count_macs(keras.Model(tokens, attention(tokens, tokens)))  # 4 * 10*16*16 + 2 * 2*10*10*8
    13440
    """
    return sum(c.macs for c in layer_counts(model, unknown_macs).values())


def layer_params(model) -> dict:
    """Number of weights of every layer of a graph model, keyed by layer path ("submodel/layer").

    A weight shared by several layers is counted for the first of them only; layers without weights have no entry.

    Args:
        model: a built Functional or Sequential `keras.Model`.

    Returns:
        `{path: number of weights}` in execution order.

    Example:

    >>> import keras, tfprune
    >>> model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5, name="fc")])
    >>> tfprune.measurement.counting.layer_params(model)
    {'fc': 55}
    """
    counter = _Counter(macs=False)
    counter.walk(open_model(model).model)
    return {path: c.params for path, c in counter.counts.items() if c.params}


def count_params(model) -> int:
    """Total number of weights of `model`, trainable and non-trainable, each shared weight once.

    The same number as `model.count_params()`; given here so that size and compute come from one place. Unlike
    `count_macs`, it needs no graph: subclassed models are counted too.

    Args:
        model: a built `keras.Model` of any kind (or a built layer).

    Returns:
        The number of scalars in all of the model's weights.

    Example:

    >>> import keras, tfprune
    >>> model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5)])
    >>> tfprune.count_params(model)
    55
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Expected a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built, so it has no weights yet. Build it first, e.g. by "
                         "starting it with keras.Input(shape=...) or calling model.build(input_shape).")
    unique = {id(w): w for w in model.weights}
    return int(sum(math.prod(w.shape) for w in unique.values()))


# ---- the walk ----------------------------------------------------------------------------------------------


class _Counter:
    """Walks a graph model call by call, filling `counts`; with `macs=False` only parameters are counted."""

    def __init__(self, macs, unknown_macs="raise", channelwise=()):
        if unknown_macs not in UNKNOWN_MACS:
            raise ValueError(f"unknown_macs must be one of {UNKNOWN_MACS}; got {unknown_macs!r}.")
        self.macs = macs
        self.unknown_macs = unknown_macs
        self.channelwise = channelwise  # closed layers shown to act on each channel alone: 0 MACs
        self.counts = {}
        self.seen_weights = set()
        self.unknown = {}  # path -> why, for layers with weights whose MACs are unknown (counted as 0)

    def walk(self, model, prefix="", input_shapes=None):
        """Count the layers of `model`; return the shapes of its outputs (None when not counting MACs).

        `input_shapes` are the shapes `model` is called with, which may be more specific than those of its own
        Inputs (a backbone built on `(None, None, 3)` called on a fixed-size image).
        """
        inputs = model_inputs(model)
        inputs = [_refined(t, s) if self.macs else t
                  for t, s in zip(inputs, input_shapes or [t.shape for t in inputs], strict=True)]

        def call(node, tensors):
            in_shapes = [tuple(tensors[id(t)].shape) for t in node.arguments.keras_tensors]
            path = prefix + node.operation.name
            if is_graph_model(node.operation):
                out_shapes = self.walk(node.operation, path + "/", in_shapes)
                return ([_refined(t, s) for t, s in zip(node.outputs, out_shapes, strict=True)]
                        if self.macs else list(node.outputs))
            outputs = _outputs(node, tensors) if self.macs else list(node.outputs)
            self.count_call(node, path, in_shapes, outputs)
            return outputs

        outputs = run_nodes(model, inputs, call)
        return [tuple(t.shape) for t in outputs] if self.macs else None

    def count_call(self, node, path, in_shapes, outputs):
        op = node.operation
        count = self.counts.get(path)
        if count is None:
            params = 0
            for w in getattr(op, "weights", ()):
                if id(w) not in self.seen_weights:
                    self.seen_weights.add(id(w))
                    params += math.prod(w.shape)
            channels = _channels(op, outputs[0]) if outputs else None
            count = self.counts[path] = LayerCount(path, type(op).__name__, int(params), channels=channels)
        count.calls += 1
        if self.macs:
            count.macs += self.call_macs(op, node, path, in_shapes, [tuple(t.shape) for t in outputs])
            if isinstance(op, L.MultiHeadAttention | L.GroupQueryAttention) or isinstance(rule_for(op),
                                                                                          DecoderAttention):
                count.argument_shapes.append({name: tuple(value.shape) for name, value
                                              in _call_arguments(op, node, in_shapes).items()
                                              if isinstance(value, keras.KerasTensor)})

    def call_macs(self, op, node, path, in_shapes, out_shapes):
        """MACs of one call: by formula, else through a trace of the call for a layer with weights."""
        try:
            macs = _macs(op, path, in_shapes, out_shapes)
            if macs is None and isinstance(op, L.Layer):
                macs = _attention_macs(op, node, in_shapes)
            if macs is None and not isinstance(op, L.Layer):
                macs = _op_macs(op, node, in_shapes, out_shapes)
        except UnknownSizeError as e:
            raise ValueError(f"Cannot count the MACs of layer '{path}' ({type(op).__name__}): {e}. "
                             f"{_FIXED_SIZE}") from e
        except UnknownCostError as e:
            return self.unknown_layer(op, path, str(e), e)
        if macs is not None:
            return macs
        if op.weights and not _computes_no_macs(op) and path not in self.channelwise:
            return self.traced_macs(op, node, path, in_shapes)
        return 0

    def unknown_layer(self, op, path, why, error):
        """0 MACs for a layer whose MACs cannot be known, remembered for the warning; or an `UnknownMACsError`."""
        if self.unknown_macs == "raise":
            raise UnknownMACsError(
                f"Cannot count the MACs of layer '{path}' ({type(op).__name__}): {why}. Pass "
                "unknown_macs='lower_bound' to count it as 0 MACs (the total is then a lower bound).") from error
        self.unknown[path] = f"{type(op).__name__}: {why}"
        return 0

    def traced_macs(self, op, node, path, in_shapes):
        """MACs of one call of a layer with weights that has no formula, counted through a trace of its call.

        The call is traced on a batch of one (the size MACs are counted for), so that a call which needs a batch
        size, such as `ops.tile(self.class_token, (ops.shape(x)[0], 1, 1))`, can be traced. A call whose outputs
        are computed from its weights and its inputs' shapes alone (a position embedding sliced to the sequence
        length) runs eagerly on the weights, the same for every example: it counts 0."""
        try:
            raw = trace_call(op, node, shapes=[(1, *shape[1:]) for shape in in_shapes], dense=True)
        except ConstantOutputError:
            return 0
        except Exception as e:  # noqa: BLE001 - any failure of the layer's call makes its MACs unknown
            return self.unknown_layer(op, path, f"it has weights and its call could not be traced ({first_line(e)})", e)
        inner = _Counter(macs=True, unknown_macs=self.unknown_macs)
        inner.unknown = self.unknown
        inner.walk(raw, prefix=path + "/", input_shapes=in_shapes)
        return sum(c.macs for c in inner.counts.values())


def _computes_no_macs(layer):
    """Whether a layer with weights is one of the Keras layers that compute no MACs (a subclass with a call of its
    own, such as KerasHub's ReversibleEmbedding, which can be an output projection, is counted through its trace)."""
    return any(isinstance(layer, cls) and type(layer).call is cls.call for cls in _ZERO_MACS)


def _refined(tensor, shape):
    """`tensor`, or a stand-in with the dimensions it leaves open (None) filled in from `shape`."""
    own = tuple(tensor.shape)
    if len(own) != len(shape):
        return tensor
    merged = tuple(s if o is None else o for o, s in zip(own, shape, strict=True))
    return tensor if merged == own else keras.KerasTensor(merged, dtype=tensor.dtype, sparse=tensor.sparse)


def _outputs(node, tensors):
    """The output tensors of one call, recomputed symbolically when its inputs are better known than in the graph."""
    op = node.operation
    if isinstance(op, L.EinsumDense) and len(node.arguments.keras_tensors) == 1:
        # Its declared output shape leaves open the axes its configuration does not fix (a sequence length).
        x = tensors[id(node.arguments.keras_tensors[0])]
        shape = einsum_output_shape(op.equation, [tuple(x.shape), tuple(op.kernel.shape)], [True, False])
        return [_refined(node.outputs[0], shape)]
    if isinstance(op, nn_ops.DotProductAttention):
        # Keras declares the query's shape; the output has the value's head size.
        arguments = call_arguments(op, *node.arguments.fill_in(tensors))
        query, value = tuple(arguments["query"].shape), tuple(arguments["value"].shape)
        return [keras.KerasTensor((*query[:-1], value[-1]), dtype=node.outputs[0].dtype)]
    if all(tensors[id(t)] is t for t in node.arguments.keras_tensors):
        return list(node.outputs)
    args, kwargs = node.arguments.fill_in(tensors)
    try:
        spec = tree.flatten(node.operation.compute_output_spec(*args, **kwargs))
    except Exception:
        # The layer cannot recompute its shape for these inputs; its graph shapes stay valid, only less specific.
        # If a layer that needs a fixed size then meets an unknown one, _macs says which.
        return list(node.outputs)
    if len(spec) != len(node.outputs):
        return list(node.outputs)
    return [_refined(t, tuple(s.shape)) for t, s in zip(node.outputs, spec, strict=True)]


def _channel_axis(op):
    return 1 if getattr(op, "data_format", "channels_last") == "channels_first" else -1


def _channels(op, output):
    shape = tuple(output.shape)
    if not shape:
        return None
    channels = shape[_channel_axis(op)] if len(shape) > 2 else shape[-1]
    return None if channels is None else int(channels)


# ---- MACs per layer type -----------------------------------------------------------------------------------


def _macs(op, path, in_shapes, out_shapes):
    """MACs of one call of `op` (a layer or a keras.ops operation) with these input and output shapes."""
    if isinstance(op, _SEPARABLE_CONVS):
        spatial, c_in, _ = _conv_sizes(op, path, in_shapes[0], out_shapes[0])
        mid = c_in * op.depth_multiplier
        return spatial * (math.prod(op.kernel_size) * mid + mid * op.filters)
    if isinstance(op, _DEPTHWISE_CONVS):
        spatial, c_in, _ = _conv_sizes(op, path, in_shapes[0], out_shapes[0])
        return spatial * math.prod(op.kernel_size) * c_in * op.depth_multiplier
    if isinstance(op, _TRANSPOSED_CONVS):
        _, c_in, in_spatial = _conv_sizes(op, path, in_shapes[0], out_shapes[0])
        return in_spatial * math.prod(op.kernel_size) * c_in * op.filters
    if isinstance(op, _CONVS):
        spatial, c_in, _ = _conv_sizes(op, path, in_shapes[0], out_shapes[0])
        return spatial * math.prod(op.kernel_size) * (c_in // op.groups) * op.filters
    if isinstance(op, L.Dense):
        positions = _known(out_shapes[0][1:-1], op, path, "output", out_shapes[0])
        c_in = _known(in_shapes[0][-1:], op, path, "input", in_shapes[0])
        return positions * c_in * op.units
    if isinstance(op, L.EinsumDense):
        return einsum_dense_macs(op, in_shapes[0])
    return None  # no formula: weightless (0) or counted through a trace


_CACHED_ATTENTION_CALL = "keras_hub.src.layers.modeling.cached_multi_head_attention.CachedMultiHeadAttention.call"


def _attention_macs(op, node, in_shapes):
    """MACs of a closed `MultiHeadAttention` or `GroupQueryAttention` by formula, or None for any other layer.

    The formula holds for the Keras classes and for subclasses that compute the same (KerasHub's
    `CachedMultiHeadAttention` called without a cache); any other subclass is counted through its trace."""
    if not isinstance(op, L.MultiHeadAttention | L.GroupQueryAttention):
        return None
    base = L.GroupQueryAttention if isinstance(op, L.GroupQueryAttention) else L.MultiHeadAttention
    arguments = _call_arguments(op, node, in_shapes)
    call = type(op).call
    same_call = call is base.call or (f"{call.__module__}.{call.__qualname__}" == _CACHED_ATTENTION_CALL
                                      and arguments.get("cache") is None)
    if not same_call or type(op)._compute_attention is not base._compute_attention:
        return None
    return attention_layer_macs(op, {name: tuple(arguments[name].shape) for name in ("query", "value", "key")
                                     if arguments.get(name) is not None})


def _call_arguments(op, node, in_shapes):
    """`{argument name: value}` of one call, its tensors replaced by stand-ins with the shapes it is counted for."""
    stand_ins = {id(t): keras.KerasTensor(shape, dtype=t.dtype)
                 for t, shape in zip(node.arguments.keras_tensors, in_shapes, strict=True)}
    args, kwargs = node.arguments.fill_in(stand_ins)
    return call_arguments(op, args, kwargs)


_CONV_OPS = (nn_ops.Conv, nn_ops.DepthwiseConv, nn_ops.ConvTranspose)
_PRODUCT_OPS = (numpy_ops.Tensordot, numpy_ops.Dot, numpy_ops.Inner, numpy_ops.Outer, numpy_ops.Vdot)


def _op_macs(op, node, in_shapes, out_shapes):
    """MACs of one keras.ops convolution, matmul (and `@`), einsum, tensor product (tensordot, dot, inner, outer,
    vdot) or dot-product attention; 0 for other ops.

    The operands may be activations (QKᵀ, AV) or weights and constants (a projection)."""
    if not isinstance(op, (*_CONV_OPS, *_PRODUCT_OPS, numpy_ops.Matmul, numpy_ops.Einsum,
                           nn_ops.DotProductAttention)):
        return 0
    arguments = _call_arguments(op, node, in_shapes)
    shapes = {name: _shape(value) for name, value in arguments.items()}
    out = out_shapes[0]
    if isinstance(op, nn_ops.DotProductAttention):
        return dot_product_attention_macs(shapes["query"], shapes["key"], shapes["value"])
    if isinstance(op, _PRODUCT_OPS):
        pair = (shapes["x1"], shapes["x2"])
        batched = [isinstance(arguments[x], keras.KerasTensor) for x in ("x1", "x2")]
        if isinstance(op, numpy_ops.Tensordot):
            return tensordot_macs(*pair, op.axes, batched)
        if isinstance(op, numpy_ops.Dot):
            return dot_macs(*pair, batched)
        if isinstance(op, numpy_ops.Inner):
            return inner_macs(*pair, batched)
        return flat_product_macs(*pair, batched, outer=isinstance(op, numpy_ops.Outer))
    if isinstance(op, numpy_ops.Einsum):
        operands = arguments["operands"]
        return einsum_macs(op.subscripts, [_shape(x) for x in operands],
                           [isinstance(x, keras.KerasTensor) for x in operands])
    if isinstance(op, numpy_ops.Matmul):
        return matmul_macs(out, shapes["x1"])
    kernel = shapes["kernel"]
    if isinstance(op, nn_ops.ConvTranspose):
        return _product(shapes["inputs"][1:-1]) * _product(kernel)
    return _product(out[1:-1]) * _product(kernel)


def _shape(value):
    """The shape of an operand: an activation, a weight or a constant (a Python number is a scalar)."""
    return tuple(getattr(value, "shape", ()))


def _product(dims):
    return int(math.prod(1 if d is None else d for d in dims))


def _conv_sizes(op, path, in_shape, out_shape):
    """(output spatial size, input channels, input spatial size) of one convolution call."""
    if _channel_axis(op) == 1:
        in_spatial, c_in, out_spatial = in_shape[2:], in_shape[1], out_shape[2:]
    else:
        in_spatial, c_in, out_spatial = in_shape[1:-1], in_shape[-1], out_shape[1:-1]
    return (_known(out_spatial, op, path, "output", out_shape),
            _known((c_in,), op, path, "input", in_shape),
            _known(in_spatial, op, path, "input", in_shape))


_FIXED_SIZE = ("MACs are counted for a fixed input size: rebuild the model on an Input with every dimension given, "
               "e.g. keras.Input((224, 224, 3)) instead of (None, None, 3) (for keras.applications, pass "
               "input_shape=...; for a model with a sequence input, call it on keras.Input((128,), ...)).")


def _known(dims, op, path, side, shape):
    """The product of `dims`, or a ValueError naming the layer when one of them is unknown."""
    if any(d is None for d in dims):
        raise ValueError(f"Cannot count the MACs of layer '{path}' ({type(op).__name__}): its {side} shape {shape} "
                         f"has an unknown dimension besides the batch. {_FIXED_SIZE}")
    return int(math.prod(dims))
