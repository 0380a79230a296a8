"""Keras's own attention layers: `MultiHeadAttention` and `GroupedQueryAttention`, each read as one layer.

Why whole layers, not their insides: an attention layer's projections are `EinsumDense` layers whose outputs have
two channel axes (heads × head width) joined by `einsum`s over activations. The channel graph follows one channel
axis per tensor (the last), so opening the layer would need the graph core to carry elements over several axes.
The layer's structure is fixed by its config instead, so one rule can say exactly which slices of its sub-layers'
weights belong to which head and head-width slot, and the rebuilt layer is the same Keras class with a smaller
config (`num_heads`, `key_dim`, `value_dim`) that saves and loads like any other.

Channel spaces a `MultiHeadAttention` at path `p` opens (each a group of its own unless the layer is shared):

* `p:heads` (`num_heads`): a head's query, key, value (and gate) slices and its rows of the output projection;
* `p:key_dim` (`key_dim`): the same query/key slot in every head;
* `p:value_dim` (`value_dim`): the same value slot in every head, with the output projection's rows it feeds;
* or, when `key_dim == value_dim` (the default, `value_dim=None`), one `p:head_dim` for both: slot j of the query,
  key and value go together. The slim layer then keeps `key_dim == value_dim`, which fused attention kernels need
  (`jax.nn.dot_product_attention`, which Keras calls on JAX, refuses a value head width unlike the key's).
* `p` (the output width): like a `Dense`'s units (the rebuilt layer gets `output_shape` when its output width no
  longer equals its query's).

The query, key and value inputs are read on sides "query", "key" and "value" (the same tensor for self-attention).

A `GroupedQueryAttention` at `p` opens `p:kv_heads` (`num_key_value_heads`: a key/value head with every query head
that reads it), `p:query_heads` (`num_query_heads`, in equal blocks per key/value head, so that every group keeps
the same number) and `p:head_dim`. A query head stays when it and its key/value head do. Its output width is
always its query's, so the output carries the query's channels.

Keras scales attention scores by 1/sqrt(key_dim) of the config. A slim layer with fewer key_dim slots would scale by
more, so `slim_weights` multiplies the query projection (kernel and bias) by sqrt(new key_dim / old key_dim): the
rebuilt layer computes exactly what the masked one does (mask keeps the shapes, hence the original scale).

For the data-driven criteria, `read_inputs` gives the tensors the layer's projections read, and `inner_taps` names
the tensors inside the layer whose slices are its channels: the input of the output projection, (batch,
*positions, heads, head width), where zeroing a head's slice (or a value slot's) is exactly what removing it does,
and the query projection's output, where zeroing slot j of every head removes that slot's share of every attention
score, as removing a key_dim slot does.
"""

import inspect
import typing

import numpy as np
from keras import ops

from tfprune.backends import variable_view
from tfprune.graph.keras_nodes import weight_keys
from tfprune.graph.rules.base import LayerRule, NotUnderstood


def _kept(mask):
    return np.flatnonzero(mask)


def _arguments(ctx, layer):
    """Element ids of the query, key and value inputs of one call, and whether the scores are returned."""
    args = ctx.arguments(layer)
    if "query" not in args or "value" not in args:
        raise NotUnderstood("called without query and value tensors")
    sides = {}
    for name in ("query", "value", "key"):
        given = args.get(name, args["value"] if name == "key" else None)
        if given is None:
            given = args["value"]
        if not isinstance(given, tuple) or given[0] is None:
            raise NotUnderstood(f"its {name} has no known channel axis")
        sides[name] = given[0]
    return sides, bool(args.get("return_attention_scores", False))


def _record_inputs(ctx, layer, gate, bias):
    """Record the query, key and value sides of an attention call, after checking the layer holds just its
    projections' kernels (and biases, and a gate); returns `(sides, returns_scores)`."""
    sides, returns_scores = _arguments(ctx, layer)
    expected = {"query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"} | (
        {"gate/kernel"} if gate else set())
    if bias:
        expected |= {k.replace("kernel", "bias") for k in expected}
    _check_weights(layer, expected)
    for name, elems in sides.items():
        ctx.record(name, elems)
    return sides, returns_scores


