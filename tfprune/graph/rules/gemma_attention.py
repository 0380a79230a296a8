"""KerasHub's Gemma attention (`CachedGemmaAttention`, and Gemma3's `CachedGemma3Attention`), read as one layer.

Its projections are `EinsumDense` layers to heads × head width ("btd,ndh->btnh" for the query, "bsd,kdh->bskh"
for the key and value, "btnh,nhd->btd" out), joined by a rotary embedding and `einsum`s over activations; like
Keras's own attention layers (`tfprune.graph.rules.attention`), the layer is read whole from its config:
`num_query_heads` query heads in `num_key_value_heads` equal blocks, one block per key/value head (query head i
reads key/value head i // (num_query_heads // num_key_value_heads)), each head `head_dim` slots wide.

Channel spaces of the layer at path `p` (its input `x` is the query, the key and the value: self-attention):

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
computes exactly what the masked one does. A layer called with a key/value cache (generation) is not pruned.

The layer has no `get_config` of its own and is made with a dtype policy object, so Keras has no config for it;
`GemmaAttention.config` gives it from its constructor's arguments, read back from the attributes the class keeps
(`kernel_initializer` serialised from `_kernel_initializer`), with the policy serialised.
"""

import inspect

import keras
import numpy as np

from tfprune.backends import variable_view
from tfprune.graph.keras_nodes import weight_keys
from tfprune.graph.rules.attention import InnerTap, _heads_last, _key_value_heads_last
from tfprune.graph.rules.base import Boundary, LayerRule, NotUnderstood

_EQUATIONS = {"query": "btd,ndh->btnh", "key": "bsd,kdh->bskh", "value": "bsd,kdh->bskh",
              "attention_output": "btnh,nhd->btd"}
HEAD_WIDTH_REASON = ("the head width of '{path}' is not pruned: its rotary embedding rotates slot i of every head "
                     "with slot i + head_dim/2 (and query/key norms, where there are some, normalise over all slots)")


def _kept(mask):
    return np.flatnonzero(mask)


def read_inputs(layer, args, kwargs):
    """`{side: tensor}` of one call: its input `x` is the query, the key and the value."""
    x = inspect.signature(layer.call).bind_partial(*args, **kwargs).arguments["x"]
    return {"query": x, "key": x, "value": x}


