"""MacsModel: the MACs of a slim model as a function of the channels each group keeps, without rebuilding it.

`count_macs` counts a built model layer by layer. Every counted layer's MACs are a sum of fixed multiples of
products of its kept channel counts (a convolution is S·k·C_in/groups·C_out; a separable one adds S·k·m·C_in; an
attention layer's query projection is T_q·E_q·heads·key_dim and its QKᵀ is heads·T_q·T_k·key_dim), and pruning
changes only those counts, never a spatial size or a sequence length. So the MACs of any plan follow from
one count of the full model and the channel graph's records of which channels every layer reads and writes. The
searches (`tfprune.search`), `plan_for_macs` and DMCP's differentiable budget all use this one model, the MACs
cost of the cost interface (`tfprune.measurement.costs`).
"""

import keras
import numpy as np

from tfprune.graph.rules import Boundary
from tfprune.graph.rules.embeddings import Embedding
from tfprune.graph.rules.keras_hub_attention import DecoderAttention
from tfprune.measurement.costs import PolynomialCost
from tfprune.measurement.counting import layer_counts

L = keras.layers
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)
_BILINEAR = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose, L.Dense, L.EinsumDense, *_CONVS)
_ATTENTION = (L.MultiHeadAttention, L.GroupQueryAttention)


class MacsModel(PolynomialCost):
    """MACs of `rebuild(model, plan)` for any plan, from the channel counts alone (no model is built).

    The MACs cost of the cost interface (`tfprune.measurement.costs.CostModel`): `cost`, `ratio`,
    `cost_of_widths`, `ratio_of_widths`, `expected_cost` and `expected_ratio`, with the MACs-named `macs`,
    `macs_of_widths` and `expected_macs` beside them.

    Args:
        model: a Functional or Sequential model with a fixed input size (read only).
        graph: its `ChannelGraph`, if already built (its `prune_outputs` setting is kept).

    Attributes:
        full: `count_macs(model)`.
        graph: the `ChannelGraph`.

    Example:

    >>> import tfprune
    >>> model = tfprune.models.small_vgg(widths=(8, 16), convs_per_stage=1)
    >>> plan = tfprune.plan(model, 0.5)
    >>> macs = tfprune.macs_model.MacsModel(model)
    >>> macs.macs(plan) == tfprune.count_macs(tfprune.rebuild(model, plan))
    True
    """

    kind = "macs"
    unit = "MACs"

    def __init__(self, model, graph=None):
        super().__init__(model, graph)
        for path, count in layer_counts(self.graph.model).items():  # the model walked (a trace, if traced)
            self.full += count.macs
            if not count.macs:
                continue
            layer, rule = self.graph.layers.get(path), self.graph.rules.get(path)
            if layer is None or isinstance(rule, Boundary) or not self.graph.recorded(path):
                self._constant += count.macs  # its channels are fixed
                continue
            if getattr(rule, "macs_bilinear", False):  # a rule's layer whose MACs are ∝ (input × output channels)
                i, o = self.side(path, "in"), self.side(path, "out")
                self._terms.append((count.macs / (i[1] * o[1]), (i[0], o[0])))
                continue
            self._terms += _terms(layer, rule, count.macs, lambda name, p=path: self.side(p, name),
                                  count.argument_shapes)
        self._freeze_terms()

    def macs(self, plan) -> int:
        """MACs of `rebuild(model, plan)`, exactly."""
        return int(round(self.cost(plan)))

    def macs_of_widths(self, widths, ranks=None) -> int:
        """MACs when each named group keeps `widths[name]` channels: its first ones, or those of lowest `ranks`
        (see `cost_of_widths`)."""
        return int(round(self.cost_of_widths(widths, ranks)))

    def expected_macs(self, keep_probability):
        """Expected MACs when each channel is kept with a given probability, as a differentiable keras tensor.

        Each layer's kept input and output counts are replaced by their expectations and multiplied, as DMCP
        does (exact when the two are independent, and always exact for probabilities of 0 and 1).

        Args:
            keep_probability: `{group name: tensor of shape (width,)}`, each channel's probability of being kept,
                in the group's channel order; groups not named are kept whole.

        Returns:
            A scalar float32 tensor of the backend in use.
        """
        return self.expected_cost(keep_probability)


def _terms(layer, rule, macs, side, argument_shapes):
    """`(coefficient, (side, ...))` terms whose sum, over the sides' kept counts, is the layer's MACs."""
    def n(s):
        return s[1]

    if isinstance(layer, _ATTENTION):
        return _attention_terms(layer, macs, side, argument_shapes)
    if isinstance(rule, DecoderAttention):
        return _decoder_attention_terms(layer, rule, macs, side, argument_shapes)
    if isinstance(layer, _SEPARABLE):  # S·m·C_in·(k + C_out)
        i, o = side("in"), side("out")
        k = int(np.prod(layer.kernel_size))
        scale = macs / (n(i) * (k + n(o)))
        return [(scale * k, (i[0],)), (scale, (i[0], o[0]))]
    if isinstance(rule, Embedding):  # a reverse call (tied output projection): T·E·V, the vocabulary V fixed
        o = side("out")
        return [(macs / n(o), (o[0],))]
    if isinstance(layer, _DEPTHWISE):  # S·k·m·C_in
        i = side("in")
        return [(macs / n(i), (i[0],))]
    if isinstance(layer, _CONVS) and layer.groups > 1 and layer.groups == n(side("in")):  # depthwise as grouped
        o = side("out")
        return [(macs / n(o), (o[0],))]
    if isinstance(layer, _BILINEAR):
        i, o = side("in"), side("out")
        return [(macs / (n(i) * n(o)), (i[0], o[0]))]
    raise NotImplementedError(f"MacsModel has no formula for layer '{layer.name}' ({type(layer).__name__}), "
                              "which computes MACs; add its terms beside the others.")