def _check_weights(layer, expected):
    keys = set(weight_keys(layer).values())
    if keys != expected:
        extra = sorted(keys - expected) or sorted(expected - keys)
        raise NotUnderstood(f"holds weights other than its projections' kernels and biases ({extra[:3]}; a "
                            "quantized or LoRA-enabled projection is not pruned)")


def _scores_output(ctx, heads):
    reason = f"'{ctx.path}' returns its attention scores, whose head axis would change"
    ctx.fix(heads, reason)
    return ctx.new_space(ctx.output_shapes[1][-1], name=f"{ctx.path}:scores",
                         fixed_reason=f"attention scores of '{ctx.path}' (their last axis is the key sequence)")


class InnerTap(typing.NamedTuple):
    """A tensor inside a layer whose slices belong to the channels of one recorded side (see `inner_taps`).

    Attributes:
        sublayer: the sub-layer that reads the tensor (`where="input"`: its first argument) or makes it
            (`where="output"`: what it returns).
        where: "input" or "output".
        side: the recorded side whose element ids index the channel axis of `view(tensor)`.
        view: `tensor -> tensor` with that side's channels on the last axis (None: they already are).
    """

    sublayer: object
    where: str
    side: str
    view: object = None


def read_inputs(layer, args, kwargs):
    """`{side: tensor}`: the query, key and value of one call of an attention layer (the key defaults to the value),
    on the sides the rules record them on; for the data-driven criteria, which measure what its projections read."""
    bound = inspect.signature(layer.call).bind_partial(*args, **kwargs).arguments
    key = bound.get("key")
    return {"query": bound["query"], "key": bound["value"] if key is None else key, "value": bound["value"]}


def heads_last(t):
    """(..., heads, slots) -> (..., slots, heads)."""
    return ops.moveaxis(t, -2, -1)


