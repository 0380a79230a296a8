"""MacsModel: the MACs of a slim model as a function of the channels each group keeps, without rebuilding it.

`count_macs` counts a built model layer by layer. Every counted layer's MACs are a fixed multiple of its kept input
channels, of its kept output channels, or of their product (a convolution is S·k·C_in/groups·C_out; a separable one
adds S·k·m·C_in), and pruning changes only those counts, never a spatial size. So the MACs of any plan follow from
one count of the full model and the channel graph's records of which channels every layer reads and writes. The
searches (`tfprune.search`), `plan_for_macs` and DMCP's differentiable budget all use this one model.
"""

import keras
import numpy as np

from tfprune.graph import ChannelGraph
from tfprune.graph.rules import Boundary
from tfprune.measurement.counting import layer_counts

L = keras.layers
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_CONVS = (L.Conv1D, L.Conv2D, L.Conv3D)
_BILINEAR = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose, L.Dense, *_CONVS)


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
        terms = []  # (coefficient, side a, side b or None)
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
            for coefficient, a, b in _terms(layer, count.macs, lambda name, p=path: side(p, name)):
                terms.append((coefficient, a, b))
        self._constant = constant
        self._positions = np.concatenate(position_index) if position_index else np.zeros(0, np.int64)
        self._position_side = np.concatenate(position_side) if position_side else np.zeros(0, np.int64)
        self._n_sides = len(sides)
        self._coefficient = np.array([t[0] for t in terms], np.float64)
        self._a = np.array([t[1] for t in terms], np.int64)
        self._b = np.array([-1 if t[2] is None else t[2] for t in terms], np.int64)
        self._bilinear = self._b >= 0

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
        b_counts = np.where(self._bilinear, counts[np.maximum(self._b, 0)], 1.0)
        return self._constant + float(np.sum(self._coefficient * counts[self._a] * b_counts))

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
        a = keras.ops.take(counts, self._a)
        b = keras.ops.where(self._bilinear, keras.ops.take(counts, np.maximum(self._b, 0)), 1.0)
        return self._constant + keras.ops.sum(keras.ops.convert_to_tensor(self._coefficient, "float32") * a * b)


def _terms(layer, macs, side):
    """`(coefficient, side a, side b)` terms whose sum, over kept counts, is the layer's MACs (b None: linear)."""
    def n(s):
        return s[1]

    if isinstance(layer, _SEPARABLE):  # S·m·C_in·(k + C_out)
        i, o = side("in"), side("out")
        k = int(np.prod(layer.kernel_size))
        scale = macs / (n(i) * (k + n(o)))
        return [(scale * k, i[0], None), (scale, i[0], o[0])]
    if isinstance(layer, _DEPTHWISE):  # S·k·m·C_in
        i = side("in")
        return [(macs / n(i), i[0], None)]
    if isinstance(layer, _CONVS) and layer.groups > 1 and layer.groups == n(side("in")):  # depthwise as grouped
        o = side("out")
        return [(macs / n(o), o[0], None)]
    if isinstance(layer, _BILINEAR):
        i, o = side("in"), side("out")
        return [(macs / (n(i) * n(o)), i[0], o[0])]
    raise NotImplementedError(f"MacsModel has no formula for layer '{layer.name}' ({type(layer).__name__}), "
                              "which computes MACs; add its terms beside the others.")