class GemmaAttention(LayerRule):
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

    filter_sides = ("kv_heads", "query_heads")
    read_inputs = staticmethod(read_inputs)

    def propagate(self, ctx, layer, inputs):
        args = ctx.arguments(layer)
        for name in ("cache", "cache_update_mask"):
            if args.get(name) is not None:
                raise NotUnderstood(f"called with a {name} (generation); only a call without one is pruned")
        if args.get("cache_update_index", 0) != 0:
            raise NotUnderstood("called with a cache_update_index other than 0")
        given = args.get("x")
        if not isinstance(given, tuple) or given[0] is None:
            raise NotUnderstood("its input has no known channel axis")
        _check_structure(layer)
        self.config(layer)  # refuses, here rather than in rebuild, a layer whose arguments cannot be read back
        x = given[0]
        if layer.num_query_heads == layer.num_key_value_heads:  # multi-head attention: a head is one group
            ctx.record("kv_heads", ctx.new_space(layer.num_key_value_heads, name=f"{ctx.path}:heads"))
        else:
            ctx.record("kv_heads", ctx.new_space(layer.num_key_value_heads, name=f"{ctx.path}:kv_heads"))
            query_heads = ctx.new_space(layer.num_query_heads, name=f"{ctx.path}:query_heads")
            ctx.require_equal_blocks(query_heads, layer.num_key_value_heads)
            ctx.record("query_heads", query_heads)
        head_dim = ctx.new_space(layer.head_dim, name=f"{ctx.path}:head_dim",
                                 fixed_reason=HEAD_WIDTH_REASON.format(path=ctx.path))
        for side, elems in (("query", x), ("key", x), ("value", x), ("out", x), ("head_dim", head_dim)):
            ctx.record(side, elems)
        return [x]  # the output projection writes the input's width: the residual stream's channels

    @staticmethod
    def _query_heads(layer, keep):
        """Keep flags of the query heads: kept, and reading a kept key/value head (the key/value heads' own when
        there are as many)."""
        if "query_heads" not in keep:
            return keep["kv_heads"]
        return keep["query_heads"] & np.repeat(keep["kv_heads"], layer.num_query_heads // layer.num_key_value_heads)

    def weight_index(self, layer, keep):
        x, out = _kept(keep["query"]), _kept(keep["out"])
        heads, groups = _kept(self._query_heads(layer, keep)), _kept(keep["kv_heads"])
        width = np.arange(layer.head_dim)
        return {"query/kernel": np.ix_(heads, x, width), "key/kernel": np.ix_(groups, x, width),
                "value/kernel": np.ix_(groups, x, width), "attention_output/kernel": np.ix_(heads, width, out)}

    def config(self, layer):
        """The constructor's arguments, read back from the layer (it has no config of its own; see the module
        docstring)."""
        return gemma_attention_config(layer)

    def closed(self, why):
        return ClosedGemmaAttention(why)

    def updated_config(self, layer, config, keep):
        return {**config, "num_query_heads": int(self._query_heads(layer, keep).sum()),
                "num_key_value_heads": int(keep["kv_heads"].sum())}

    def slim_weights(self, layer, keep, values):
        heads = int(self._query_heads(layer, keep).sum())
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

    def filter_weights(self, layer):
        q, k, v = (variable_view(d.kernel) for d in (layer.query_dense, layer.key_dense, layer.value_dense))
        out = variable_view(layer.output_dense.kernel)  # (query heads, head_dim, hidden)
        groups = layer.num_key_value_heads
        repeats = layer.num_query_heads // groups

        def by_group(w):  # query-head axis 0 split into (kv head, repeat), the kv head axis moved last
            return np.moveaxis(w.reshape((groups, repeats) + w.shape[1:]), 0, -1)

        if repeats == 1:
            return [("kv_heads", np.moveaxis(w, 0, -1)) for w in (q, k, v, out)]
        return ([("kv_heads", np.moveaxis(w, 0, -1)) for w in (k, v)]
                + [("kv_heads", by_group(w)) for w in (q, out)]
                + [("query_heads", np.moveaxis(w, 0, -1)) for w in (q, out)])

    def inner_taps(self, layer):
        """The output projection's input, (batch, positions, query heads, head width), measures the query heads and
        the key/value heads (through the query heads that read them)."""
        if layer.num_query_heads == layer.num_key_value_heads:
            return (InnerTap(layer.output_dense, "input", "kv_heads", _heads_last),)
        return (InnerTap(layer.output_dense, "input", "query_heads", _heads_last),
                InnerTap(layer.output_dense, "input", "kv_heads", _key_value_heads_last(layer.num_key_value_heads)))


def _check_structure(layer):
    """Refuse a layer that is not the KerasHub class as this rule reads it (projections by those equations, query and
    key norms only with `use_query_key_norm`, no quantized or LoRA weights)."""
    if layer.num_query_heads % layer.num_key_value_heads:
        raise NotUnderstood(f"num_query_heads={layer.num_query_heads} is not a multiple of num_key_value_heads="
                            f"{layer.num_key_value_heads}")
    for name, equation in _EQUATIONS.items():
        dense = getattr(layer, "output_dense" if name == "attention_output" else f"{name}_dense", None)
        if not isinstance(dense, keras.layers.EinsumDense) or dense.equation != equation:
            raise NotUnderstood(f"its {name} projection is not an EinsumDense '{equation}'")
    expected = {f"{name}/kernel" for name in _EQUATIONS}
    if getattr(layer, "use_query_key_norm", False):
        expected |= {"query_norm/scale", "key_norm/scale"}
    keys = set(weight_keys(layer).values())
    if keys != expected:
        extra = sorted(keys - expected) or sorted(expected - keys)
        raise NotUnderstood(f"holds weights other than its projections' kernels and norms' scales ({extra[:3]}; a "
                            "quantized or LoRA-enabled projection is not pruned)")


def gemma_attention_config(layer):
    """The config of a Gemma attention layer: its constructor's arguments read back from the attributes it keeps
    (`kernel_initializer` from `_kernel_initializer`), and the base layer's, its dtype policy serialised."""
    config = {"name": layer.name, "trainable": layer.trainable,
              "dtype": keras.dtype_policies.serialize(layer.dtype_policy),
              "kernel_initializer": keras.initializers.serialize(layer._kernel_initializer)}
    for p in list(inspect.signature(type(layer).__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in config:
            continue
        if not hasattr(layer, p.name):
            raise NotUnderstood(f"its constructor argument '{p.name}' is not kept by the layer, so a slim copy "
                                "cannot be made")
        config[p.name] = getattr(layer, p.name)
    return config


class ClosedGemmaAttention(Boundary):
    """A Gemma attention layer that is not pruned (called with a cache or a rotary offset, or with quantized or
    LoRA projections): a boundary, copied from `gemma_attention_config` (it has no config of its own)."""

    def config(self, layer):
        try:
            return gemma_attention_config(layer)
        except NotUnderstood as e:
            raise ValueError(str(e)) from None


def is_gemma_attention(layer):
    """Whether `layer` is one of the KerasHub classes this module's rule reads (by exact class)."""
    return f"{type(layer).__module__}.{type(layer).__qualname__}" in RULES


# The KerasHub classes, by module and name (exact classes: a subclass may compute something else), so that
# keras-hub is not imported to match them.
RULES = {"keras_hub.src.models.gemma.gemma_attention.CachedGemmaAttention": GemmaAttention(),
         "keras_hub.src.models.gemma3.gemma3_attention.CachedGemma3Attention": GemmaAttention()}


def attention_arguments(layer, arguments):
    """`{"query": shape, "value": shape}` of one call from `{argument name: shape}` of its tensors (its `x` is both),
    for the cost models, which price it as a grouped-query self-attention."""
    return {"query": arguments["x"], "value": arguments["x"]}
