"""ParamsModel: the number of weights of a slim model as a function of the channels each group keeps.

Every pruned layer's weights are products of its kept channel counts (a convolution's kernel k·C_in/groups·C_out and
its bias C_out, a BatchNormalization's four vectors of C, an attention layer's query kernel E_q·heads·key_dim, ...),
so, like the MACs, the params of any plan follow from one count of the full model and the channel graph's records:
the params cost of the cost interface (`tfprune.measurement.costs`).
"""

import math

import numpy as np

from tfprune.graph.rules import Boundary
from tfprune.graph.rules import attention as attention_rules
from tfprune.graph.rules import einsum as einsum_rules
from tfprune.graph.rules import embeddings as embedding_rules
from tfprune.graph.rules import keras_hub_attention as decoder_rules
from tfprune.graph.rules import normalization as normalization_rules
from tfprune.graph.rules import producers as producer_rules
from tfprune.measurement.costs import PolynomialCost
from tfprune.measurement.counting import layer_params


class ParamsModel(PolynomialCost):
    """Params of `rebuild(model, plan)` (`count_params`) for any plan, from the channel counts alone.

    Args:
        model: a Functional or Sequential model (read only).
        graph: its `ChannelGraph`, if already built.

    Attributes:
        full: `count_params(model)`.
        graph: the `ChannelGraph`.

    Raises:
        NotImplementedError: for a pruned layer type whose weights it has no formula for (naming the layer).

    Example:

    >>> import tfprune
    >>> from tfprune.measurement.params_model import ParamsModel
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> plan = tfprune.plan(model, 0.5)
    >>> ParamsModel(model).params(plan) == tfprune.count_params(tfprune.rebuild(model, plan))
    True
    """

    kind = "params"
    unit = "params"

    def __init__(self, model, graph=None):
        super().__init__(model, graph)
        for path, params in layer_params(self.graph.model).items():
            self.full += params
            layer, rule = self.graph.layers.get(path), self.graph.rules.get(path)
            if layer is None or isinstance(rule, Boundary) or not self.graph.recorded(path):
                self._constant += params  # its channels are fixed
                continue
            terms, constant = _terms(layer, rule, lambda name, p=path: self.side(p, name), self.graph.recorded(path))
            full = constant + sum(c * math.prod(self.full_counts[s] for s in sides) for c, sides in terms)
            if round(full) != params:
                raise NotImplementedError(
                    f"ParamsModel's formula for layer '{path}' ({type(layer).__name__}) gives {round(full)} "
                    f"params but the layer holds {params}; add or fix its terms in "
                    "tfprune/measurement/params_model.py.")
            self._constant += constant
            self._terms += terms
        self._freeze_terms()

    def params(self, plan) -> int:
        """Params of `rebuild(model, plan)`, exactly."""
        return int(round(self.cost(plan)))


