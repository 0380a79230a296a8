"""KerasHub's decoder attention (Llama, Mistral, Qwen): key/value groups and query heads, each layer read whole.

KerasHub's `LlamaAttention`, `CachedMistralAttention` and `QwenAttention` hold four `EinsumDense` projections — query
`bqm,muh->bquh`, key and value `bkm,mvh->bkvh`, output `bquh,uhm->bqm` — a rotary embedding applied to the query
and key, and grouped-query attention: query head i reads key/value head i // (query heads / key/value heads). As for
Keras's own attention layers (`tfprune.graph.rules.attention`), the rule reads the layer whole: the projections'
outputs have two channel axes (heads × head width), which the channel graph does not follow, but the layer's
structure fixes which slice of every kernel belongs to which head. The projections are found by their equations
(`split_heads_letters`, `merge_heads_letters`), so a layer whose equations differ stays closed, with the reason.

Channel spaces of such a layer at path `p`:

* `p:kv_heads` (`num_key_value_heads`): a key/value head with every query head that reads it, removed together;
* `p:query_heads` (`num_query_heads`, in equal blocks per key/value head): a query head; every key/value group
  keeps the same number. A query head stays when it and its key/value head do;
* or, when `num_query_heads == num_key_value_heads` (plain multi-head attention), one `p:heads`: a head's query,
  key and value slices and its rows of the output projection;
* `p:head_dim`, never pruned: the rotary embedding rotates slot j of every query and key head with slot
  j + head_dim / 2, so removing a slot would change what every kept slot computes. The group says so.

The output projection writes the layer's input width (these classes derive it from their input), so the output
carries the input's channels, as `GroupQueryAttention`'s does. The layer is understood only when called without a
key/value cache or rotary offset (a model's forward pass, not cached generation), and with plain kernels (Qwen's
query, key and value biases are sliced with their kernels; no LoRA or quantization); otherwise it is a boundary
(a Llama one is copied as a `LlamaAttentionWithHeadDim` with the same LoRA and quantization,
`ClosedLlamaAttention`).

The slim layer keeps the head width and the attention scale 1/sqrt(head_dim), so it computes what the masked one
does. `LlamaAttention` derives its head width from `hidden_dim // num_query_heads`, so fewer query heads would
widen every head: a slim Llama attention is a `tfprune.layers.LlamaAttentionWithHeadDim`, which takes `head_dim`
in its config and saves and loads (registered with Keras); a slim Qwen one, for the same reason, a
`tfprune.layers.QwenAttentionWithHeadDim`. `CachedMistralAttention` accepts `head_dim` itself, so a
slim Mistral attention is the same class with `head_dim` given.

For rules of other KerasHub attention classes: `split_heads_letters`, `merge_heads_letters`, `kernel_index` and
`projection_index` slice any head projection read from its equation, `kept_query_heads` gives the query heads a
plan keeps, `Projections` checks a layer's four projections, and `DecoderAttention` reads any layer of this
structure once told where its projections are and what its call's input is called (`projection_attributes`,
`input_argument`), which other weights it keeps whole (`whole_weights`) and how to copy it (`config`,
`updated_config`, `new_layer`, `slim_weights`): KerasHub's Gemma attention is one
(`tfprune.graph.rules.gemma_attention`). Counting, `MacsModel` and `tfprune.summary` know the family by its rule
(`isinstance(rule_for(layer), DecoderAttention)`).

For the data-driven criteria, the heads are measured on the output projection's input, (batch, positions, query
heads, head width), as for `GroupQueryAttention` (`inner_taps`).
"""

import inspect

import keras
import numpy as np

from tfprune.backends import variable_view
from tfprune.graph.keras_nodes import weight_keys
from tfprune.graph.layer_configs import layer_config
from tfprune.graph.rules.attention import InnerTap, heads_last, key_value_heads_last
from tfprune.graph.rules.base import Boundary, LayerRule, NotUnderstood

LLAMA = "keras_hub.src.models.llama.llama_attention.LlamaAttention"
SLIM_LLAMA = "tfprune.layers.llama_attention.LlamaAttentionWithHeadDim"
MISTRAL = "keras_hub.src.models.mistral.mistral_attention.CachedMistralAttention"
QWEN = "keras_hub.src.models.qwen.qwen_attention.QwenAttention"
SLIM_QWEN = "tfprune.layers.qwen_attention.QwenAttentionWithHeadDim"


