"""What a layer rule is, and the boundary rule used for every layer tfprune does not understand.

A rule says three things about one layer type:

* `propagate`: how the layer maps the channel positions of its inputs to those of its outputs, which positions
  must be pruned together, and which of its weights are indexed by which positions (`ctx.record`);
* `weight_index`: for each weight, the numpy index that keeps exactly the surviving channels — `rebuild` slices
  with it and `mask` zeroes everything outside it, so the two agree by construction. Weights are keyed by their
  name relative to the layer (`tfprune.graph.keras_nodes.weight_keys`): "kernel" for the layer's own, and
  "query/kernel" for a sub-layer's, as in `MultiHeadAttention`, whose projections all hold a "kernel";
* `slim_weights`: for the few layers whose slim copy must compute with more than the sliced weights to give what
  the masked layer gives (attention folds the scale of a narrower head into its query projection), the sliced
  arrays made into the slim layer's;
* `config` and `updated_config`: the config of the layer as it is, and that of the slimmer layer (e.g. a smaller
  `filters`), from which `new_layer` makes it.
"""

import numpy as np

from tfprune.graph.layer_configs import layer_config


class NotUnderstood(Exception):
    """Raised by a rule when a particular layer instance is outside what it handles; the layer becomes a boundary."""


class LayerRule:
    """Base class of all layer rules. The defaults describe a layer with no channel-indexed weights."""

    def propagate(self, ctx, layer, inputs):
        """Map input channel positions (one array of element ids per input tensor) to output positions."""
        raise NotImplementedError

    def weight_index(self, layer, keep):
        """`{weight key: numpy index}` for the weights that lose entries; `keep` maps a recorded side to a mask.
        A weight's key is its name relative to the layer (see `weight_keys`)."""
        return {}

    def slim_weights(self, layer, keep, values):
        """The weights of the slim layer from `values`, `{weight key: sliced array}` (read-only arrays; return new
        ones to change them). `rebuild` applies it after slicing, `mask` does not: a rule overrides it only when
        the slim layer's config changes what its weights compute (as attention's 1/sqrt(key_dim) scale does)."""
        return values

    def config(self, layer):
        """The config of `layer` as it is, which `updated_config` slims: `layer.get_config()`, or for a layer whose
        automatic config Keras dropped for a dtype policy object, that config with the policy serialised
        (`tfprune.graph.layer_configs`)."""
        return layer_config(layer)

    def updated_config(self, layer, config, keep):
        """The config of the slim layer, given the keep masks of the recorded sides."""
        return config

    filter_sides = ()  # the sides `filter_weights` returns arrays for

    def filter_weights(self, layer):
        """`(side, array)` pairs whose last axis indexes the channels of `side`, for magnitude criteria (read-only
        arrays, one side of `filter_sides` each)."""
        return []

    def new_layer(self, layer, config):
        """A fresh layer of the same kind from `config` (weights are assigned later)."""
        return type(layer).from_config(config)

    def closed(self, why):
        """The rule of a layer this rule does not understand (its `propagate` raised `NotUnderstood(why)`): a
        `Boundary` saying why. A rule whose layers cannot be copied from their own `get_config` returns one that
        copies them as the rule does."""
        return Boundary(why)


class Boundary(LayerRule):
    """A layer tfprune does not prune through: every channel it touches is kept, and it is copied unchanged."""

    def __init__(self, why=None):
        self.why = why

    def config(self, layer):
        """`layer_config(layer, closed=True)`: a layer copied whole may be copied from its attributes when its own
        `get_config` fails (see `tfprune.graph.layer_configs`)."""
        return layer_config(layer, closed=True)

    def propagate(self, ctx, layer, inputs):
        reason = f"passes through '{ctx.path}' ({type(layer).__name__})" + (f": {self.why}" if self.why else
                                                                             ", a layer tfprune does not prune")
        for elems in inputs:
            if elems is not None:
                ctx.fix(elems, reason)
        outputs = []
        for i, shape in enumerate(ctx.output_shapes):
            if len(shape) >= 2 and shape[-1] is not None:
                name = ctx.path if len(ctx.output_shapes) == 1 else f"{ctx.path}:{i}"
                outputs.append(ctx.new_space(shape[-1], name=name, fixed_reason=reason))
            else:
                outputs.append(None)
        return outputs


def last_axis_index(rank, keep):
    """An index selecting `keep` on the last of `rank` axes."""
    return (slice(None),) * (rank - 1) + (np.flatnonzero(keep),)


def require_channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise NotUnderstood(f"data_format='{layer.data_format}' (only channels_last is pruned)")


def single_input(inputs):
    if len(inputs) != 1 or inputs[0] is None:
        raise NotUnderstood("expects one input tensor with a known channel axis")
    return inputs[0]


class LambdaBoundary(Boundary):
    """A `Lambda` is a boundary; its copy calls the very same Python function (a lambda's config cannot always be
    turned back into a function that Keras can trace)."""

    def new_layer(self, layer, config):
        return type(layer)(layer.function, output_shape=layer._output_shape, mask=layer.mask,
                           arguments=layer.arguments, name=layer.name, dtype=layer.dtype_policy)
