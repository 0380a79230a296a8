"""MacsModel: the MACs of a slim model as a function of the channels each group keeps, without rebuilding it.

`count_macs` counts a built model layer by layer. Every counted layer's MACs are a sum of fixed multiples of
products of its kept channel counts (a convolution is S·k·C_in/groups·C_out; a separable one adds S·k·m·C_in; an
attention layer's query projection is T_q·E_q·heads·key_dim and its QKᵀ is heads·T_q·T_k·key_dim), and pruning
changes only those counts, never a spatial size or a sequence length. So the MACs of any plan follow from
one count of the full model and the channel graph's records of which channels every layer reads and writes. The
searches (`tfprune.search`), `plan_for_macs` and DMCP's differentiable budget all use this one model.
"""

import keras
import numpy as np

from tfprune.graph import ChannelGraph
from tfprune.graph.rules import Boundary
from tfprune.graph.rules.keras_hub_attention import DecoderAttention
from tfprune.measurement.counting import layer_counts

L = keras.layers
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)
_BILINEAR = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose, L.Dense, L.EinsumDense, *_CONVS)
_ATTENTION = (L.MultiHeadAttention, L.GroupQueryAttention)


class MacsModel:
    """MACs of `rebuild(model, plan)` for any plan, from the channel counts alone (no model is built).

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

    def __init__(self, model, graph=None):
        self.graph = graph or ChannelGraph(model)
        groups = self.graph.groups
        self._offset = dict(zip([g.name for g in groups], np.cumsum([0] + [g.width for g in groups[:-1]]),
                                strict=True))
        self._size = sum(g.width for g in groups)
        constant = 0.0
        position_index, position_side = [], []  # flat channel index of every recorded position, and its side
        terms = []  # (coefficient, (side, ...)): the coefficient times the product of the sides' kept counts
        sides = {}

        def side(path, name):
            key = (path, name)
            if key not in sides:
                group, channel = self.graph.channels(self.graph.recorded(path)[name])
                flat = np.array([self._offset[groups[g].name] for g in group], np.int64) + channel
                position_index.append(flat)
                position_side.append(np.full(len(flat), len(sides)))
                sides[key] = len(sides), len(flat)
            return sides[key]

        self.full = 0
        for path, count in layer_counts(self.graph.model).items():  # the model walked (a trace, if traced)
            self.full += count.macs
            if not count.macs:
                continue
            layer, rule = self.graph.layers.get(path), self.graph.rules.get(path)
            if layer is None or isinstance(rule, Boundary) or not self.graph.recorded(path):
                constant += count.macs  # its channels are fixed
                continue
            terms += _terms(layer, rule, count.macs, lambda name, p=path: side(p, name), count.argument_shapes)
        self._constant = constant
        self._positions = np.concatenate(position_index) if position_index else np.zeros(0, np.int64)
        self._position_side = np.concatenate(position_side) if position_side else np.zeros(0, np.int64)
        self._n_sides = len(sides)
        self._coefficient = np.array([t[0] for t in terms], np.float64)
        degree = max([len(t[1]) for t in terms], default=1)
        # factors[j, t]: the side of the j-th factor of term t; -1 (a factor of 1) where a term has fewer
        self._factors = np.array([list(t[1]) + [-1] * (degree - len(t[1])) for t in terms], np.int64).reshape(
            len(terms), degree).T

    # ---- exact counts ---------------------------------------------------------------------------------------

    def macs(self, plan) -> int:
        """MACs of `rebuild(model, plan)`, exactly."""
        keep = np.ones(self._size, np.float64)
        for name, kept in plan.keep.items():
            group_keep = np.zeros(self.graph[name].width)
            group_keep[list(kept)] = 1
            keep[self._slice(name)] = group_keep
        return int(round(self._evaluate(keep)))

    def ratio(self, plan) -> float:
        """`macs(plan) / full`."""
        return self.macs(plan) / self.full

    def macs_of_widths(self, widths, ranks=None) -> int:
        """MACs when each named group keeps `widths[name]` channels: its first ones, or those of lowest `ranks`.

        Args:
            widths: `{group name: kept count}`; groups not named keep all their channels.
            ranks: `{group name: rank of each channel}` (0 = kept first), e.g. from a criterion's order; by default
                the channel index. With the ranks a plan keeps, the result equals `macs(plan)`.
        """
        keep = np.ones(self._size, np.float64)
        for name, width in widths.items():
            group = self.graph[name]
            rank = np.arange(group.width) if ranks is None or name not in ranks else np.asarray(ranks[name])
            keep[self._slice(name)] = rank < int(width)
        return int(round(self._evaluate(keep)))

    def _slice(self, name):
        start = self._offset[self.graph[name].name]
        return slice(start, start + self.graph[name].width)

    def _evaluate(self, keep):
        counts = np.bincount(self._position_side, weights=keep[self._positions], minlength=self._n_sides)
        product = self._coefficient.copy()
        for factor in self._factors:
            product *= np.where(factor >= 0, counts[np.maximum(factor, 0)], 1.0)
        return self._constant + float(np.sum(product))

    # ---- expectation (differentiable) ---------------------------------------------------------------------

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
        parts, start = [], 0
        for group in self.graph.groups:
            if group.name in keep_probability:
                if start < self._offset[group.name]:
                    parts.append(keras.ops.ones((self._offset[group.name] - start,)))
                parts.append(keras.ops.cast(keras.ops.reshape(keep_probability[group.name], (-1,)), "float32"))
                start = self._offset[group.name] + group.width
        if start < self._size:
            parts.append(keras.ops.ones((self._size - start,)))
        keep = keras.ops.concatenate(parts) if len(parts) > 1 else parts[0]
        counts = keras.ops.segment_sum(keras.ops.take(keep, self._positions), self._position_side,
                                       num_segments=self._n_sides)
        product = keras.ops.convert_to_tensor(self._coefficient, "float32")
        for factor in self._factors:
            product = product * keras.ops.where(factor >= 0, keras.ops.take(counts, np.maximum(factor, 0)), 1.0)
        return self._constant + keras.ops.sum(product)


def _terms(layer, rule, macs, side, argument_shapes):
    """`(coefficient, (side, ...))` terms whose sum, over the sides' kept counts, is the layer's MACs."""
    def n(s):
        return s[1]

    if isinstance(layer, _ATTENTION):
        return _attention_terms(layer, macs, side, argument_shapes)
    if isinstance(rule, DecoderAttention):
        return _decoder_attention_terms(layer, macs, side, argument_shapes)
    if isinstance(layer, _SEPARABLE):  # S·m·C_in·(k + C_out)
        i, o = side("in"), side("out")
        k = int(np.prod(layer.kernel_size))
        scale = macs / (n(i) * (k + n(o)))
        return [(scale * k, (i[0],)), (scale, (i[0], o[0]))]
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
    width = {}
    if isinstance(layer, L.MultiHeadAttention):
        heads, key_dim, value_dim = ((side("heads")[0],), (side("key_dim")[0],), (side("value_dim")[0],))
        kv_heads, scale, gate = heads, 1.0, layer._use_gate
    else:  # GroupQueryAttention: one head width for query, key and value
        heads = (side("query_heads")[0], side("kv_heads")[0])
        key_dim = value_dim = (side("head_dim")[0],)
        kv_heads, scale, gate = (side("kv_heads")[0],), 1.0 / layer.num_key_value_heads, layer.use_gate
    terms = []
    for shapes in argument_shapes:
        t_q = _positions(layer, shapes["query"])
        t_k = _positions(layer, shapes.get("key", shapes["value"]))
        terms += [(t_q * scale, (q_in, *heads, *key_dim)), (t_k, (k_in, *kv_heads, *key_dim)),
                  (t_k, (v_in, *kv_heads, *value_dim)), (t_q * scale, (*heads, *value_dim, out)),
                  (t_q * t_k * scale, (*heads, *key_dim)), (t_q * t_k * scale, (*heads, *value_dim))]
        if gate:
            terms.append((t_q * scale, (q_in, *heads, *value_dim)))
    if not argument_shapes:
        raise NotImplementedError(f"MacsModel does not know the sequence lengths of '{layer.name}'.")
    names = ("query", "key", "value", "out", "heads", "key_dim", "value_dim", "query_heads", "kv_heads", "head_dim")
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


def _decoder_attention_terms(layer, macs, side, argument_shapes):
    """KerasHub's decoder attention (`tfprune.graph.rules.keras_hub_attention`), per call on T positions (self-
    attention, no cache): the query projection T·E·H·D, key and value 2·T·E·H_kv·D, output T·H·D·E, QKᵀ and AV
    2·H·T·T·D, where H is the query heads kept with their key/value head (as for `GroupQueryAttention`), H_kv the
    key/value heads, D the head width (never pruned: a rotary embedding ties it) and E the hidden width. Causal
    attention counts as full."""
    hidden, kv_heads, head_dim, out = (side(name)[0] for name in ("in", "kv_heads", "head_dim", "out"))
    names = ["in", "kv_heads", "head_dim", "out"]
    try:
        heads, scale = (side("query_heads")[0], kv_heads), 1.0 / side("kv_heads")[1]
        names.append("query_heads")
    except KeyError:  # as many query heads as key/value heads: one group of heads
        heads, scale = (kv_heads,), 1.0
    terms = []
    for shapes in argument_shapes:
        t = _positions(layer, shapes["hidden_states"])
        terms += [(t * scale, (hidden, *heads, head_dim)), (2 * t, (hidden, kv_heads, head_dim)),
                  (t * scale, (*heads, head_dim, out)), (2 * t * t * scale, (*heads, head_dim))]
    if not argument_shapes:
        raise NotImplementedError(f"MacsModel does not know the sequence lengths of '{layer.name}'.")
    width = dict(side(name) for name in names)
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