def _terms(layer, rule, side, recorded):
    """`([(coefficient, (side, ...))], constant)` whose sum over the sides' kept counts is the layer's params.

    `side(name)` registers a recorded side of the layer and gives `(index, full count)`; `recorded` names them all.
    Under grouped-query attention, the kept query heads are the kept query heads per key/value group × the kept
    key/value groups / all of them (the groups keep equal numbers), which the coefficient's 1/groups carries.
    """
    def has_bias():
        return getattr(layer, "bias", None) is not None

    def bias(o):
        return [(1.0, (o,))] if has_bias() else []

    if isinstance(rule, producer_rules.SeparableConv):
        i, o, k, m = side("in")[0], side("out")[0], math.prod(layer.kernel_size), layer.depth_multiplier
        return [(float(k * m), (i,)), (float(m), (i, o)), *bias(o)], 0
    if isinstance(rule, producer_rules.DepthwiseConv):
        i, o = side("in")[0], side("out")[0]
        return [(float(math.prod(layer.kernel_size) * layer.depth_multiplier), (i,)), *bias(o)], 0
    if isinstance(rule, producer_rules.ConvTranspose | producer_rules.Conv):
        (i, n_in), o = side("in"), side("out")[0]
        k = math.prod(layer.kernel_size)
        groups = getattr(layer, "groups", 1)
        if groups > 1 and groups == n_in:  # depthwise written as Conv(groups=C): kernel (*k, 1, C_out)
            return [(float(k), (o,)), *bias(o)], 0
        return [(k / groups, (i, o)), *bias(o)], 0
    if isinstance(rule, producer_rules.Dense | einsum_rules.EinsumDense):
        i, o = side("in")[0], side("out")[0]
        return [(1.0, (i, o)), *bias(o)], 0
    if isinstance(rule, normalization_rules.PerChannelWeights):
        i = side("in")[0]
        shapes = [tuple(w.shape) for w in layer.weights]
        return ([(float(np.prod(s[:-1])), (i,)) for s in shapes if len(s)],
                sum(1 for s in shapes if not len(s)))
    if isinstance(rule, attention_rules.MultiHeadAttention):
        q, k, v, o = (side(name)[0] for name in ("query", "key", "value", "out"))
        h, dk, dv = side("heads")[0], side("key_dim")[0], side("value_dim")[0]
        return _attention(q, k, v, o, (h,), (h,), dk, dv, 1.0, layer._use_gate, layer.use_bias), 0
    if isinstance(rule, attention_rules.GroupedQueryAttention):
        q, k, v, o = (side(name)[0] for name in ("query", "key", "value", "out"))
        qh, kv, d = side("query_heads")[0], side("kv_heads")[0], side("head_dim")[0]
        # kept query heads = kept query heads per block × kept key/value heads (the blocks being equal)
        return _attention(q, k, v, o, (qh, kv), (kv,), d, d, 1.0 / layer.num_key_value_heads, layer.use_gate,
                          layer.use_bias), 0
    if isinstance(rule, embedding_rules.Embedding):  # (vocabulary, width), and an untied (width, vocabulary)
        return [_scaled(w, side, "out") for w in layer.weights], 0
    if isinstance(rule, embedding_rules.PositionEmbedding):  # (positions, width)
        return [_scaled(w, side, "in") for w in layer.weights], 0
    if isinstance(rule, embedding_rules.ViTPatchingAndEmbedding):  # class token, patch Conv2D, position table
        patches = layer.patch_embedding
        return [_scaled(w, side, "in", "out") if w is patches.kernel else _scaled(w, side, "out")
                for w in layer.weights], 0
    if isinstance(rule, decoder_rules.DecoderAttention):
        # Llama, Mistral, Qwen, Gemma: four kernels (and Qwen's query/key/value biases) sliced by heads; anything
        # else the rule keeps whole (Gemma3's query/key norms over the head width) is a constant
        parts = rule.projections(layer)
        query = ("query_heads", "kv_heads") if "query_heads" in recorded else ("kv_heads",)
        sides = {}
        for dense, heads in ((parts.query, query), (parts.key, ("kv_heads",)), (parts.value, ("kv_heads",))):
            sides[id(dense.kernel)] = ("in", *heads, "head_dim")
            if dense.bias is not None:
                sides[id(dense.bias)] = (*heads, "head_dim")
        sides[id(parts.output.kernel)] = (*query, "head_dim", "out")
        if parts.output.bias is not None:
            sides[id(parts.output.bias)] = ("out",)
        return ([_scaled(w, side, *sides[id(w)]) for w in layer.weights if id(w) in sides],
                sum(math.prod(w.shape) for w in layer.weights if id(w) not in sides))
    raise NotImplementedError(f"ParamsModel has no formula for layer '{layer.name}' ({type(layer).__name__}), "
                              "whose weights lose channels; add its terms in tfprune/measurement/params_model.py.")


def _scaled(weight, side, *names):
    """The term of a weight whose size is a fixed multiple of the named sides' product (its other axes unpruned)."""
    sides = [side(name) for name in names]
    return math.prod(weight.shape) / math.prod(n for _, n in sides), tuple(i for i, _ in sides)


def _attention(q, k, v, o, heads, kv_heads, dk, dv, scale, gate, bias):
    terms = [(scale, (q, *heads, dk)), (1.0, (k, *kv_heads, dk)), (1.0, (v, *kv_heads, dv)),
             (scale, (*heads, dv, o))]
    if gate:
        terms.append((scale, (q, *heads, dv)))
    if bias:
        terms += [(scale, (*heads, dk)), (1.0, (*kv_heads, dk)), (1.0, (*kv_heads, dv)), (1.0, (o,))]
        if gate:
            terms.append((scale, (*heads, dv)))
    return terms