def class_path(operation):
    """`module.QualifiedName` of an operation's class, by which KerasHub classes are matched without importing
    keras-hub."""
    return f"{type(operation).__module__}.{type(operation).__qualname__}"


def _operands(equation):
    """`(data, kernel, output)` subscripts of a two-operand einsum without ellipsis, or None."""
    left, arrow, output = equation.replace(" ", "").partition("->")
    inputs = left.split(",")
    if not arrow or len(inputs) != 2 or "." in equation:
        return None
    return inputs[0], inputs[1], output


def split_heads_letters(equation):
    """`(channel, heads, width)` letters of an `EinsumDense` equation that projects the last axis into heads × head
    width, every other axis passing through ("bqm,muh->bquh"), or None.

    Example:

    >>> split_heads_letters("bqm,muh->bquh"), split_heads_letters("btd,ndh->btnh"), split_heads_letters("ab,bc->ac")
    (('m', 'u', 'h'), ('d', 'n', 'h'), None)
    """
    parts = _operands(equation)
    if parts is None:
        return None
    data, kernel, output = parts
    if len(output) < 3 or not data:
        return None
    channel, heads, width = data[-1], output[-2], output[-1]
    if (sorted(kernel) != sorted({channel, heads, width}) or channel in output or heads in data or width in data
            or output[:-2] != data[:-1]):
        return None
    return channel, heads, width


def merge_heads_letters(equation):
    """`(heads, width, channel)` letters of an `EinsumDense` equation that projects heads × head width (the last two
    axes) into one last axis, every other axis passing through ("bquh,uhm->bqm"), or None.

    Example:

    >>> merge_heads_letters("bquh,uhm->bqm"), merge_heads_letters("bqm,muh->bquh")
    (('u', 'h', 'm'), None)
    """
    parts = _operands(equation)
    if parts is None:
        return None
    data, kernel, output = parts
    if len(data) < 3 or not output:
        return None
    heads, width, channel = data[-2], data[-1], output[-1]
    if (sorted(kernel) != sorted({heads, width, channel}) or channel in data or heads in output or width in output
            or data[:-2] != output[:-1]):
        return None
    return heads, width, channel


def kernel_index(subscripts, kept):
    """The numpy index of a weight whose axes are `subscripts` (one letter each) that keeps `kept[letter]` (an
    array of indices) on every axis.

    Example:

    >>> import numpy as np
    >>> w = np.arange(24).reshape(2, 3, 4)
    >>> w[kernel_index("muh", {"m": [0, 1], "u": [2], "h": [0, 3]})].tolist()
    [[[8, 11]], [[20, 23]]]
    """
    return np.ix_(*[np.asarray(kept[letter]) for letter in subscripts])


def projection_index(dense, channels, heads, width):
    """`{"kernel": index, "bias": index}` of a head projection (an `EinsumDense` that `split_heads_letters` or
    `merge_heads_letters` reads) keeping the indices `channels` of its channel axis, `heads` of its heads axis and
    `width` of its head-width axis; "bias" only when it has one. NotUnderstood for any other equation."""
    letters = split_heads_letters(dense.equation)
    if letters is None:
        merged = merge_heads_letters(dense.equation)
        if merged is None:
            raise NotUnderstood(f"projection '{dense.name}' has equation '{dense.equation}', which is not a projection "
                                "to or from heads × head width")
        letters = (merged[2], merged[0], merged[1])
    kept = dict(zip(letters, (channels, heads, width), strict=True))
    kernel = _operands(dense.equation)[1]
    index = {"kernel": kernel_index(kernel, kept)}
    if dense.bias is not None:
        index["bias"] = kernel_index(dense.bias_axes, kept)
    return index