def key_value_heads_last(groups):
    """(batch, ..., query heads, slots) -> (batch, positions, repeats, slots, key/value heads): query head i reads
    key/value head i // repeats (Keras repeats each key/value head over consecutive query heads)."""

    def view(t):
        shape = ops.shape(t)
        t = ops.reshape(t, (shape[0], -1, groups, t.shape[-2] // groups, t.shape[-1]))
        return ops.moveaxis(t, 2, -1)

    return view


def _projection_index(q, k, v, o, query_heads, kv_heads, dk, dv, gate, bias):
    """`weight_index` of an attention layer's projections from the kept positions of its inputs (`q`, `k`, `v`), its
    output `o`, its query and key/value heads and its key and value slots (the same heads for MHA)."""
    index = {"query/kernel": np.ix_(q, query_heads, dk), "key/kernel": np.ix_(k, kv_heads, dk),
             "value/kernel": np.ix_(v, kv_heads, dv), "attention_output/kernel": np.ix_(query_heads, dv, o)}
    if gate:
        index["gate/kernel"] = np.ix_(q, query_heads, dv)
    if bias:
        index.update({"query/bias": np.ix_(query_heads, dk), "key/bias": np.ix_(kv_heads, dk),
                      "value/bias": np.ix_(kv_heads, dv), "attention_output/bias": (o,)})
        if gate:
            index["gate/bias"] = np.ix_(query_heads, dv)
    return index


def _fold_scale(layer, values, old, new):
    """Multiply the query projection by sqrt(new/old): the slim layer's 1/sqrt(new) scale then equals 1/sqrt(old)."""
    if new == old:
        return values
    factor = np.sqrt(new / old)
    values = dict(values)
    for key in ("query/kernel", "query/bias"):
        if key in values:
            values[key] = (values[key] * factor).astype(values[key].dtype)
    return values


class MultiHeadAttention(LayerRule):
    """`keras.layers.MultiHeadAttention`: heads, key_dim and value_dim slots, and the output width.

    Example:

    >>> import keras, tfprune
    >>> inputs = keras.Input((6, 16))
    >>> x = keras.layers.MultiHeadAttention(4, 8, name="mha")(inputs, inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x)))
    >>> [(g.name, g.width) for g in tfprune.ChannelGraph(model).prunable_groups]
    [('mha:heads', 4), ('mha:head_dim', 8), ('mha', 16)]
    >>> mha = tfprune.prune(model, 0.5).get_layer("mha")
    >>> mha.num_heads, mha.key_dim, mha.value_dim
    (2, 4, 4)
    """

    filter_sides = ("heads", "key_dim", "value_dim", "out")
    read_inputs = staticmethod(read_inputs)

    def propagate(self, ctx, layer, inputs):
        output_shape = layer._output_shape
        if output_shape is not None and len(output_shape) != 1:
            raise NotUnderstood(f"output_shape={tuple(output_shape)} has more than one axis")
        sides, returns_scores = _record_inputs(ctx, layer, gate=layer._use_gate, bias=layer.use_bias)
        heads = ctx.new_space(layer.num_heads, name=f"{ctx.path}:heads")
        if layer.key_dim == layer.value_dim:  # one head width, kept equal for the fused kernels (see above)
            key_dim = value_dim = ctx.new_space(layer.key_dim, name=f"{ctx.path}:head_dim")
        else:
            key_dim = ctx.new_space(layer.key_dim, name=f"{ctx.path}:key_dim")
            value_dim = ctx.new_space(layer.value_dim, name=f"{ctx.path}:value_dim")
        out = ctx.new_space(ctx.output_shapes[0][-1])
        for side, elems in (("heads", heads), ("key_dim", key_dim), ("value_dim", value_dim), ("out", out)):
            ctx.record(side, elems)
        return [out, _scores_output(ctx, heads)] if returns_scores else [out]

    def weight_index(self, layer, keep):
        q, k, v = _kept(keep["query"]), _kept(keep["key"]), _kept(keep["value"])
        h, dk, dv, o = _kept(keep["heads"]), _kept(keep["key_dim"]), _kept(keep["value_dim"]), _kept(keep["out"])
        return _projection_index(q, k, v, o, h, h, dk, dv, gate=layer._use_gate, bias=layer.use_bias)

    def updated_config(self, layer, config, keep):
        config = {**config, "num_heads": int(keep["heads"].sum()), "key_dim": int(keep["key_dim"].sum()),
                  "value_dim": int(keep["value_dim"].sum())}
        width = int(keep["out"].sum())
        if config.get("output_shape") is not None or width != int(keep["query"].sum()):
            config["output_shape"] = (width,)
        return config

    def slim_weights(self, layer, keep, values):
        return _fold_scale(layer, values, layer.key_dim, int(keep["key_dim"].sum()))

    def filter_weights(self, layer):
        q, k, v = (variable_view(d.kernel) for d in (layer.query_dense, layer.key_dense, layer.value_dense))
        out = variable_view(layer.output_dense.kernel)  # (heads, value_dim, output width)
        gate = [variable_view(layer._gate_dense.kernel)] if layer._use_gate else []
        return ([("heads", np.moveaxis(w, 1, -1)) for w in (q, k, v, *gate)] + [("heads", np.moveaxis(out, 0, -1))]
                + [("key_dim", q), ("key_dim", k)]
                + [("value_dim", w) for w in (v, *gate)] + [("value_dim", np.moveaxis(out, 1, -1))]
                + [("out", out)])

    def inner_taps(self, layer):
        """The output projection's input measures the heads and value slots, the query's output the key slots."""
        return (InnerTap(layer.output_dense, "input", "heads", heads_last),
                InnerTap(layer.output_dense, "input", "value_dim"),
                InnerTap(layer.query_dense, "output", "key_dim"))


class GroupedQueryAttention(LayerRule):
    """`keras.layers.GroupedQueryAttention`: key/value heads, query heads (equally many per key/value head) and
    head_dim slots."""

    filter_sides = ("kv_heads", "query_heads", "head_dim", "out")
    read_inputs = staticmethod(read_inputs)

    def propagate(self, ctx, layer, inputs):
        sides, returns_scores = _record_inputs(ctx, layer, gate=layer.use_gate, bias=layer.use_bias)
        kv_heads = ctx.new_space(layer.num_key_value_heads, name=f"{ctx.path}:kv_heads")
        query_heads = ctx.new_space(layer.num_query_heads, name=f"{ctx.path}:query_heads")
        ctx.require_equal_blocks(query_heads, layer.num_key_value_heads)
        head_dim = ctx.new_space(layer.head_dim, name=f"{ctx.path}:head_dim")
        out = sides["query"]  # the output projection always has the query's width
        for side, elems in (("kv_heads", kv_heads), ("query_heads", query_heads), ("head_dim", head_dim),
                            ("out", out)):
            ctx.record(side, elems)
        if returns_scores:
            ctx.fix(kv_heads, f"'{ctx.path}' returns its attention scores, whose head axis would change")
            return [out, _scores_output(ctx, query_heads)]
        return [out]

    @staticmethod
    def _query_heads(layer, keep):
        """Keep flags of the query heads: kept, and reading a kept key/value head."""
        return keep["query_heads"] & np.repeat(keep["kv_heads"], layer.num_repeats)

    def weight_index(self, layer, keep):
        q, k, v, o = _kept(keep["query"]), _kept(keep["key"]), _kept(keep["value"]), _kept(keep["out"])
        h, g, d = _kept(self._query_heads(layer, keep)), _kept(keep["kv_heads"]), _kept(keep["head_dim"])
        return _projection_index(q, k, v, o, h, g, d, d, gate=layer.use_gate, bias=layer.use_bias)

    def updated_config(self, layer, config, keep):
        return {**config, "num_query_heads": int(self._query_heads(layer, keep).sum()),
                "num_key_value_heads": int(keep["kv_heads"].sum()), "head_dim": int(keep["head_dim"].sum())}

    def slim_weights(self, layer, keep, values):
        return _fold_scale(layer, values, layer.head_dim, int(keep["head_dim"].sum()))

    def filter_weights(self, layer):
        q, k, v = (variable_view(d.kernel) for d in (layer._query_dense, layer._key_dense, layer._value_dense))
        out = variable_view(layer._output_dense.kernel)  # (query heads, head_dim, output width)
        gate = [variable_view(layer._gate_dense.kernel)] if layer.use_gate else []
        groups, repeats = layer.num_key_value_heads, layer.num_repeats

        def by_group(w, axis):  # query-head axis split into (kv head, repeat), the kv head axis moved last
            shape = w.shape[:axis] + (groups, repeats) + w.shape[axis + 1:]
            return np.moveaxis(w.reshape(shape), axis, -1)

        return ([("kv_heads", np.moveaxis(w, 1, -1)) for w in (k, v)]
                + [("kv_heads", by_group(w, 1)) for w in (q, *gate)] + [("kv_heads", by_group(out, 0))]
                + [("query_heads", np.moveaxis(w, 1, -1)) for w in (q, *gate)]
                + [("query_heads", np.moveaxis(out, 0, -1))]
                + [("head_dim", w) for w in (q, k, v, *gate)] + [("head_dim", np.moveaxis(out, 1, -1))]
                + [("out", out)])

    def inner_taps(self, layer):
        """The output projection's input measures the query heads, key/value heads and head_dim slots, the query's
        output the head_dim slots' share of the attention scores."""
        return (InnerTap(layer._output_dense, "input", "query_heads", heads_last),
                InnerTap(layer._output_dense, "input", "kv_heads", key_value_heads_last(layer.num_key_value_heads)),
                InnerTap(layer._output_dense, "input", "head_dim"),
                InnerTap(layer._query_dense, "output", "head_dim"))