def _attention_terms(layer, macs, side, argument_shapes):
    """Per call, with T_q and T_k the query and key positions: the projections (query T_q·E_q·H·D_k, key
    T_k·E_k·H·D_k, value T_k·E_v·H_kv·D_v, output T_q·H·D_v·E_out, a gate T_q·E_q·H·D_v), QKᵀ (H·T_q·T_k·D_k) and
    AV (H·T_q·T_k·D_v); for grouped-query attention, H is the query heads kept with their key/value head
    (kept query heads × kept key/value heads / key/value heads, the blocks being equal) and H_kv the key/value heads.
    """
    q_in, k_in, v_in, out = (side(name)[0] for name in ("query", "key", "value", "out"))
    if isinstance(layer, L.MultiHeadAttention):
        heads, key_dim, value_dim = ((side("heads")[0],), (side("key_dim")[0],), (side("value_dim")[0],))
        kv_heads, scale, gate = heads, 1.0, layer._use_gate
    else:  # GroupQueryAttention: one head width for query, key and value
        key_dim = value_dim = (side("head_dim")[0],)
        kv_heads = (side("kv_heads")[0],)
        heads, scale = (side("query_heads")[0], *kv_heads), 1.0 / layer.num_key_value_heads
        gate = layer.use_gate
    terms = []
    for shapes in argument_shapes:
        t_q = _positions(layer, shapes["query"])
        t_k = _positions(layer, shapes.get("key", shapes["value"]))
        terms += [(t_q * scale, (q_in, *heads, *key_dim)), (t_k, (k_in, *kv_heads, *key_dim)),
                  (t_k, (v_in, *kv_heads, *value_dim)), (t_q * scale, (*heads, *value_dim, out)),
                  (t_q * t_k * scale, (*heads, *key_dim)), (t_q * t_k * scale, (*heads, *value_dim))]
        if gate:
            terms.append((t_q * scale, (q_in, *heads, *value_dim)))
    names = ("query", "key", "value", "out", "heads", "key_dim", "value_dim", "query_heads", "kv_heads", "head_dim")
    return _checked(layer, macs, terms, side, names)


def _decoder_attention_terms(layer, rule, macs, side, argument_shapes):
    """KerasHub's decoder attention (a `tfprune.graph.rules.keras_hub_attention.DecoderAttention`: Llama, Mistral,
    Gemma), per call on T positions (self-attention, no cache): the query projection T·E·H·D, key and value
    2·T·E·H_kv·D, output T·H·D·E, QKᵀ and AV 2·H·T·T·D, where H is the query heads kept with their key/value head
    (as for `GroupQueryAttention`), H_kv the key/value heads, D the head width (never pruned: a rotary embedding
    ties it) and E the hidden width. Causal attention counts as full."""
    hidden, kv_heads, head_dim, out = (side(name)[0] for name in ("in", "kv_heads", "head_dim", "out"))
    try:
        heads, scale = (side("query_heads")[0], kv_heads), 1.0 / side("kv_heads")[1]
    except KeyError:  # as many query heads as key/value heads: one group of heads
        heads, scale = (kv_heads,), 1.0
    terms = []
    for shapes in argument_shapes:
        t = _positions(layer, shapes[rule.input_argument])
        terms += [(t * scale, (hidden, *heads, head_dim)), (2 * t, (hidden, kv_heads, head_dim)),
                  (t * scale, (*heads, head_dim, out)), (2 * t * t * scale, (*heads, head_dim))]
    return _checked(layer, macs, terms, side, ("in", "kv_heads", "head_dim", "out", "query_heads"))


def _checked(layer, macs, terms, side, names):
    """`terms` of an attention layer, once their sum over the full widths of the sides `names` (those recorded)
    is found equal to `macs`, what `count_macs` counts for it."""
    if not terms:
        raise NotImplementedError(f"MacsModel does not know the sequence lengths of '{layer.name}'.")
    width = {}
    for name in names:
        try:
            index, count = side(name)
        except KeyError:
            continue
        width[index] = count
    full = sum(c * np.prod([width[s] for s in sides]) for c, sides in terms)
    if round(full) != macs:
        raise NotImplementedError(
            f"count_macs counts {macs} MACs for '{layer.name}' ({type(layer).__name__}) but MacsModel's attention "
            f"formula gives {round(full)}: the two must count attention alike (projections, QKᵀ and AV).")
    return terms


def _positions(layer, shape):
    if getattr(layer, "_attention_axes", None) not in (None, tuple(range(1, len(shape) - 1))):
        raise NotImplementedError(f"MacsModel prices '{layer.name}' ({type(layer).__name__}) only with attention "
                                  f"over every axis between batch and channels; it has attention_axes="
                                  f"{layer._attention_axes}.")
    if any(d is None for d in shape[1:-1]):
        raise ValueError(f"Cannot price layer '{layer.name}' ({type(layer).__name__}): its input shape {shape} has "
                         "an unknown sequence length. MACs are counted for a fixed input size.")
    return float(np.prod(shape[1:-1]))