def kept_query_heads(query_heads, kv_heads):
    """Keep flags of the query heads of grouped-query attention: kept themselves and reading a kept key/value
    head (query head i reads key/value head i // (len(query_heads) // len(kv_heads))).

    Example:

    >>> import numpy as np
    >>> kept_query_heads(np.array([1, 0, 1, 1], bool), np.array([1, 0], bool)).tolist()
    [True, False, False, False]
    """
    return query_heads & np.repeat(kv_heads, len(query_heads) // len(kv_heads))


def _kept(mask):
    return np.flatnonzero(mask)


def rotary_reason(path, head_dim):
    return (f"'{path}' applies a rotary position embedding, which rotates slot j of every query and key head with "
            f"slot j + {head_dim // 2}: its head width is never pruned")


class Projections:
    """The four projections of a grouped-query attention layer, checked: query and key/value heads, head width.

    Args:
        query, key, value: `EinsumDense` projections to heads × head width (`split_heads_letters`).
        output: the `EinsumDense` projection from heads × head width (`merge_heads_letters`).
        weights: the weights of the attention layer that its rule slices: they must be the four kernels and the
            projections' biases, if any (Qwen's query, key and value have some; they are sliced with the kernels).

    Raises:
        NotUnderstood: for other equations, LoRA or quantization, key and value heads unlike each other or
            of another width than the query's, query heads not a multiple of key/value heads, other weights.
    """

    def __init__(self, query, key, value, output, weights):
        self.query, self.key, self.value, self.output = query, key, value, output
        for dense, read in ((query, split_heads_letters), (key, split_heads_letters), (value, split_heads_letters),
                            (output, merge_heads_letters)):
            if read(dense.equation) is None:
                raise NotUnderstood(f"its projection '{dense.name}' has equation '{dense.equation}', not a projection "
                                    "to or from heads × head width")
            if getattr(dense, "lora_enabled", False) or getattr(dense, "quantization_mode", None):
                raise NotUnderstood(f"its projection '{dense.name}' is quantized or LoRA-enabled")
        self.query_heads, self.head_dim = self.sizes(query)
        self.kv_heads, kv_width = self.sizes(key)
        if self.sizes(value) != (self.kv_heads, kv_width) or kv_width != self.head_dim:
            raise NotUnderstood("its key and value heads differ in number or width from each other or the query's")
        if self.query_heads % self.kv_heads:
            raise NotUnderstood(f"{self.query_heads} query heads are not a multiple of {self.kv_heads} key/value heads")
        self.repeats = self.query_heads // self.kv_heads
        expected = {id(w) for d in (query, key, value, output) for w in (d.kernel, d.bias) if w is not None}
        others = [v.path for v in weights if id(v) not in expected]
        if others:
            raise NotUnderstood(f"holds weights other than its projections' kernels and biases ({others[:3]})")

    @staticmethod
    def sizes(dense):
        """(heads, width) of a projection to heads (read from its equation and kernel)."""
        _, heads, width = split_heads_letters(dense.equation)
        kernel = _operands(dense.equation)[1]
        shape = dict(zip(kernel, dense.kernel.shape, strict=True))
        return int(shape[heads]), int(shape[width])


class DecoderAttention(LayerRule):
    """KerasHub's decoder attention with rotary embedding and grouped-query attention (see the module docstring).

    Example:

    >>> import keras, keras_hub, tfprune
    >>> backbone = keras_hub.models.MistralBackbone(vocabulary_size=64, num_layers=1, num_query_heads=4,
    ...     num_key_value_heads=2, hidden_dim=32, intermediate_dim=64, name="mistral")
    >>> inputs = {t.name: keras.Input((8,), dtype=t.dtype, name=t.name) for t in backbone.inputs}  # fixed length
    >>> graph = tfprune.ChannelGraph(keras.Model(inputs, backbone(inputs)))
    >>> sorted((g.name.split("/")[-1], g.width) for g in graph.prunable_groups if "self_attention" in g.name)
    [('self_attention:kv_heads', 2), ('self_attention:query_heads', 4)]
    """

    filter_sides = ("kv_heads", "query_heads")
    # Where the layer keeps its projections, and the name of its call's input: a rule of another KerasHub class of
    # the same structure (KerasHub's Gemma attention holds `query_dense`, ... and calls its input `x`) changes these.
    projection_attributes = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
    input_argument = "hidden_states"

    def whole_weights(self, layer):
        """The weights the layer holds besides its projections' kernels, which a slim layer keeps whole (none
        here; Gemma3's query and key norm scales, which span the head width)."""
        return ()

    def projections(self, layer):
        """The layer's checked `Projections` (NotUnderstood for a layer this rule does not read)."""
        whole = {id(w) for w in self.whole_weights(layer)}
        return Projections(*(getattr(layer, name) for name in self.projection_attributes),
                           weights=[w for w in layer.weights if id(w) not in whole])

    def head_counts(self, layer):
        """(query heads, key/value heads) of the layer, read from its query and key projections."""
        query, key = (getattr(layer, name) for name in self.projection_attributes[:2])
        return Projections.sizes(query)[0], Projections.sizes(key)[0]

    def call_input(self, ctx, layer):
        """Element ids of the input of one call, refusing calls with a key/value cache or a rotary offset."""
        args = ctx.arguments(layer)
        if args.get("cache") is not None or args.get("cache_update_mask") is not None:
            raise NotUnderstood("called with a key/value cache (cached generation); only a call without one is pruned")
        if args.get("cache_update_index") not in (None, 0):
            raise NotUnderstood("called with a cache_update_index other than 0 (a rotary offset, as in generation)")
        given = args.get(self.input_argument)
        if not isinstance(given, tuple) or given[0] is None:
            raise NotUnderstood(f"its {self.input_argument} has no known channel axis")
        return given[0]

    def read_inputs(self, layer, args, kwargs):
        """`{"in": the input}` of one call, for the data-driven criteria."""
        bound = inspect.signature(layer.call).bind_partial(*args, **kwargs).arguments
        return {"in": bound[self.input_argument]}

    def propagate(self, ctx, layer, inputs):
        elems = self.call_input(ctx, layer)
        parts = self.projections(layer)
        ctx.record("in", elems)
        if parts.repeats == 1:
            kv_heads = ctx.new_space(parts.kv_heads, name=f"{ctx.path}:heads")
            ctx.record("kv_heads", kv_heads)
        else:
            kv_heads = ctx.new_space(parts.kv_heads, name=f"{ctx.path}:kv_heads")
            query_heads = ctx.new_space(parts.query_heads, name=f"{ctx.path}:query_heads")
            ctx.require_equal_blocks(query_heads, parts.kv_heads)
            ctx.record("kv_heads", kv_heads)
            ctx.record("query_heads", query_heads)
        head_dim = ctx.new_space(parts.head_dim, name=f"{ctx.path}:head_dim",
                                 fixed_reason=rotary_reason(ctx.path, parts.head_dim))
        ctx.record("head_dim", head_dim)
        ctx.record("out", elems)  # the output projection writes the input's width
        return [elems]

    @staticmethod
    def query_keep(keep):
        """Keep flags of the query heads (the key/value heads' own under plain multi-head attention)."""
        if "query_heads" not in keep:
            return keep["kv_heads"]
        return kept_query_heads(keep["query_heads"], keep["kv_heads"])

    def weight_index(self, layer, keep):
        parts, keys = self.projections(layer), weight_keys(layer)
        channels, width = _kept(keep["in"]), _kept(keep["head_dim"])
        query, kv = _kept(self.query_keep(keep)), _kept(keep["kv_heads"])
        index = {}
        for dense, heads in ((parts.query, query), (parts.key, kv), (parts.value, kv), (parts.output, query)):
            for name, value in projection_index(dense, channels, heads, width).items():
                index[keys[id(getattr(dense, name))]] = value
        return index

    def updated_config(self, layer, config, keep):
        return {**config, "num_query_heads": int(self.query_keep(keep).sum()),
                "num_key_value_heads": int(keep["kv_heads"].sum()), "head_dim": int(keep["head_dim"].sum())}

    def filter_weights(self, layer):
        parts = self.projections(layer)

        def heads_axis_last(dense):
            kernel = _operands(dense.equation)[1]
            letters = split_heads_letters(dense.equation) or merge_heads_letters(dense.equation)
            heads = letters[1] if dense is not parts.output else letters[0]
            return np.moveaxis(variable_view(dense.kernel), kernel.index(heads), -1)

        q, k, v, o = (heads_axis_last(d) for d in (parts.query, parts.key, parts.value, parts.output))
        if parts.repeats == 1:
            return [("kv_heads", w) for w in (q, k, v, o)]

        def by_group(w):  # query heads (last) split into (kv head, repeat), the kv head axis last
            w = w.reshape(*w.shape[:-1], parts.kv_heads, parts.repeats)
            return np.moveaxis(w, -2, -1)

        return ([("kv_heads", k), ("kv_heads", v), ("kv_heads", by_group(q)), ("kv_heads", by_group(o))]
                + [("query_heads", q), ("query_heads", o)])

    def inner_taps(self, layer):
        """The output projection's input, (batch, positions, query heads, head width), measures the heads."""
        parts = self.projections(layer)
        if parts.repeats == 1:
            return (InnerTap(parts.output, "input", "kv_heads", heads_last),)
        return (InnerTap(parts.output, "input", "query_heads", heads_last),
                InnerTap(parts.output, "input", "kv_heads", key_value_heads_last(parts.kv_heads)))


def _llama_config(layer):
    """The config of a `LlamaAttentionWithHeadDim` computing what a Llama attention layer computes."""
    from tfprune.layers.llama_attention import LlamaAttentionWithHeadDim, attention_arguments

    if isinstance(layer, LlamaAttentionWithHeadDim):
        return layer.get_config()
    # LlamaAttention's own get_config fails (keras-hub 0.32): Layer's (name, dtype, trainable) and its arguments;
    # its head width is its query kernel's last axis ("bqm,muh->bquh").
    return {**keras.layers.Layer.get_config(layer), **attention_arguments(layer),
            "head_dim": int(layer._query_dense.kernel.shape[-1])}


def _new_llama(layer, config):
    from tfprune.layers.llama_attention import LlamaAttentionWithHeadDim

    return LlamaAttentionWithHeadDim.from_config(config)


class LlamaAttention(DecoderAttention):
    """KerasHub's `LlamaAttention`, and tfprune's `LlamaAttentionWithHeadDim` that its slim copies are."""

    def config(self, layer):
        return _llama_config(layer)

    def new_layer(self, layer, config):
        return _new_llama(layer, config)

    def closed(self, why):
        return ClosedLlamaAttention(why)


class ClosedLlamaAttention(Boundary):
    """A Llama attention layer that is not pruned (called with a cache, or with quantized or LoRA-enabled
    projections): a boundary, copied as a `LlamaAttentionWithHeadDim` of the same heads (its own config cannot
    recreate it) whose projections are quantized in the same mode and have LoRA at the same rank as the original's
    (KerasHub's `backbone.quantize`, `backbone.enable_lora`), so that every weight has its copy."""

    def config(self, layer):
        return _llama_config(layer)

    def new_layer(self, layer, config):
        new = _new_llama(layer, config)
        olds = [getattr(layer, name) for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense")]
        if not any(old.quantization_mode or old.lora_enabled for old in olds):
            return new
        # Quantization and LoRA apply to built layers only: build the copy for the original's input width.
        new.build((None, None, int(layer._query_dense.kernel.shape[0])))
        for old, copy in zip(olds, (new._query_dense, new._key_dense, new._value_dense, new._output_dense),
                             strict=True):
            if old.quantization_mode:
                copy.quantize(old.quantization_mode)
            if old.lora_enabled:
                copy.enable_lora(old.lora_rank, lora_alpha=old.lora_alpha)
        return new


class MistralAttention(DecoderAttention):
    """KerasHub's `CachedMistralAttention`, whose config takes `head_dim` (the slim layer is the same class)."""


class QwenAttention(DecoderAttention):
    """KerasHub's `QwenAttention` (biases on its query, key and value projections, sliced with their kernels), and
    tfprune's `QwenAttentionWithHeadDim` that its slim copies are (it derives its head width from
    `hidden_dim // num_query_heads`, as Llama's does)."""

    def config(self, layer):
        # Its own config, and its head width, its query kernel's last axis ("bqm,muh->bquh").
        return {**layer_config(layer), "head_dim": int(layer._query_dense.kernel.shape[-1])}

    def new_layer(self, layer, config):
        from tfprune.layers.qwen_attention import QwenAttentionWithHeadDim

        return QwenAttentionWithHeadDim.from_config(config)


RULES = {LLAMA: LlamaAttention(), SLIM_LLAMA: LlamaAttention(), MISTRAL: MistralAttention(), QWEN: QwenAttention(),
         SLIM_QWEN: QwenAttention()}

